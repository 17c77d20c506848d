"""The AlignCap ablations on one dataset, several seeds (issue: reproduce the paper's ablations).

    aligncap experiment ablation --out runs/ablation --seeds 0,1,2     # the flow, embedded
    python -m flows.experiment --out runs/ablation --seeds 0,1,2       # the same

Variants, all trained on the same data with the same seeds (per seed: two teachers, three
students, preference rounds from the KD student):

    sft              SFT-only student (lambda_kd = 0) from the P_act teacher
    kd_no_pact       KD student whose teacher reads the transcript only (acoustic_prompt off)
    kd               KD student from the P_act teacher (AlignCap's KD-Regularization)
    kd_po_r1..rR     KD + PO rounds 1..R with each judge (PO-Regularization keeps the KD term)
    po_no_kd_rR      the same rounds with the KD term of DPO off (dpo.lambda_kd = 0)

A second judge adds `kd_po_<judge>_rK`. Every variant is evaluated on valid and zeroshot
(`eval_limit` clips each) and on a real-data manifest when given; `summarize` gives mean and std
over seeds.

This module is the experiment's definition (config, what each seed trains, the variants' stage
configs, the summary); the Prefect flow `ablation` (`flows/experiment.py`, also behind
`aligncap experiment ablation`) runs it with the pipeline's own stages, so every training and
evaluation is keyed by its settings in the artifact store, reused by a re-run and shared with
pipelines on the same data. `report.write_report` writes results.json, the tables and the plot.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from aligncap_core.defaults import REALDATA as REALDATA_MANIFEST
from aligncap_core.errors import ConfigError
from aligncap_core.utils import set_dotted

SPLITS = ("valid", "zeroshot")
REALDATA = "realdata"
# metrics reported in the tables (every report key is kept in results.json)
TABLE_METRICS = ("clue_f1", "hallucination_rate", "kl_gap", "cider", "bleu4", "meteor",
                 "acc_emotion", "acc_pitch", "acc_speed", "acc_volume", "acc_gender")


def _small_teacher() -> dict[str, Any]:
    # 700 steps, not fewer: a teacher that has not yet learnt to copy P_act into its caption
    # gives KD targets no better than the one-hot label (docs/experiments/kd_vs_sft.md)
    return {"train": {"max_steps": 700, "eval_every": 100, "checkpoint_every": 100}}


def _small_student() -> dict[str, Any]:
    return {"keep_q": 1, "train": {"max_steps": 150, "eval_every": 50, "checkpoint_every": 50}}


def _small_improve() -> dict[str, Any]:
    return {"rounds": 3, "patience": 0, "clips_per_round": 32, "n": 4,
            "dpo": {"max_steps": 10, "batch_size": 8}}


def _default_judges() -> list[dict[str, Any]]:
    return [{"kind": "rubric"}]


@dataclass
class AblationConfig:
    """Size and settings of the ablation. The defaults are the small CPU experiment (about an
    hour on 2 cores); every size is a parameter.

    data_dir: a prepared + tokenized data dir to use (None: build the built-in corpus of
        `synth_n` clips, seed 0, codec calibrated with `n_q` codebooks, into OUT/data).
    seeds: training seeds; every variant runs once per seed (mean and std over them).
    teacher / student / improve: TeacherConfig / StudentConfig / ImproveConfig dicts applied to
        every variant (the variant's own switches, and the seed, are set on top).
    judges: one `prefs.make_judge` config per judge; the first also runs the no-KD rounds.
    eval_limit: clips per split; realdata: a manifest of real speech (skipped when the file is
        missing), realdata_limit: clips of it. meteor: compute METEOR (Java) in the evaluations.
    """

    data_dir: str | None = None
    synth_n: int = 600
    n_q: int = 1
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    teacher: dict[str, Any] = field(default_factory=_small_teacher)
    student: dict[str, Any] = field(default_factory=_small_student)
    improve: dict[str, Any] = field(default_factory=_small_improve)
    judges: list[dict[str, Any]] = field(default_factory=_default_judges)
    eval_limit: int | None = 40
    realdata: str | None = REALDATA_MANIFEST
    realdata_limit: int | None = None
    meteor: bool = True

    def __post_init__(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"ablation.seeds must be distinct integers, got {self.seeds!r}")
        if not self.judges:
            raise ConfigError("ablation.judges is empty: give at least {'kind': 'rubric'}")
        # fail now on a typo, not after an hour of training
        from aligncap_core.improve import ImproveConfig
        from aligncap_core.train.config import StudentConfig, TeacherConfig, from_dict

        from_dict(TeacherConfig, self.teacher)
        from_dict(StudentConfig, self.student)
        for judge in self.judges:
            ImproveConfig.from_dict({**self.improve, "judge": judge})

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> AblationConfig:
        from aligncap_core.config import from_dict

        return from_dict(cls, dict(d or {}), "ablation.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def judge_name(judge: dict[str, Any]) -> str:
    return str(judge.get("kind", "rubric"))


def _with(base: dict[str, Any], dotted: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of the config dict `base` with `dotted` keys ("train.seed") set on top."""
    return set_dotted(copy.deepcopy(base), dotted)


def teacher_config(cfg: AblationConfig, seed: int, *, acoustic: bool) -> dict[str, Any]:
    """The TeacherConfig dict of the P_act teacher (`acoustic`) or the transcript-only one."""
    d = _with(cfg.teacher, {"acoustic_prompt": acoustic, "train.seed": seed})
    if not acoustic:  # no prompt to copy: the transcript-only teacher is selected on its loss
        d.setdefault("train", {}).update(select_metric="valid/loss", select_mode="min", stop_at=None)
    return d


def student_config(cfg: AblationConfig, seed: int, lambda_kd: float, *, acoustic: bool) -> dict[str, Any]:
    """The StudentConfig dict of a student variant (lambda_kd 0: SFT only)."""
    return _with(cfg.student, {"lambda_kd": lambda_kd, "acoustic_prompt": acoustic, "train.seed": seed})


def improve_config(cfg: AblationConfig, seed: int, judge: dict[str, Any], *, kd_on: bool) -> dict[str, Any]:
    """The ImproveConfig dict of a round series from the KD student: `judge` replaces any judge
    in `cfg.improve`; kd_on False turns the KD term of DPO off (`po_no_kd`). The evaluation
    splits and limit are the experiment's (`eval_params`), not set here."""
    d = _with(cfg.improve, {} if kd_on else {"dpo.lambda_kd": 0.0})
    return {**d, "judge": judge, "seed": seed}


def plan(cfg: AblationConfig) -> list[dict[str, Any]]:
    """What one seed trains, in order: {"variant", "kind": teacher | student | rounds, ...}.
    Teachers are not variants (they read text); a `rounds` entry yields the variants
    `<prefix>_r1..rR` (all rounds, or only the last with `last_only`)."""
    steps: list[dict[str, Any]] = [
        {"kind": "teacher", "name": "teacher", "acoustic": True},
        {"kind": "teacher", "name": "teacher-no-pact", "acoustic": False},
        {"kind": "student", "variant": "sft", "teacher": "teacher", "lambda_kd": 0.0, "acoustic": True},
        {"kind": "student", "variant": "kd_no_pact", "teacher": "teacher-no-pact", "lambda_kd": 1.0,
         "acoustic": False},
        {"kind": "student", "variant": "kd", "teacher": "teacher", "lambda_kd": 1.0, "acoustic": True},
    ]
    for i, judge in enumerate(cfg.judges):
        tag = "" if i == 0 else f"_{judge_name(judge)}"
        steps.append({"kind": "rounds", "prefix": f"kd_po{tag}", "judge": judge, "kd_on": True,
                      "last_only": False})
    steps.append({"kind": "rounds", "prefix": "po_no_kd", "judge": cfg.judges[0], "kd_on": False,
                  "last_only": True})
    return steps


def ablation_results(cfg: AblationConfig, runs: list[dict], *, data: str, realdata: str | None,
                     seconds: float) -> dict[str, Any]:
    """The experiment's results: its config, the runs ({variant, seed, checkpoint, metrics})
    and their summary over seeds (what `report.write_report` writes)."""
    return {"config": cfg.to_dict(), "data": data, "realdata": realdata, "seconds": round(seconds, 1),
            "runs": runs, "summary": summarize(runs)}


def summarize(runs: list[dict]) -> dict[str, dict[str, dict[str, dict[str, float | int]]]]:
    """{variant: {split: {metric: {"mean", "std", "n"}}}} over seeds; std is the sample standard
    deviation (0 with one seed). Variants keep the order they first appear in."""
    grouped: dict[str, dict[str, dict[str, list[float]]]] = {}
    for r in runs:
        for split, m in r["metrics"].items():
            for k, v in m.items():
                if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                    grouped.setdefault(r["variant"], {}).setdefault(split, {}).setdefault(k, []).append(float(v))
    out: dict = {}
    for variant, splits in grouped.items():
        for split, metrics in splits.items():
            for k, vals in metrics.items():
                mean = sum(vals) / len(vals)
                std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
                out.setdefault(variant, {}).setdefault(split, {})[k] = {
                    "mean": round(mean, 4), "std": round(std, 4), "n": len(vals)}
    return out
