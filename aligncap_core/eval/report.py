"""Printing metrics: one table row per metric, one column per evaluated set (e.g. split)."""

from __future__ import annotations

import io
from collections.abc import Mapping

from rich.console import Console
from rich.table import Table


def _columns(metrics: Mapping) -> dict[str, Mapping]:
    """{"column name": metrics} from one metrics dict or a dict of them."""
    if metrics and all(isinstance(v, Mapping) for v in metrics.values()):
        return dict(metrics)
    return {"value": metrics}


def _cell(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def format_table(metrics: Mapping, title: str | None = "caption metrics") -> Table:
    """A rich Table of `compute_metrics` output.

    `metrics` is one metrics dict (one value column) or {name: metrics dict} (one column per
    name, e.g. per split). Numbers print with 4 decimals, None as "-". Text values (such as
    `meteor_error`) are not rows: they are listed under the table as notes.
    """
    cols = _columns(metrics)
    table = Table(title=title)
    table.add_column("metric")
    for name in cols:
        table.add_column(str(name), justify="right")
    keys: list[str] = []
    notes: list[str] = []
    for name, m in cols.items():
        for k, v in m.items():
            if isinstance(v, str):
                if v:
                    notes.append(f"{k}" + (f" ({name})" if len(cols) > 1 else "") + f": {v}")
            elif k not in keys:
                keys.append(k)
    for k in keys:
        table.add_row(k, *(_cell(m.get(k)) for m in cols.values()))
    if notes:
        table.caption = "\n".join(notes)
    return table


def format_text(metrics: Mapping, title: str | None = "caption metrics", width: int = 100) -> str:
    """`format_table` rendered to plain text (no colour codes), for logs and files."""
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, force_terminal=False).print(format_table(metrics, title))
    return buf.getvalue()
