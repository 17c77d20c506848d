"""Self-improvement rounds on the micro model and a 16-clip fake-codes corpus (CPU, ~1 min).

Sampling, the rubric judge, pairing and DPO (+KD) are the real ones; evaluation is a stub with
`evaluate_step`'s signature (the fake codes have no codec to caption with, and the stub lets a
test choose the metric sequence), injected through `self_improve(evaluate_fn=...)`.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from aligncap_core.errors import ConfigError
from aligncap_core.improve import (
    ImproveConfig,
    RoundSelector,
    load_improve_config,
    pairs_step,
    rounds_table,
    selection_score,
    self_improve,
)
from aligncap_core.improve import rounds as rounds_mod
from aligncap_core.model.checkpoint import save_checkpoint
from aligncap_core.prefs.pairs import read_pairs
from aligncap_core.utils import read_jsonl
from tests.helpers.models import micro_base_dir, perturbed_student
from tests.helpers.training import make_corpus

INSTRUCTION = "Listen to the speech and describe how the speaker sounds."
CFG = {"rounds": 2, "patience": 0, "n": 3, "max_new_tokens": 12, "clips_per_round": 8,
       "eval_splits": ["valid"], "eval_limit": 4, "min_margin": 0.5,
       "dpo": {"max_steps": 2, "batch_size": 4, "learning_rate": 5e-3, "lambda_kd": 0.5,
               "max_length": 256, "logging_steps": 1}}


class StubEval:
    """evaluate_step stand-in: metrics from `scores[round]`, every call recorded."""

    def __init__(self, scores: dict[int, float]):
        self.scores, self.calls = scores, []

    def __call__(self, ckpt, data_dir, out_json, splits, limit):
        k = int(re.search(r"round-(\d+)", out_json).group(1))
        self.calls.append((k, ckpt))
        return {s: {"n": limit, "clue_f1": self.scores[k], "hallucination_rate": 0.1} for s in splits}


class ListLogger:
    def __init__(self):
        self.params, self.metrics = [], []

    def log_params(self, params):
        self.params.append(params)

    def log_metrics(self, metrics, step):
        self.metrics.append((step, metrics))


def _student(root: Path) -> Path:
    """A student checkpoint with a non-zero adapter on the micro base (no training needed)."""
    student, tok = perturbed_student()
    return save_checkpoint(root / "student", student, tok, stage="student", step=10,
                           base_model=str(micro_base_dir()),
                           run_config={"instruction": INSTRUCTION, "keep_q": None,
                                       "acoustic_prompt": True, "train": {"max_len": 256}})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("improve")
    data = make_corpus(root / "data", n=16, n_valid=4)
    start = _student(root)
    ev, logger = StubEval({0: 0.2, 1: 0.3, 2: 0.25}), ListLogger()
    summary = self_improve(str(start), str(data), str(root / "out"), CFG, logger=logger,
                           evaluate_fn=ev)
    return SimpleNamespace(root=root, data=data, start=str(start), out=root / "out",
                           summary=summary, ev=ev, logger=logger)


def test_config_validates_and_rejects_unknown_keys(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'improve.roundz'"):
        ImproveConfig.from_dict({"roundz": 2})
    with pytest.raises(ConfigError, match="unknown config key 'improve.dpo.betta'"):
        ImproveConfig.from_dict({"dpo": {"betta": 0.1}})
    with pytest.raises(ConfigError, match="pair_strategy"):
        ImproveConfig(pair_strategy="random")
    with pytest.raises(ConfigError, match="select_split"):
        ImproveConfig(eval_splits=["zeroshot"])
    with pytest.raises(ConfigError, match="cannot parse"):
        ImproveConfig(select_metric="clue_f1 hallucination_rate")
    assert selection_score({"clue_f1": 0.5, "hallucination_rate": 0.2},
                           "clue_f1 - 0.5 * hallucination_rate") == pytest.approx(0.4)
    assert selection_score({"clue_f1": 0.5, "hallucination_rate": None}, "clue_f1 - hallucination_rate") is None
    path = tmp_path / "improve.yaml"
    path.write_text(yaml.safe_dump({"rounds": 5, "judge": {"kind": "openai", "model": "m"}}))
    cfg = load_improve_config(path, rounds=2, judge={"kind": "rubric"})
    assert (cfg.rounds, cfg.judge) == (2, {"kind": "rubric"})
    assert ImproveConfig.from_dict(cfg.to_dict()) == cfg  # JSON-able round trip for the tasks
    assert cfg.dpo_config(2).round == 2 and cfg.dpo_config(2).seed == cfg.seed + 2


def test_two_rounds_end_to_end(run):
    s = run.summary
    assert [r["round"] for r in s["rounds"]] == [0, 1, 2]
    assert s["best_round"] == 1 and s["champion"] == str(run.out / "round-1" / "policy")
    assert json.loads((run.out / "improve.json").read_text()) == json.loads(json.dumps(s))
    assert [k for k, _ in run.ev.calls] == [0, 1, 2]
    assert run.ev.calls[0][1] == run.start  # round 0 evaluates the starting policy
    for k in (1, 2):
        rdir = run.out / f"round-{k}"
        meta = json.loads((rdir / "policy" / "meta.json").read_text())
        assert (meta["stage"], meta["round"], meta["step"]) == ("dpo", k, 2)
        assert meta["speech"]["instruction"] == INSTRUCTION  # a self-contained student again
        cfg = yaml.safe_load((rdir / "policy" / "config.yaml").read_text())
        assert cfg["acoustic_prompt"] is True and cfg["dpo"]["round"] == k
        assert "kd_loss" in meta["metrics"]  # lambda_kd > 0: the KD regulariser ran
        rec = json.loads((rdir / "round.json").read_text())
        assert rec["pairs"]["n_pairs"] > 0 and rec["seconds"]["total"] > 0
        assert len(read_jsonl(rdir / "candidates.jsonl")) == CFG["clips_per_round"]
    # round k+1 samples from, and uses as its DPO reference, round k's policy
    r1_ckpt, r2 = str(run.out / "round-1" / "policy"), s["rounds"][2]
    assert (r2["policy"], r2["reference"]) == (r1_ckpt, r1_ckpt)
    assert yaml.safe_load((run.out / "round-2" / "policy" / "config.yaml").read_text())["policy"] == r1_ckpt
    assert {p["provenance"]["policy"] for p in read_pairs(run.out / "round-2" / "pairs.jsonl")} == {r1_ckpt}
    assert {r["policy"] for r in read_jsonl(run.out / "round-2" / "candidates.jsonl")} == {r1_ckpt}
    assert {p["provenance"]["policy"] for p in read_pairs(run.out / "round-1" / "pairs.jsonl")} == {run.start}
    # fresh clip subsample per round (seeded by round)
    ids = [{r["id"] for r in read_jsonl(run.out / f"round-{k}" / "candidates.jsonl")} for k in (1, 2)]
    assert ids[0] != ids[1]
    assert [step for step, _ in run.logger.metrics] == [0, 1, 2]
    assert run.logger.metrics[1][1]["n_pairs"] == s["rounds"][1]["pairs"]["n_pairs"]
    assert rounds_table(s).row_count == 3


def test_pairs_step_both_strategies(run):
    out = pairs_step(str(run.out / "round-1" / "judged.jsonl"), {**CFG, "pair_strategy": "both"},
                     str(run.root / "both.jsonl"), 1, run.start)
    assert set(out["by_strategy"]) == {"golden_vs_sample", "best_vs_worst"}
    assert out["n_pairs"] == sum(out["by_strategy"].values()) - out["skipped"]["duplicate_pairs"]
    assert len(read_pairs(out["path"])) == out["n_pairs"]


def _no_work(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a finished step ran again")

    monkeypatch.setattr(rounds_mod, "generate_candidates_step", boom)
    monkeypatch.setattr(rounds_mod, "judge_step", boom)
    monkeypatch.setattr(rounds_mod, "dpo_step", boom)


def test_resume_skips_finished_rounds_and_reuses_steps(run, tmp_path, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(run.out, out)
    _no_work(monkeypatch)
    ev = StubEval(run.ev.scores)
    again = self_improve(run.start, str(run.data), str(out), CFG, evaluate_fn=ev)
    assert ev.calls == [] and again["best_round"] == 1
    assert again["rounds"] == run.summary["rounds"]
    # an interrupted round 2 (no round.json): its candidates, judgments and checkpoint are
    # reused; only the pairs and the evaluation run again
    (out / "round-2" / "round.json").unlink()
    again = self_improve(run.start, str(run.data), str(out), CFG, evaluate_fn=ev)
    assert [k for k, _ in ev.calls] == [2] and (out / "round-2" / "round.json").is_file()
    assert again["rounds"][2]["checkpoint"] == str(out / "round-2" / "policy")
    # another starting policy into the same folder is another run: refused, never continued
    with pytest.raises(ConfigError, match="other settings or inputs"):
        self_improve(str(out / "round-1" / "policy"), str(run.data), str(out), CFG, evaluate_fn=ev)


def test_early_stop_on_patience(run, tmp_path):
    ev = StubEval({0: 0.5, 1: 0.4, 2: 0.9})
    cfg = {**CFG, "rounds": 3, "patience": 1, "clips_per_round": 4, "n": 2}
    s = self_improve(run.start, str(run.data), str(tmp_path / "out"), cfg, evaluate_fn=ev)
    assert [r["round"] for r in s["rounds"]] == [0, 1]
    assert s["stopped"].startswith("early stop") and not (tmp_path / "out" / "round-2").exists()
    assert s["best_round"] == 0 and s["champion"] == run.start


def test_round_selector_min_delta_patience_and_missing_scores():
    sel = RoundSelector(ImproveConfig(patience=2, min_delta=0.05), best={"stage": "s", "score": 0.5})
    assert sel.stop_reason() is None
    assert not sel.update({"stage": "round-1", "score": 0.54})  # inside min_delta: stale
    assert sel.update({"stage": "round-2", "score": 0.56}) and sel.best["stage"] == "round-2"
    assert sel.stale == 0 and sel.stop_reason() is None
    assert not sel.update({"stage": "round-3", "score": None})  # a missing score never wins
    assert not sel.update({"stage": "round-4", "score": 0.1})
    assert sel.stale == 2 and "did not improve for 2 rounds" in sel.stop_reason()
    # an unscored start is beaten by any scored round; patience 0 never stops
    sel = RoundSelector(ImproveConfig(patience=0), best={"stage": "s", "score": None})
    assert sel.update({"stage": "round-1", "score": -3.0})
    for _ in range(5):
        sel.update({"score": None})
    assert sel.stop_reason() is None


def test_from_round_folder_continues_from_its_policy(run, tmp_path):
    ev = StubEval({0: 0.1})
    s = self_improve(str(run.out / "round-2"), str(run.data), str(tmp_path / "out"),
                     {**CFG, "rounds": 0}, evaluate_fn=ev)
    assert s["rounds"][0]["checkpoint"] == str(run.out / "round-2" / "policy")
    assert s["stopped"] == "completed 0 rounds" and s["champion"] == str(run.out / "round-2" / "policy")
