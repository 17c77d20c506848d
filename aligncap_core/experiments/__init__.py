"""Experiments that train and compare many variants: the AlignCap ablations (`ablation`) and
their tables and plot (`report`)."""

from aligncap_core.experiments.ablation import AblationConfig, run_ablation, summarize
from aligncap_core.experiments.report import plot_variants, results_markdown

__all__ = ["AblationConfig", "plot_variants", "results_markdown", "run_ablation", "summarize"]
