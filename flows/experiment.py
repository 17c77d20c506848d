"""Flow `ablation`: the AlignCap ablations (SFT, KD without/with P_act, KD + PO rounds, PO
without KD, each judge) on one dataset and several seeds; one MLflow parent run with a child per
variant and seed, so MLflow's compare view shows the table. Same as `aligncap experiment ablation`.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from pydantic import Field, model_validator

from flows.common import open_store, parent_run
from flows.params import TrackingParams, _Params, _validate
from tasks import publish
from tasks.experiment import ablation as ablation_task


class AblationParams(_Params):
    """Sizes of the ablation (aligncap_core.experiments.AblationConfig); None = the library's
    small default (about an hour on 2 CPU cores)."""

    seeds: list[int] | None = Field(None, description="Training seeds (mean and std over them).")
    synth_n: int | None = Field(None, ge=20, description="Built-in corpus size.")
    data_dir: str | None = Field(None, description="A prepared + tokenized data dir to use instead.")
    config: dict[str, Any] = Field(default_factory=dict, description="Other AblationConfig keys "
                                   "(teacher, student, improve, judges, eval_limit, realdata, ...).")

    def resolved(self) -> dict[str, Any]:
        extra = {k: v for k, v in {"seeds": self.seeds, "synth_n": self.synth_n,
                                   "data_dir": self.data_dir}.items() if v is not None}
        return {**self.config, **extra}

    @model_validator(mode="after")
    def _check(self) -> AblationParams:
        from aligncap_core.experiments import AblationConfig

        _validate(AblationConfig.from_dict, self.resolved())
        return self


@flow(name="ablation", persist_result=True)
def ablation(out_dir: str = "runs/ablation", ablation: AblationParams = AblationParams(),
             tracking: TrackingParams = TrackingParams(experiment="aligncap-ablation"),
             store: str | None = None) -> dict[str, Any]:
    """Run the ablation into OUT (results.json, RESULTS-tables.md, ablation.png); returns their
    paths, and "published": the URI of a copy of the three in the artifact store
    (STORE/ablation/<settings key>), which outlives a deployment's temporary working folder."""
    import shutil

    from aligncap_core.utils import fingerprint

    cfg = ablation.resolved()
    st = open_store(store, out_dir)
    with parent_run(tracking, out_dir, "ablation", None, cfg) as t:
        paths = ablation_task(out_dir, cfg, t.parent_run_id, t.uri)
        rel = f"ablation/{fingerprint(cfg)}"
        st.local(rel).mkdir(parents=True, exist_ok=True)
        for key in ("results", "tables", "plot"):
            shutil.copy2(paths[key], st.local(rel))
        return {**paths, "published": publish(st.root, str(st.work), rel)}


if __name__ == "__main__":
    import argparse
    import json

    ap = argparse.ArgumentParser(description="Run the ablation flow in Prefect's embedded mode.")
    ap.add_argument("--out", default="runs/ablation")
    ap.add_argument("--seeds", default=None, help="comma-separated")
    args = ap.parse_args()
    params = AblationParams(seeds=[int(s) for s in args.seeds.split(",")] if args.seeds else None)
    print(json.dumps(ablation(args.out, params), indent=1))
