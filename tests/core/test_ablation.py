"""`run_ablation` end to end at micro size: every variant per seed trained for real, evaluated,
summarized (mean/std over seeds), tabled, plotted and logged to MLflow (a child per variant and
seed); a second call resumes without retraining."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aligncap_core.errors import ConfigError
from aligncap_core.experiments import (
    AblationConfig,
    plot_variants,
    results_markdown,
    run_ablation,
    summarize,
)
from aligncap_core.experiments.ablation import build_corpus
from aligncap_core.utils import read_jsonl, write_jsonl

MICRO = {"lr": 3e-3, "warmup_steps": 1, "batch_size": 8, "eval_every": 0, "checkpoint_every": 0,
         "early_stopping_patience": 0, "log_every": 2, "num_threads": 1}
CFG = {
    "seeds": [0],  # the per-seed work is the same for every seed; summarize is tested on two
    "teacher": {"preset": "micro", "train": {**MICRO, "max_steps": 6}},
    "student": {"train": {**MICRO, "max_steps": 3}},
    "improve": {"rounds": 1, "patience": 0, "n": 2, "max_new_tokens": 10, "clips_per_round": 4,
                "min_margin": 0.0, "dpo": {"max_steps": 1, "batch_size": 4, "max_length": 256}},
    "eval_limit": 3,
    "realdata": None,
    "meteor": False,
}
VARIANTS = ["sft", "kd_no_pact", "kd", "kd_po_r1", "po_no_kd_r1"]


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablation")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    # the default path: the built-in corpus (synth -> prepare -> clues -> calibrated codec),
    # built here first only to draw a stand-in "real data" manifest of 3 clips from it
    data = build_corpus(root / "out", 40, 1)
    real = [{"id": f"real-{r['id']}", "audio": str((data / r["audio"]).resolve()),
             "transcript": r["transcript"], "split": "test",
             "attributes": {"emotion": r["attributes"]["emotion"], "gender": r["attributes"]["gender"]}}
            for r in read_jsonl(data / "manifest.jsonl")[:3]]
    write_jsonl(root / "real.jsonl", real)
    results = run_ablation(root / "out", {**CFG, "synth_n": 40, "realdata": str(root / "real.jsonl")},
                           tracking_uri=uri)
    return root, uri, results


def test_every_variant_and_seed_is_trained_evaluated_and_tracked(ablation):
    from mlflow import MlflowClient

    root, uri, results = ablation
    got = [(r["variant"], r["seed"]) for r in results["runs"]]
    assert got == [(v, 0) for v in VARIANTS]
    assert json.loads((root / "out/data/ablation-data.json").read_text()) == {"synth_n": 40, "n_q": 1}
    for r in results["runs"]:
        assert set(r["metrics"]) == {"valid", "zeroshot", "realdata"}
        assert r["metrics"]["realdata"]["n"] == 3 and "acc_emotion" in r["metrics"]["realdata"]
        # real data is prepared and encoded once per experiment, not once per variant
        report = json.loads((root / f"out/seed-0/eval/{r['variant']}/realdata/report.json").read_text())
        assert report["data"]["evaluated_from"] == str(root / "out/realdata")
        assert "tokenized" not in report["data"] and "prepare" not in report["data"]
        assert r["metrics"]["valid"]["n"] == 3 and 0 <= r["metrics"]["valid"]["hallucination_rate"] <= 1
        assert "acc_pitch" in r["metrics"]["zeroshot"]  # full reports, rounds included
    # each variant is its own checkpoint (rounds are new policies, not the KD student again)
    ckpts = {r["variant"]: r["checkpoint"] for r in results["runs"] if r["seed"] == 0}
    assert len(set(ckpts.values())) == len(VARIANTS)
    assert json.loads((root / "out" / "results.json").read_text())["runs"] == results["runs"]
    # the no-P_act teacher read the transcript only; the P_act one its clues too
    (no_pact,) = (root / "out/seed-0/teacher-no-pact").glob("*/config.yaml")  # OUT/<run key>/
    (pact,) = (root / "out/seed-0/teacher").glob("*/config.yaml")
    assert "acoustic_prompt: false" in no_pact.read_text()
    assert "acoustic_prompt: true" in pact.read_text()

    c = MlflowClient(uri)
    (exp,) = [e for e in c.search_experiments() if e.name == "aligncap-ablation"]
    children = [r for r in c.search_runs([exp.experiment_id]) if r.data.tags.get("mlflow.parentRunId")]
    assert sorted(r.info.run_name for r in children) == sorted(f"{v}/seed-{s}" for v, s in got)
    kd0 = next(r for r in children if r.info.run_name == "kd/seed-0")
    assert kd0.data.metrics["valid/bleu1"] == pytest.approx(
        next(r for r in results["runs"] if (r["variant"], r["seed"]) == ("kd", 0))["metrics"]["valid"]["bleu1"])


def test_summary_tables_plot_and_resume(ablation, tmp_path):
    root, _, results = ablation
    s = results["summary"]
    assert list(s) == VARIANTS
    (kd,) = [r["metrics"]["valid"]["bleu1"] for r in results["runs"] if r["variant"] == "kd"]
    assert s["kd"]["valid"]["bleu1"] == {"mean": pytest.approx(kd, abs=1e-4), "std": 0.0, "n": 1}
    # round 0 of both round series is the KD student's own evaluation, not a second one
    po0 = json.loads((root / "out/seed-0/po-rubric/round-0/round.json").read_text())
    assert po0["metrics"]["valid"]["bleu1"] == kd and not (root / "out/seed-0/po-rubric/round-0/eval").exists()
    md = results_markdown(results)
    assert "### valid" in md and "| kd_po_r1 |" in md and "(n=1 seeds)" in md
    assert plot_variants(results, tmp_path / "p.png").stat().st_size > 1000

    ckpts = [Path(r["checkpoint"]) for r in results["runs"]]
    stamps = [p.stat().st_mtime_ns for p in ckpts]
    again = run_ablation(root / "out", {**CFG, "data_dir": results["data"], "realdata": results["realdata"]})
    assert again["runs"] == results["runs"]
    assert [p.stat().st_mtime_ns for p in ckpts] == stamps  # nothing retrained


def test_summarize_and_config_errors():
    runs = [{"variant": "a", "seed": 0, "metrics": {"valid": {"x": 1.0, "y": None}}},
            {"variant": "a", "seed": 1, "metrics": {"valid": {"x": 3.0, "y": float("nan")}}},
            {"variant": "b", "seed": 0, "metrics": {"valid": {"x": 0.5}, "realdata": {"acc_emotion": 0.2}}}]
    s = summarize(runs)
    assert s["a"] == {"valid": {"x": {"mean": 2.0, "std": pytest.approx(1.4142, abs=1e-4), "n": 2}}}
    assert list(s) == ["a", "b"]
    md = results_markdown({"summary": s})
    assert "| a | 2.000 ± 1.414 |" not in md  # x is not a table metric
    assert "*chance (uniform guess)* | 0.111" in md  # real-data table shows chance beside acc
    with pytest.raises(ConfigError, match="unknown keys"):
        AblationConfig.from_dict({"seedz": [0]})
    with pytest.raises(ConfigError, match="distinct"):
        AblationConfig(seeds=[1, 1])
    with pytest.raises(ConfigError, match="dpo config: unknown keys"):
        AblationConfig(improve={"dpo": {"betta": 1}})
    with pytest.raises(ConfigError, match="presett"):
        AblationConfig(teacher={"presett": "micro"})
