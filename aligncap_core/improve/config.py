"""The configuration of the self-improvement rounds and the selection metric.

    cfg = ImproveConfig.from_dict({"rounds": 2, "n": 4, "dpo": {"max_steps": 20}})
    score = selection_score(report_metrics["valid"], cfg.select_metric)   # float or None

Every field is JSON-able, so the config travels as a plain dict between Prefect tasks
(`cfg.to_dict()` in, `ImproveConfig.from_dict(d)` out).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aligncap_core.defaults import EVAL
from aligncap_core.errors import ConfigError
from aligncap_core.prefs.dpo import DPORoundConfig
from aligncap_core.prefs.pairs import STRATEGIES
from aligncap_core.utils import read_yaml_mapping

PAIR_STRATEGIES = (*STRATEGIES, "both")
BOTH = ("golden_vs_sample", "best_vs_worst")  # what pair_strategy "both" unites
JUDGE_KINDS = ("rubric", "openai")
# config keys that may change between a run and its resumption without changing what the
# finished rounds mean (you extend a run by raising `rounds`, or let it go on with more patience)
RESUMABLE_KEYS = ("rounds", "patience", "min_delta")


def _default_judge() -> dict[str, Any]:
    return {"kind": "rubric"}


def _default_eval_splits() -> list[str]:
    return list(EVAL.splits)


@dataclass
class ImproveConfig:
    """SpeechAlign-style rounds: sample -> judge -> pair -> DPO (+KD) -> evaluate.

    rounds: preference rounds after round 0 (round 0 = evaluating the starting policy only).
    patience: stop when `select_metric` on `select_split` has not improved (by more than
        `min_delta`) for this many consecutive rounds; 0 never stops early. min_delta is also
        the margin by which a round must beat the best stage before it to become the
        pipeline's champion (`flows/pipeline.pick_champion`) or a new nightly version.
    select_metric: how rounds are ranked: a sum of `[coef *] metric` terms over the evaluation
        keys of one split, e.g. "clue_f1 - hallucination_rate" (default: clue agreement with the
        references, minus the share of captions contradicting the clip's known attributes, both
        0-1, so one hallucination costs as much as one clue's worth of F1) or
        "cider + 0.5 * clue_f1". Higher is better; a round whose metric is missing ranks last.
    select_split: the split the selection metric is read from (must be in `eval_splits`).
    n: candidates sampled per clip (duplicates are dropped, so a clip may keep fewer).
    temperature, top_p, max_new_tokens: sampling of the candidates; temperature 1 / top_p 0.9
        give varied candidates, which the pair margins need.
    sample_batch_size: rows per generation batch while sampling (n rows per clip).
    clips_per_round: train clips sampled per round (a fresh seeded subsample each round, seed +
        round), None = every train clip.
    augment: None (default): the round samples captions of the train clips themselves. A
        mapping of `data.augment` settings (`AugmentConfig` keys, e.g. {} for its defaults;
        its seed is the round's, seed + round): the round samples, judges and learns from one
        randomised copy of each of those clips instead (another voice, channel, room, noise;
        labels re-measured, `improve.steps.round_clips_step`), clips the policy has not trained
        on and errs on more often (docs/experiments/po_rounds.md, section 7).
    judge: `prefs.make_judge` config: {"kind": "rubric"} (offline, default) or {"kind":
        "openai", "base_url": ..., "model": ..., ...}.
    pair_strategy: golden_vs_sample (SpeechAlign), best_vs_worst (AlignCap),
        faithful_vs_contradicting (a faithful sample vs a sample that contradicts the clip's
        attributes, `prefs.pairs`) or both (the union of golden_vs_sample and best_vs_worst,
        duplicates dropped); min_margin / max_pairs_per_clip as in `build_preference_pairs`
        (both apply per strategy).
    dpo: `DPORoundConfig` fields (beta, lambda_kd, learning_rate, max_steps, ...); `round` is
        set by the round and `seed` is offset by it, so they are not given here.
    eval_splits: splits evaluated after every round (absent ones are skipped with a warning);
        eval_limit: at most this many clips per split (None = all).
    seed: base seed of the clip subsample, the sampling and the DPO data order.
    """

    rounds: int = 3
    patience: int = 1
    min_delta: float = 0.0
    select_metric: str = "clue_f1 - hallucination_rate"
    select_split: str = "valid"
    n: int = 4
    temperature: float = 1.0
    top_p: float = 0.9
    max_new_tokens: int = EVAL.max_new_tokens
    sample_batch_size: int = 16
    clips_per_round: int | None = 256
    augment: dict[str, Any] | None = None
    judge: dict[str, Any] = field(default_factory=_default_judge)
    pair_strategy: str = "golden_vs_sample"
    min_margin: float = 1.0
    max_pairs_per_clip: int = 2
    dpo: dict[str, Any] = field(default_factory=dict)
    eval_splits: list[str] = field(default_factory=_default_eval_splits)
    eval_limit: int | None = EVAL.limit
    seed: int = 0

    def __post_init__(self) -> None:
        ints = {"rounds": 0, "patience": 0, "n": 1, "max_new_tokens": 1, "sample_batch_size": 1,
                "max_pairs_per_clip": 1, "seed": 0}
        for k, lo in ints.items():
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ConfigError(f"improve.{k} must be an integer >= {lo}, got {v!r}")
        for k in ("clips_per_round", "eval_limit"):
            v = getattr(self, k)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ConfigError(f"improve.{k} must be an integer >= 1 or null, got {v!r}")
        if not self.temperature > 0 or not 0 < self.top_p <= 1:
            raise ConfigError(f"improve: temperature must be > 0 and top_p in (0, 1]; got "
                              f"{self.temperature}, {self.top_p}")
        if self.min_margin < 0 or self.min_delta < 0:
            raise ConfigError("improve.min_margin and improve.min_delta must be >= 0")
        if self.pair_strategy not in PAIR_STRATEGIES:
            raise ConfigError(f"improve.pair_strategy must be one of {', '.join(PAIR_STRATEGIES)}; "
                              f"got {self.pair_strategy!r}")
        if not isinstance(self.judge, dict) or self.judge.get("kind", "rubric") not in JUDGE_KINDS:
            raise ConfigError(f"improve.judge must be a mapping with kind in {', '.join(JUDGE_KINDS)}; "
                              f"got {self.judge!r}")
        if not isinstance(self.dpo, dict):
            raise ConfigError(f"improve.dpo must be a mapping of DPORoundConfig fields, got {self.dpo!r}")
        if self.augment is not None:
            self.augment_config(0)  # bad augment settings fail now, not in round 1
        if "round" in self.dpo:
            raise ConfigError("improve.dpo.round is set by each round; remove it")
        DPORoundConfig.from_dict(self.dpo, "improve.dpo.")  # bad DPO keys fail now, not in round 1
        if not self.eval_splits or not all(isinstance(s, str) for s in self.eval_splits):
            raise ConfigError(f"improve.eval_splits must be a list of split names, got {self.eval_splits!r}")
        self.eval_splits = list(self.eval_splits)
        if self.select_split not in self.eval_splits:
            raise ConfigError(f"improve.select_split {self.select_split!r} is not in eval_splits "
                              f"{self.eval_splits}")
        parse_select_metric(self.select_metric)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | ImproveConfig | None) -> ImproveConfig:
        """From a plain dict with the one config loader (`aligncap_core.config`): unknown keys
        and values of the wrong type are ConfigErrors naming `improve.<key>`."""
        from aligncap_core.config import from_dict

        if isinstance(d, ImproveConfig):
            return d
        return from_dict(cls, dict(d or {}), "improve.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def augment_config(self, round: int) -> Any:
        """The `AugmentConfig` of round `round`'s clips (its seed: seed + round)."""
        from aligncap_core.data.augment.config import AugmentConfig

        if not isinstance(self.augment, dict):
            raise ConfigError(f"improve.augment must be a mapping of data.augment settings or null, "
                              f"got {self.augment!r}")
        if "seed" in self.augment:
            raise ConfigError("improve.augment.seed is set by each round (improve.seed + round); remove it")
        try:
            cfg = AugmentConfig.from_dict({**self.augment, "seed": self.seed + round})
        except ConfigError as e:
            raise ConfigError(f"improve.augment: {e}") from e
        if cfg.copies < 1:
            raise ConfigError("improve.augment.copies must be >= 1 (the round's clips are the copies); "
                              "set improve.augment: null to sample the train clips themselves")
        return cfg

    def dpo_config(self, round: int) -> DPORoundConfig:
        """The DPO settings of round `round` (>= 1): its round number, and a seed per round."""
        d = dict(self.dpo)
        d["seed"] = int(d.get("seed", self.seed)) + round
        return DPORoundConfig.from_dict({**d, "round": round})


def load_improve_config(path: str | Path | None, **overrides: Any) -> ImproveConfig:
    """ImproveConfig from a YAML file (None: defaults) with top-level `overrides` applied (None
    values are skipped: CLI options the user did not give); `dpo`/`judge` overrides are merged
    into the file's mapping key by key (a judge of another kind replaces the file's judge)."""
    data: dict[str, Any] = read_yaml_mapping(path, "improve config") if path is not None else {}
    for k, v in overrides.items():
        if v is None:
            continue
        base = data.get(k) or {}
        if k == "judge" and isinstance(v, dict) and v.get("kind", base.get("kind")) != base.get("kind", "rubric"):
            data[k] = v  # another judge kind: the file's settings were for the other one
        elif k in ("dpo", "judge") and isinstance(v, dict):
            data[k] = {**base, **v}
        else:
            data[k] = v
    return ImproveConfig.from_dict(data)


_TERM = re.compile(r"\s*([+-]?)\s*(?:(\d+(?:\.\d*)?|\.\d+)\s*\*\s*)?([A-Za-z_][A-Za-z0-9_]*)\s*")


def parse_select_metric(expr: str) -> list[tuple[float, str]]:
    """"clue_f1 - hallucination_rate" -> [(1.0, "clue_f1"), (-1.0, "hallucination_rate")].
    Terms are `[+|-] [number *] name`; anything else is a ConfigError."""
    if not isinstance(expr, str) or not expr.strip():
        raise ConfigError("improve.select_metric is empty; e.g. 'clue_f1 - hallucination_rate'")
    terms, pos = [], 0
    while pos < len(expr):
        m = _TERM.match(expr, pos)
        if not m or (terms and not m.group(1)):
            raise ConfigError(f"improve.select_metric {expr!r}: cannot parse at {expr[pos:]!r}; "
                              "use terms like 'clue_f1 - 0.5 * hallucination_rate'")
        sign = -1.0 if m.group(1) == "-" else 1.0
        terms.append((sign * float(m.group(2) or 1.0), m.group(3)))
        pos = m.end()
    from aligncap_core.eval.metrics import check_metric_names

    check_metric_names([name for _, name in terms], f"improve.select_metric {expr!r}")
    return terms


def selection_score(metrics: dict[str, Any] | None, expr: str) -> float | None:
    """The selection metric on one split's metrics dict; None when a term is missing/None/NaN."""
    total = 0.0
    for coef, name in parse_select_metric(expr):
        v = (metrics or {}).get(name)
        if not isinstance(v, int | float) or isinstance(v, bool) or math.isnan(v):
            return None
        total += coef * float(v)
    return total


@dataclass
class RoundSelector:
    """The champion and early-stop bookkeeping of the rounds, shared by the library loop
    (`rounds.self_improve`) and the Prefect flow (`flows/improve.py`), so both decide alike.

        sel = RoundSelector(cfg, best={"stage": "student", "checkpoint": ckpt, "score": s0})
        for k in range(1, cfg.rounds + 1):
            if sel.stop_reason():
                break
            ...
            sel.update({"stage": f"round-{k}", "checkpoint": new_ckpt, "score": score})

    best: the record (any dict with a "score") of the best policy so far; a later round replaces
    it only when its score beats it by more than `min_delta` (a missing score never does).
    stale: rounds since the best one; `stop_reason` is set once it reaches `patience` (> 0).
    """

    cfg: ImproveConfig
    best: dict[str, Any]
    stale: int = 0

    def update(self, record: dict[str, Any]) -> bool:
        """Account for a finished round; True when it is the new best."""
        score, best = record.get("score"), self.best.get("score")
        if score is not None and (best is None or score > best + self.cfg.min_delta):
            self.best, self.stale = record, 0
            return True
        self.stale += 1
        return False

    def stop_reason(self) -> str | None:
        """Why no further round should run (patience exhausted), or None."""
        if self.cfg.patience and self.stale >= self.cfg.patience:
            return (f"early stop: {self.cfg.select_metric} on {self.cfg.select_split} did not "
                    f"improve for {self.stale} rounds")
        return None
