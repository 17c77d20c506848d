"""Pipeline: cached re-run of the data stages / cold run (goal <= 0.10), per-clip cost of the data
stages at three corpus sizes (goal: linear, within 1.2x), and optionally `make demo`'s wall time
and peak RSS (goals <= 15 min, <= 4 GB).

    python bench/pipeline.py [--cache-n 120] [--sizes 125,250,500] [--demo] [--smoke]

cache:   the `prepare-data` flow (synth -> prepare -> clues -> tokenize, Prefect ephemeral API,
         task caching on) run twice on the same folder; the Prefect API is started by a no-op flow
         first, so neither side pays its start-up.
scaling: the same four stages called as library functions (no Prefect) on fresh folders of each
         size; seconds per clip at each size, and the marginal cost per clip between sizes. The
         codec calibration (k-means on at most 60k frames) is a fixed cost, so the per-clip cost
         falls with size; linear growth means the marginal cost stays flat.
         The issue asks for 500, 1000, 2000 clips: `--sizes 500,1000,2000` (~10 min on 2 idle
         cores, so `make bench` uses 100,200,400 and `make bench-full` the issue's sizes).
demo:    `aligncap run --out DIR --params flows/demo.yaml` in a child process (a fresh
         DIR: a cold run), its process tree's summed RSS sampled every 0.5 s (psutil). ~15 min,
         so only with --demo (`make bench-full`).
Prints one JSON object.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import emit, log, parser, setup_threads  # noqa: E402


def data_stages(out: Path, n: int) -> dict[str, float]:
    """synth -> prepare -> clues -> tokenize into `out`, as `flows.prepare` runs them; seconds per stage."""
    from aligncap_core.clues.annotate import add_clues
    from aligncap_core.codec import tokenize_dataset
    from aligncap_core.data.prepare import prepare_dataset
    from aligncap_core.data.synth.corpus import synthesize_corpus

    t, secs = time.perf_counter(), {}

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        secs[name], t = now - t, now

    synthesize_corpus(n=n, seed=0, out_dir=out / "corpus", show_progress=False)
    lap("synth")
    prepare_dataset(out / "corpus" / "manifest.jsonl", out / "data", progress=False)
    lap("prepare")
    add_clues(out / "data", progress=False)
    lap("clues")
    tokenize_dataset(out / "data", progress=False)
    lap("tokenize")
    return secs


def cache_ratio(n: int, root: Path) -> dict:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(root / "prefect-results")
    os.environ["PREFECT_HOME"] = str(root / "prefect-home")  # a fresh API database: a cold cache
    from prefect import flow

    from flows.params import DataParams, TrackingParams
    from flows.prepare import prepare_data

    @flow(name="bench-warmup")
    def warmup() -> int:
        return 1

    warmup()  # starts the ephemeral API outside the timed runs
    out = root / "flow"
    params = dict(out_dir=str(out), data=DataParams(synth_n=n),
                  tracking=TrackingParams(enabled=False))
    t = time.perf_counter()
    prepare_data(**params)
    cold = time.perf_counter() - t
    t = time.perf_counter()
    prepare_data(**params)
    cached = time.perf_counter() - t
    return {"cached_over_cold": round(cached / cold, 3), "goal_cached_over_cold": 0.10,
            "cold_s": round(cold, 1), "cached_s": round(cached, 1), "clips": n}


def scaling(sizes: list[int], root: Path) -> dict:
    per = {}
    for n in sizes:
        log(f"pipeline: data stages on {n} clips")
        secs = data_stages(root / f"scale-{n}", n)
        total = sum(secs.values())
        per[n] = {"s": round(total, 1), "s_per_clip": round(total / n, 4),
                  "by_stage_s": {k: round(v, 1) for k, v in secs.items()}}
    ns = sorted(per)
    marginal = [(per[b]["s"] - per[a]["s"]) / (b - a) for a, b in zip(ns, ns[1:], strict=False)]
    spc = [per[n]["s_per_clip"] for n in ns]
    return {
        "per_clip_largest_over_smallest": round(spc[-1] / spc[0], 3),
        "marginal_s_per_clip": [round(m, 4) for m in marginal],
        "marginal_last_over_first": round(marginal[-1] / marginal[0], 3) if len(marginal) > 1 and marginal[0] > 0 else None,
        "goal_within": 1.2,
        "by_size": {str(n): per[n] for n in ns},
    }


def _pss(pid: int) -> int:
    """Proportional set size in bytes (shared pages split between their processes); 0 when
    /proc/PID/smaps_rollup cannot be read (not Linux, or the process is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("Pss:"))
    except (OSError, StopIteration, ValueError):
        return 0


def demo_run(root: Path, params: str = "flows/demo.yaml", extra: list[str] | None = None) -> dict:
    """`make demo`'s pipeline in a child process; every process of its tree sampled each 0.5 s.

    peak_pss_gb counts a page shared by several processes (torch's libraries in the Prefect
    server and the pipeline) once in total; peak_rss_gb, the sum of their RSS, counts it once
    per process (an upper bound). peak_by_process_gb: the largest processes at the PSS peak.
    """
    import psutil

    out = root / "demo"
    cmd = [sys.executable, "-m", "aligncap_core.cli", "run", "--out", str(out), "--params", params, *(extra or [])]
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(root / "demo.log", "w"))
    peak_rss, peak_pss, at_peak, stop = 0, 0, {}, threading.Event()

    def sample() -> None:
        nonlocal peak_rss, peak_pss, at_peak
        p = psutil.Process(proc.pid)
        while not stop.is_set():
            with contextlib.suppress(psutil.Error):
                procs = [c for c in [p, *p.children(recursive=True)] if c.is_running()]
                peak_rss = max(peak_rss, sum(c.memory_info().rss for c in procs))
                pss = {f"{c.pid} {c.name()}": _pss(c.pid) for c in procs}
                if sum(pss.values()) > peak_pss:
                    peak_pss, at_peak = sum(pss.values()), pss
            stop.wait(0.5)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    rc = proc.wait()
    wall = time.perf_counter() - t
    stop.set()
    th.join()
    top = sorted(at_peak.items(), key=lambda kv: -kv[1])[:4]
    return {"rc": rc, "wall_s": round(wall, 1), "wall_min": round(wall / 60, 2), "goal_wall_min": 15,
            "peak_pss_gb": round(peak_pss / 2**30, 2), "peak_rss_gb": round(peak_rss / 2**30, 2),
            "goal_peak_gb": 4.0, "peak_by_process_gb": {k: round(v / 2**30, 2) for k, v in top}}


def main(argv: list[str] | None = None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--cache-n", type=int, default=120, help="clips of the cached/cold comparison")
    ap.add_argument("--sizes", default="100,200,400", help="corpus sizes of the scaling run")
    ap.add_argument("--no-cache", action="store_true", help="skip the Prefect cached/cold run")
    ap.add_argument("--demo", action="store_true", help="also run `make demo`'s pipeline (~15 min)")
    ap.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = ap.parse_args(argv)
    setup_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.smoke:
        args.cache_n, sizes = 8, [6, 12]
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    root.mkdir(parents=True, exist_ok=True)
    out: dict = {}
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stage progress and Prefect logs off stdout
            out["scaling"] = scaling(sizes, root)
            if not args.no_cache:
                out["cache"] = cache_ratio(args.cache_n, root)
            if args.demo:
                log("pipeline: running the demo (~15 min)")
                out["demo"] = demo_run(root)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return emit("pipeline", out, args.smoke)


if __name__ == "__main__":
    main()
