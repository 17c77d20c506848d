"""The ablation flow end to end at micro size, on the pipeline's own stages: every variant per
seed trained for real, evaluated, summarized, tabled, plotted and logged to MLflow (a child per
variant and seed, its training nested under it); a second run reuses everything."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from aligncap_core.utils import read_jsonl, write_jsonl

MICRO = {"lr": 3e-3, "warmup_steps": 1, "batch_size": 8, "eval_every": 0, "checkpoint_every": 0,
         "early_stopping_patience": 0, "log_every": 2, "num_threads": 1}
CFG = {
    "teacher": {"preset": "micro", "train": {**MICRO, "max_steps": 6}},
    "student": {"train": {**MICRO, "max_steps": 3}},
    "improve": {"rounds": 1, "patience": 0, "n": 2, "max_new_tokens": 10, "clips_per_round": 4,
                "min_margin": 0.0, "dpo": {"max_steps": 1, "batch_size": 4, "max_length": 256}},
    "eval_limit": 3,
    "meteor": False,
}
VARIANTS = ["sft", "kd_no_pact", "kd", "kd_po_r1", "po_no_kd_r1"]
REPO = Path(__file__).resolve().parents[2]


def _params(root: Path):
    from flows.experiment import AblationParams
    from flows.params import TrackingParams

    # one seed: the per-seed work is the same for every seed (summarize is tested on two)
    ablation = AblationParams(seeds=[0], synth_n=40, **{**CFG, "realdata": str(root / "real.jsonl")})
    tracking = TrackingParams(experiment="aligncap-ablation", tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    return ablation, tracking


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    from aligncap_core.data.synth import synthesize_corpus
    from flows.experiment import ablation as ablation_flow

    root = tmp_path_factory.mktemp("ablation")
    # a stand-in "real data" manifest of 3 clips (synthetic, from another corpus)
    synthesize_corpus(n=8, seed=5, out_dir=root / "other", workers=1, show_progress=False)
    real = [{"id": f"real-{r['id']}", "audio": str((root / "other" / r["audio"]).resolve()),
             "transcript": r["transcript"], "split": "test", "corpus": "standin",
             "attributes": {"emotion": r["attributes"]["emotion"], "gender": r["attributes"]["gender"]}}
            for r in read_jsonl(root / "other" / "manifest.jsonl")[:3]]
    write_jsonl(root / "real.jsonl", real)
    out = ablation_flow(str(root / "out"), *_params(root))
    return root, out, json.loads(Path(out["results"]).read_text())


def test_every_variant_and_seed_is_trained_evaluated_and_tracked(ablation):
    from mlflow import MlflowClient

    root, out, results = ablation
    assert [(r["variant"], r["seed"]) for r in results["runs"]] == [(v, 0) for v in VARIANTS]
    for r in results["runs"]:
        assert {"valid", "zeroshot", "realdata"} <= set(r["metrics"])
        assert r["metrics"]["realdata"]["n"] == 3 and "acc_emotion" in r["metrics"]["realdata"]
        assert r["metrics"]["valid"]["n"] == 3 and 0 <= r["metrics"]["valid"]["hallucination_rate"] <= 1
        assert "acc_pitch" in r["metrics"]["zeroshot"]  # full reports, rounds included
    # each variant is its own checkpoint (rounds are new policies, not the KD student again)
    assert len({r["checkpoint"] for r in results["runs"]}) == len(VARIANTS)
    # the pipeline's stages and store layout: one corpus, two teachers, three students
    assert len(list((root / "out/data").glob("*/fingerprint.json"))) == 1
    teachers = sorted((root / "out/teacher").glob("*/config.yaml"))
    assert sorted("acoustic_prompt: true" in p.read_text() for p in teachers) == [False, True]
    assert len(list((root / "out/student").glob("*/config.yaml"))) == 3
    # every checkpoint evaluated once on the data and once on the real data: the rounds' own
    # evaluations (round 0 = the KD student) are reused, not run again
    reports = [json.loads(p.read_text()) for p in (root / "out/eval").glob("*/report.json")]
    assert len(reports) == 2 * len(VARIANTS), len(reports)

    c = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    (exp,) = [e for e in c.search_experiments() if e.name == "aligncap-ablation"]
    runs = c.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("aligncap.role") == "parent"]
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    expected = {f"{v}/seed-0" for v in VARIANTS} | {"teacher/seed-0", "teacher-no-pact/seed-0",
                                                    "kd_po/seed-0", "po_no_kd/seed-0"}
    assert expected <= set(children), sorted(children)
    kd = next(r for r in results["runs"] if r["variant"] == "kd")
    assert children["kd/seed-0"].data.metrics["eval/valid/bleu1"] == pytest.approx(kd["metrics"]["valid"]["bleu1"])
    # the KD student's training run is nested under its variant run
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == children["kd/seed-0"].info.run_id]
    assert any("train/loss" in r.data.metrics for r in nested), [r.info.run_name for r in nested]
    assert {a.path for a in c.list_artifacts(parent.info.run_id)} >= {"results.json", "RESULTS-tables.md"}


def test_report_files_summary_and_rerun_reuses_everything(ablation):
    from aligncap_core.experiments import results_markdown
    from flows.experiment import ablation as ablation_flow

    root, out, results = ablation
    s = results["summary"]
    assert list(s) == VARIANTS
    assert s["kd"]["valid"]["bleu1"]["n"] == 1 and s["kd"]["valid"]["bleu1"]["std"] == 0.0
    md = Path(out["tables"]).read_text()
    assert md == results_markdown(results) and "| kd_po_r1 |" in md and "(n=1 seeds)" in md
    assert Path(out["plot"]).stat().st_size > 1000
    # a copy in the artifact store (here OUT itself), under the settings' key
    assert json.loads((Path(out["published"]) / "results.json").read_text()) == results

    ckpts = [Path(r["checkpoint"]) for r in results["runs"]]
    stamps = [p.stat().st_mtime_ns for p in ckpts]
    again = ablation_flow(str(root / "out"), *_params(root))
    rerun = json.loads(Path(again["results"]).read_text())
    assert rerun["runs"] == results["runs"]
    assert [p.stat().st_mtime_ns for p in ckpts] == stamps  # nothing retrained


def test_cli_runs_the_flow_and_reports_bad_arguments(tmp_path):
    """`aligncap experiment ablation` runs the flow (flows/experiment.py, in a child process): a bad --seeds
    stops before anything runs, with the reason."""
    r = subprocess.run([sys.executable, "-m", "aligncap_core.cli", "experiment", "ablation",
                        "--out", str(tmp_path / "x"), "--seeds", "0,one"],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 2 and "--seeds '0,one'" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "x").exists()
