"""The ablation's report, one writer: results.json, the markdown tables and the plot.

    paths = write_report(results, "runs/ablation")   # results.json, RESULTS-tables.md, ablation.png
    md = results_markdown(results)                   # one table per split, mean ± std over seeds
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from aligncap_core.experiments.ablation import REALDATA, SPLITS, TABLE_METRICS
from aligncap_core.utils import atomic_write
from aligncap_core.vocab import ATTRIBUTES

# a caption that names a uniformly random value of the attribute (acc_* is recall-like: a caption
# that does not name the attribute counts as wrong, so this is an upper bound for guessing)
COLORS = {"valid": "C0", "zeroshot": "C1", REALDATA: "C2"}
CHANCE = {f"acc_{a}": round(1 / len(v), 3) for a, v in ATTRIBUTES.items()}


def _cell(stat: dict[str, Any] | None) -> str:
    if not stat:
        return "–"
    if stat["n"] > 1:
        return f"{stat['mean']:.3f} ± {stat['std']:.3f}"
    return f"{stat['mean']:.3f}"


def split_table(summary: dict, split: str, metrics: tuple[str, ...] = TABLE_METRICS) -> str:
    """Markdown table: a row per variant, a column per metric, `mean ± std` over seeds."""
    variants = [v for v in summary if split in summary[v]]
    if not variants:
        return f"(no results on {split})\n"
    shown = [m for m in metrics if any(m in summary[v][split] for v in variants)]
    if not shown:
        return f"(none of {', '.join(metrics)} on {split})\n"
    seeds = max(summary[v][split][m]["n"] for v in variants for m in shown if m in summary[v][split])
    lines = [f"| variant (n={seeds} seeds) | " + " | ".join(shown) + " |",
             "|---|" + "---|" * len(shown)]
    for v in variants:
        lines.append(f"| {v} | " + " | ".join(_cell(summary[v][split].get(m)) for m in shown) + " |")
    if split == REALDATA:
        lines.append("| *chance (uniform guess)* | " + " | ".join(
            str(CHANCE[m]) if m in CHANCE else "" for m in shown) + " |")
    return "\n".join(lines) + "\n"


def results_markdown(results: dict) -> str:
    """All split tables, in the order valid, zeroshot, realdata."""
    parts = []
    for split in (*SPLITS, REALDATA):
        parts.append(f"### {split}\n\n{split_table(results['summary'], split)}")
    return "\n".join(parts)


def plot_variants(results: dict, out_png: str | os.PathLike,
                  metrics: tuple[str, ...] = ("clue_f1", "hallucination_rate", "kl_gap", "cider")) -> Path:
    """One panel per metric: the mean over seeds per variant (error bars: std), a line per split.
    Rounds appear as consecutive variants (kd, kd_po_r1, kd_po_r2, ...)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = results["summary"]
    variants = list(summary)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.4 * len(metrics), 3.6), squeeze=False)
    x = list(range(len(variants)))
    plotted: dict[str, str] = {}
    for ax, m in zip(axes[0], metrics, strict=True):
        for split in (*SPLITS, REALDATA):
            stats = [summary[v].get(split, {}).get(m) for v in variants]
            if not any(stats):
                continue
            ax.errorbar(x, [s["mean"] if s else float("nan") for s in stats],
                        yerr=[s["std"] if s else 0.0 for s in stats], marker="o", capsize=3,
                        color=COLORS[split], label=split)
            plotted[split] = COLORS[split]
        ax.set_title(m, fontsize=10)
        ax.set_xticks(x, variants, rotation=40, ha="right", fontsize=8)
        ax.grid(alpha=0.3)
    if plotted:  # one legend for the figure: a split keeps its colour in every panel
        from matplotlib.lines import Line2D

        fig.legend([Line2D([], [], color=c, marker="o") for c in plotted.values()], list(plotted),
                   fontsize=8, loc="upper right")
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_report(results: dict, out_dir: str | os.PathLike) -> dict[str, str]:
    """Write OUT/results.json, OUT/RESULTS-tables.md and OUT/ablation.png; returns their paths
    ({"results", "tables", "plot"}). The only place an ablation report is written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"results": out / "results.json", "tables": out / "RESULTS-tables.md", "plot": out / "ablation.png"}
    with atomic_write(paths["results"]) as f:
        f.write(json.dumps(results, indent=1))
    with atomic_write(paths["tables"]) as f:
        f.write(results_markdown(results))
    plot_variants(results, paths["plot"])
    return {k: str(v) for k, v in paths.items()}
