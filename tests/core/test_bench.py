"""Every benchmark script still runs (tiny sizes via --smoke) and prints the figures it promises.

Not timed tests: the numbers are not checked, only that they are there. The pipeline script
runs in its own process (it starts a Prefect API with its own PREFECT_HOME); the others run in
this one, sharing the already imported torch/transformers.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run_inprocess(name: str, capsys) -> dict:
    sys.path.insert(0, str(ROOT))
    try:
        mod = importlib.import_module(f"bench.{name}")
        mod.main(["--smoke", "--threads", "1"])
    finally:
        sys.path.remove(str(ROOT))
    out = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith('{"bench"')]
    assert out, f"{name}: no JSON line on stdout"
    res = json.loads(out[-1])
    assert res["bench"] == name and res["smoke"] is True
    return res


@pytest.mark.slow
@pytest.mark.parametrize("name,keys", [
    ("kd_step", ["kd_over_sft", "mfu", "peak_gflops"]),
    ("generate_speed", ["batched_over_per_caption_loop", "captions_per_s"]),
    ("codec_speed", ["x_realtime", "parallel_over_per_clip", "x_realtime_bound_at_peak"]),
    ("dpo_round", ["on_the_fly_over_precomputed_step", "step_s"]),
    ("serving", ["latency_s_per_3s_clip", "service_clips_per_s", "batch_clips_per_s"]),
    ("bf16", ["peaks", "kd_step", "teacher_step", "dpo_step", "caption_batch", "encodec"]),
])
def test_bench_script_smoke(name, keys, capsys):
    res = _run_inprocess(name, capsys)
    for k in keys:
        assert res[k] is not None, f"{name}: {k} missing"
    if name == "codec_speed":
        assert res["codes_equal_across_batching"] is True
    if name == "bf16":  # both peaks from this run; every ratio has both of its sides
        assert set(res["peaks"]) == {"fp32", "bf16", "kernels"}
        for part in ("kd_step", "teacher_step", "dpo_step"):
            assert {"fp32", "bf16"} <= set(res[part]["s"]) and res[part]["bf16_over_fp32"] > 0
        assert set(res["kd_step"]["s"]) == {"fp32", "bf16", "autocast_only"}  # the "before" side
        assert res["caption_batch"]["greedy"]["bf16_over_fp32"] > 0
        assert 0 <= res["encodec"]["codes_identical_share"] <= 1


def test_bf16_bench_on_a_cpu_without_bf16_units_times_nothing_in_bf16(capsys, monkeypatch):
    """Without bf16 units the script says so, measures the peaks only, and `dtype: auto` is fp32."""
    from aligncap_core import precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "fma"})
    monkeypatch.setattr(precision, "cpu_bf16",
                        lambda **_: precision.decide([], None, None, cpu="AVX2-only"))
    sys.path.insert(0, str(ROOT))
    try:
        importlib.import_module("bench.bf16").main(
            ["--threads", "1", "--reps", "1", "--batch", "1", "--student-len", "8", "--caption-len", "4"])
    finally:
        sys.path.remove(str(ROOT))
    res = json.loads([ln for ln in capsys.readouterr().out.splitlines() if ln.startswith('{"bench"')][-1])
    assert res["bf16_units"] == [] and res["dtype_auto"] == "fp32"
    assert res["note"].startswith("no bf16 units")
    assert "kd_step" not in res and "caption_batch" not in res and "encodec" not in res


@pytest.mark.slow
def test_pipeline_bench_smoke(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "pipeline.py"), "--smoke",
                           "--threads", "1", "--keep", str(tmp_path / "work")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["bench"] == "pipeline"
    assert res["cache"]["cached_s"] < res["cache"]["cold_s"]
    assert set(res["scaling"]["by_size"]) == {"6", "12"}


@pytest.mark.slow
def test_gpu_smoke_script_cpu_fallback(tmp_path):
    """bench/gpu_smoke.sh on a machine without a GPU: the micro fp32 CPU path of the same
    stages, with every figure it prints on a GPU (peak memory is GPU-only: null here)."""
    import os

    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run([str(ROOT / "bench" / "gpu_smoke.sh"), "--smoke", "--threads", "1",
                           "--keep", str(tmp_path / "work")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    stages = [x for x in lines if x["bench"] == "gpu_smoke_stage"]
    import torch

    assert [(s["stage"], s["processes"]) for s in stages[:3]] == [
        ("teacher", 1), ("student", 1), ("dpo", 1)]
    for s in stages:
        assert s["steps"] == 3 and s["step_s"] > 0 and s["first_step_s"] > 0 and s["loss"] > 0
        if not torch.cuda.is_available():
            assert s["autocast"] == "fp32" and s["device"] == "cpu" and s["peak_mem_gb"] is None
    assert lines[-1]["bench"] == "gpu_smoke" and lines[-1]["smoke"] is True
