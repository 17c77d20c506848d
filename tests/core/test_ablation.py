"""The ablation's definition and report: what each seed trains, the variants' stage configs,
the summary over seeds, the tables and the plot. The flow that runs it: tests/flows/test_ablation.py."""

from __future__ import annotations

import json

import pytest

from aligncap_core.errors import ConfigError
from aligncap_core.experiments import (
    AblationConfig,
    ablation_results,
    plan,
    results_markdown,
    summarize,
    write_report,
)
from aligncap_core.experiments import ablation as A


def test_plan_and_stage_configs_of_a_seed():
    cfg = AblationConfig(judges=[{"kind": "rubric"}, {"kind": "openai", "model": "m"}],
                         improve={"rounds": 2, "dpo": {"lambda_kd": 0.5}})
    steps = plan(cfg)
    assert [s.get("variant") or s.get("name") or s["prefix"] for s in steps] == [
        "teacher", "teacher-no-pact", "sft", "kd_no_pact", "kd", "kd_po", "kd_po_openai", "po_no_kd"]
    assert [s["last_only"] for s in steps if s["kind"] == "rounds"] == [False, False, True]
    no_pact = A.teacher_config(cfg, 3, acoustic=False)
    assert no_pact["acoustic_prompt"] is False and no_pact["train"]["seed"] == 3
    assert no_pact["train"]["select_metric"] == "valid/loss"  # nothing to copy: selected on loss
    assert "select_metric" not in A.teacher_config(cfg, 3, acoustic=True)["train"]
    sft = A.student_config(cfg, 1, 0.0, acoustic=True)
    assert (sft["lambda_kd"], sft["acoustic_prompt"], sft["train"]["seed"]) == (0.0, True, 1)
    on, off = (A.improve_config(cfg, 2, cfg.judges[1], kd_on=k) for k in (True, False))
    assert on["judge"]["kind"] == "openai" and on["seed"] == 2 and on["dpo"]["lambda_kd"] == 0.5
    assert off["dpo"]["lambda_kd"] == 0.0 and cfg.improve["dpo"]["lambda_kd"] == 0.5  # copies


def test_write_report_writes_results_tables_and_plot(tmp_path):
    runs = [{"variant": v, "seed": s, "checkpoint": f"{v}-{s}",
             "metrics": {"valid": {"clue_f1": 0.5 + 0.1 * s, "hallucination_rate": 0.2}}}
            for s in (0, 1) for v in ("kd", "kd_po_r1")]
    results = ablation_results(AblationConfig(seeds=[0, 1]), runs, data="d", realdata=None, seconds=1.23)
    paths = write_report(results, tmp_path / "out")
    assert json.loads(open(paths["results"]).read()) == results and results["seconds"] == 1.2
    assert open(paths["tables"]).read() == results_markdown(results)
    assert "| kd | 0.550 ± 0.071 |" in results_markdown(results)
    assert (tmp_path / "out" / "ablation.png").stat().st_size > 1000

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
    with pytest.raises(ConfigError, match="unknown config key 'ablation.seedz'"):
        AblationConfig.from_dict({"seedz": [0]})
    with pytest.raises(ConfigError, match="distinct"):
        AblationConfig(seeds=[1, 1])
    with pytest.raises(ConfigError, match="unknown config key 'improve.dpo.betta'"):
        AblationConfig(improve={"dpo": {"betta": 1}})
    with pytest.raises(ConfigError, match="presett"):
        AblationConfig(teacher={"presett": "micro"})
