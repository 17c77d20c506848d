"""Markdown tables of evaluation reports: hearing apart from phrasing, per split.

    .venv/bin/python docs/experiments/report_table.py NAME=REPORT.json [NAME=REPORT.json ...]
        [--splits valid,zeroshot,test] [--pipeline RESULTS.json]

REPORT.json is what `aligncap evaluate` / `evaluate_checkpoint` writes; with `--pipeline` the
stages of a pipeline's results.json are added as rows too. Prints one table per split: clue F1,
per-caption hallucination rate with its 95% interval (and the no-audio majority captioner's), and per attribute
"mention / accuracy when stated", with the majority-class rate of each attribute in the header.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from aligncap_core.eval.clue_metrics import rate_interval  # noqa: E402

ATTRS = ("emotion", "pitch", "speed", "volume", "gender")


def _f(v: object) -> str:
    return f"{v:.3f}" if isinstance(v, int | float) and not isinstance(v, bool) else "-"


def _rate(s: dict) -> str:
    """The hallucination rate with its 95% interval (reports before the interval was recorded:
    computed from the rate and its clip count)."""
    rate, n = s.get("hallucination_rate"), s.get("n_with_attributes") or s.get("n") or 0
    low, high = rate_interval(rate, n)
    return _f(rate) if low is None else f"{_f(rate)} ({low:.2f}-{high:.2f})"


def table(rows: dict[str, dict], split: str) -> str:
    have = {n: m for n, m in rows.items() if split in m and "clue_f1" in m[split]}
    if not have:
        return ""
    first = next(iter(have.values()))[split]
    head = ["model", "n", "clue F1", f"halluc. (majority {_f(first.get('majority_hallucination_rate'))})",
            "level withheld"]
    head += [f"{a} (maj. {_f(first.get(f'majority_{a}'))})" for a in ATTRS]
    out = [f"**{split}** (attributes: mention / accuracy when stated)", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in have.items():
        s = m[split]
        cells = [name, str(s.get("n")), _f(s.get("clue_f1")), _rate(s),
                 _f(s.get("level_withheld"))]
        cells += ["-" if s.get(f"mention_{a}") is None else
                  f"{_f(s.get(f'mention_{a}'))} / {_f(s.get(f'acc_stated_{a}'))}" for a in ATTRS]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("reports", nargs="*", help="NAME=path/to/report.json")
    ap.add_argument("--splits", default="valid,zeroshot,test,realdata,all")
    ap.add_argument("--pipeline", type=Path, help="a pipeline results.json (its stages become rows)")
    args = ap.parse_args(argv)
    rows: dict[str, dict] = {}
    if args.pipeline:
        res = json.loads(args.pipeline.read_text())
        for stage, by_split in res["stages"].items():
            rows[stage] = by_split
    for spec in args.reports:
        name, _, path = spec.partition("=")
        metrics = json.loads(Path(path).read_text())["metrics"]
        rows.setdefault(name, {}).update(metrics)
    text = "\n".join(t for split in args.splits.split(",") if (t := table(rows, split)))
    print(text)
    return text


if __name__ == "__main__":
    main()
