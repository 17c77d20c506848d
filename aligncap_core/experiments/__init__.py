"""Experiments that train and compare many variants: the AlignCap ablation's definition
(`ablation`: config, what each seed trains, summary) and its report (`report`). The Prefect flow
`ablation` (flows/experiment.py) runs it."""

from aligncap_core.experiments.ablation import AblationConfig, ablation_results, plan, summarize
from aligncap_core.experiments.report import plot_variants, results_markdown, write_report

__all__ = ["AblationConfig", "ablation_results", "plan", "plot_variants", "results_markdown",
           "summarize", "write_report"]
