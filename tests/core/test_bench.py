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


@pytest.mark.parametrize("name,keys", [
    ("kd_step", ["kd_over_sft", "mfu", "peak_gflops"]),
    ("generate_speed", ["batched_over_per_caption_loop", "captions_per_s"]),
    ("codec_speed", ["x_realtime", "parallel_over_per_clip", "x_realtime_bound_at_peak"]),
    ("dpo_round", ["on_the_fly_over_precomputed_step", "step_s"]),
    ("serving", ["latency_s_per_3s_clip", "service_clips_per_s", "batch_clips_per_s"]),
])
def test_bench_script_smoke(name, keys, capsys):
    res = _run_inprocess(name, capsys)
    for k in keys:
        assert res[k] is not None, f"{name}: {k} missing"
    if name == "codec_speed":
        assert res["codes_equal_across_batching"] is True


def test_pipeline_bench_smoke(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "pipeline.py"), "--smoke",
                           "--threads", "1", "--keep", str(tmp_path / "work")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["bench"] == "pipeline"
    assert res["cache"]["cached_s"] < res["cache"]["cold_s"]
    assert set(res["scaling"]["by_size"]) == {"6", "12"}
