"""Run every benchmark, each in its own process, and print its JSON line; `make bench`.

    python bench/run_all.py [--full] [--out runs/bench/results.json] [--only kd_step,codec_speed]

--full: the issue's corpus sizes (500, 1000, 2000 clips) and the whole `make demo` pipeline
under RSS sampling (~30 min on 2 idle cores); without it everything fits in 10 minutes.
Each line on stdout is one script's JSON object; all of them are also written to --out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = {  # name -> extra args (default, --full)
    "kd_step": ([], []),
    "generate_speed": ([], []),
    "codec_speed": ([], ["--n", "96"]),
    "dpo_round": ([], []),
    "serving": ([], ["--clips", "128"]),
    "pipeline": ([], ["--sizes", "500,1000,2000", "--demo"]),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="pass --smoke to every script")
    ap.add_argument("--only", default="", help="comma-separated script names")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "results.json")
    args = ap.parse_args()
    names = [n for n in SCRIPTS if not args.only or n in args.only.split(",")]
    results, failed, t0 = [], [], time.perf_counter()
    for name in names:
        extra = SCRIPTS[name][1 if args.full else 0] + (["--smoke"] if args.smoke else [])
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, str(ROOT / "bench" / f"{name}.py"), *extra],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode or not lines:
            failed.append(name)
            print(json.dumps({"bench": name, "error": f"exit {proc.returncode}"}), flush=True)
            continue
        res = json.loads(lines[-1])
        res["wall_s"] = round(time.perf_counter() - t, 1)
        results.append(res)
        print(json.dumps(res), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"bench: {len(results)} scripts in {time.perf_counter() - t0:.0f} s -> {args.out}",
          file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
