"""The ablation experiment as a Prefect task: one call of `aligncap_core.experiments.run_ablation`
(which resumes every trained stage and evaluation from its folder, so a retry continues)."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from tasks.train import TRAIN_RETRIES


@task(name="ablation", **TRAIN_RETRIES)
def ablation(out_dir: str, config: dict[str, Any], parent_run_id: str | None = None,
             tracking_uri: str | None = None) -> dict[str, Any]:
    """Train and evaluate every variant x seed; write OUT/results.json, the tables and the plot.
    Returns {"results", "tables", "plot", "seconds"} (paths, not the results themselves)."""
    from pathlib import Path

    from aligncap_core.experiments import (
        AblationConfig,
        plot_variants,
        results_markdown,
        run_ablation,
    )

    out = Path(out_dir)
    results = run_ablation(out, AblationConfig.from_dict(config), tracking_uri=tracking_uri,
                           parent_run_id=parent_run_id)
    (out / "RESULTS-tables.md").write_text(results_markdown(results))
    plot_variants(results, out / "ablation.png")
    get_run_logger().info("ablation: %d runs in %.0f s -> %s", len(results["runs"]),
                          results["seconds"], out / "results.json")
    return {"results": str(out / "results.json"), "tables": str(out / "RESULTS-tables.md"),
            "plot": str(out / "ablation.png"), "seconds": results["seconds"]}
