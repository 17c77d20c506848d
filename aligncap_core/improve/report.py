"""The per-round table of a self-improvement run (`aligncap improve` prints it at the end)."""

from __future__ import annotations

from typing import Any

# (split, metric, column title) shown per round, when the run evaluated that split
COLUMNS = (("valid", "clue_f1", "valid clue F1"), ("valid", "hallucination_rate", "valid halluc."),
           ("valid", "cider", "valid CIDEr"), ("valid", "kl_gap", "valid KL gap"),
           ("zeroshot", "clue_f1", "zs clue F1"), ("zeroshot", "hallucination_rate", "zs halluc."))


def _fmt(v: Any) -> str:
    return "-" if not isinstance(v, int | float) or isinstance(v, bool) else f"{v:.4f}"


def rounds_table(summary: dict) -> Any:
    """A rich Table from `self_improve`'s summary: one row per round (round 0 = the starting
    policy), the selection score, pairs, a few metrics, seconds; the champion marked with *."""
    from rich.table import Table

    records = summary["rounds"]
    splits = {s for r in records for s in r.get("metrics", {})}
    cols = [c for c in COLUMNS if c[0] in splits]
    table = Table(title=f"self-improvement: {summary['select_metric']} on "
                        f"{summary['select_split']} ({summary['stopped']})")
    for title in ("round", "pairs", "score", *(c[2] for c in cols), "seconds"):
        table.add_column(title, justify="right")
    for r in records:
        mark = "*" if r["round"] == summary["best_round"] else ""
        pairs = r.get("pairs", {}).get("n_pairs", "-") if r["round"] else "-"
        metrics = r.get("metrics", {})
        table.add_row(f"{r['round']}{mark}", str(pairs), _fmt(r.get("score")),
                      *(_fmt(metrics.get(s, {}).get(k)) for s, k, _ in cols),
                      f"{sum(v for k, v in r.get('seconds', {}).items() if k != 'total'):.0f}")
    return table
