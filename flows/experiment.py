"""Flow `ablation`: the AlignCap ablation (`aligncap_core.experiments`: SFT, KD without/with
P_act, KD + PO rounds per judge, PO without KD) on one dataset and several seeds, run with the
pipeline's own stages:

    prepare-data (once)  ->  per seed: train-teacher x2 (with / without P_act)
                             -> distill x3 (sft, kd_no_pact, kd) -> self-improve from kd
                             (each judge, and once with the KD term of DPO off)
                             -> evaluate every variant (valid, zeroshot, real data)
    ->  OUT/results.json, OUT/RESULTS-tables.md, OUT/ablation.png (`experiments.write_report`)

Every output is keyed by what made it (STORE/<stage>/<key>), so a re-run reuses what is done,
a changed setting trains anew, and an evaluation the rounds already ran is not run again.
MLflow: one parent run `ablation`; under it a child run per (variant, seed), `kd/seed-0`, with
that variant's evaluation (`eval/valid/clue_f1`, ...) and its training run nested below it;
teachers (`teacher/seed-0`) and round series (`kd_po/seed-0`) get a child of their own.
`aligncap experiment ablation` runs this flow (embedded Prefect).
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from prefect import flow, get_run_logger

from aligncap_core.experiments import AblationConfig
from flows.common import embedded_prefect_env, open_store, parent_run
from flows.evaluate import evaluate
from flows.improve import self_improve
from flows.params import (
    DataParams,
    EvalParams,
    ImproveParams,
    StudentParams,
    TeacherParams,
    TrackingParams,
    _Stage,
    config_params,
)
from flows.prepare import prepare_data
from flows.train import distill, train_teacher
from tasks import publish
from tasks.tracking import stage_run

EVERY_CLIP = 10**9  # realdata_limit None in AblationConfig: every real clip, not eval_limit of them


class AblationParams(config_params(AblationConfig, "AblationFields", base=_Stage)):
    """Sizes of the ablation: AblationConfig's keys (aligncap_core.experiments), e.g. {"seeds":
    [0, 1, 2], "synth_n": 600, "teacher": {...}}; a key left out keeps the library's small
    default (about an hour on 2 CPU cores)."""

    library: ClassVar[Any] = AblationConfig


def eval_params(cfg: Any) -> EvalParams:
    """How every variant is evaluated: the ablation's splits and clip limit, its real data."""
    from aligncap_core.experiments.ablation import SPLITS

    return EvalParams(splits=list(SPLITS), limit=cfg.eval_limit, realdata=cfg.realdata,
                      realdata_limit=cfg.realdata_limit or EVERY_CLIP, meteor=cfg.meteor)


def one_seed(cfg: Any, seed: int, data_dir: str, out_dir: str, evaluation: EvalParams,
             tracking: TrackingParams, parent: str | None, store: str) -> list[dict[str, Any]]:
    """Train and evaluate every variant of one seed (`experiments.plan`); returns its runs."""
    from aligncap_core.experiments import ablation as A

    ckpts: dict[str, str] = {}
    variants: list[str] = []

    def stage(name: str, call: Any, **kw: Any) -> Any:
        # a child run per (name, seed) that the stage's own runs nest under
        with stage_run(parent, f"{name}/seed-{seed}", uri=tracking.tracking_uri) as run_id:
            return call(data_dir=data_dir, out_dir=out_dir, tracking=tracking, parent_run_id=run_id,
                        store=store, **kw)

    for step in A.plan(cfg):
        if step["kind"] == "teacher":
            params = TeacherParams.model_validate(A.teacher_config(cfg, seed, acoustic=step["acoustic"]))
            ckpts[step["name"]] = stage(step["name"], train_teacher, teacher=params)
        elif step["kind"] == "student":
            params = StudentParams.model_validate(A.student_config(cfg, seed, step["lambda_kd"],
                                                           acoustic=step["acoustic"]))
            ckpts[step["variant"]] = stage(step["variant"], distill, student=params,
                                           teacher_ckpt=ckpts[step["teacher"]])
            variants.append(step["variant"])
        else:
            params = ImproveParams.model_validate(A.improve_config(cfg, seed, step["judge"], kd_on=step["kd_on"]))
            done = stage(step["prefix"], self_improve, start_checkpoint=ckpts["kd"], start_stage="kd",
                         improve=params, evaluation=evaluation)
            names = list(done["rounds"])  # round-1, round-2, ... in order
            if step["last_only"]:
                names = names[-1:]
            for name in names:
                variant = f"{step['prefix']}_r{name.split('-')[1]}"
                ckpts[variant] = done["rounds"][name]["checkpoint"]
                variants.append(variant)
    # each variant's evaluation lands on its child run `<variant>/seed-<seed>`; the rounds'
    # evaluations are reused from the store (same checkpoint, data, clips and settings)
    metrics = evaluate({f"{v}/seed-{seed}": ckpts[v] for v in variants}, data_dir, out_dir, evaluation,
                       tracking=tracking, parent_run_id=parent, store=store)
    return [{"variant": v, "seed": seed, "checkpoint": ckpts[v], "metrics": metrics[f"{v}/seed-{seed}"]}
            for v in variants]


@flow(name="ablation", persist_result=True)
def ablation(out_dir: str = "runs/ablation", ablation: AblationParams = AblationParams(),
             tracking: TrackingParams = TrackingParams(experiment="aligncap-ablation"),
             store: str | None = None) -> dict[str, Any]:
    """Run the ablation into OUT (results.json, RESULTS-tables.md, ablation.png); returns their
    paths, "seconds", and "published": the URI of a copy of the three in the artifact store
    (STORE/ablation/<settings key>), which outlives a deployment's temporary working folder."""
    import shutil

    from aligncap_core.experiments import ablation_results, write_report
    from aligncap_core.utils import fingerprint

    t0 = time.perf_counter()
    cfg = AblationConfig.from_dict(ablation.resolved())
    st = open_store(store, out_dir)
    if tracking.enabled:  # resolved once, so every stage logs to the same server
        tracking = tracking.model_copy(update={"tracking_uri": tracking.uri(out_dir)})
    evaluation = eval_params(cfg)
    if missing := evaluation.realdata_missing():
        get_run_logger().warning("ablation: %s", missing)
    with parent_run(tracking, out_dir, "ablation", None, cfg.to_dict()) as t:
        data_dir = cfg.data_dir or prepare_data(
            out_dir, DataParams(synth_n=cfg.synth_n, n_q=cfg.n_q), tracking=tracking,
            parent_run_id=t.parent_run_id, store=st.root)
        runs: list[dict[str, Any]] = []
        for seed in cfg.seeds:
            runs += one_seed(cfg, seed, data_dir, out_dir, evaluation, tracking, t.parent_run_id, st.root)
        results = ablation_results(cfg, runs, data=data_dir, realdata=evaluation.realdata_manifest(),
                                   seconds=time.perf_counter() - t0)
        paths = write_report(results, out_dir)
        if t.parent_run_id:
            from aligncap_core.tracking import client

            for key in ("results", "tables", "plot"):
                client(t.uri).log_artifact(t.parent_run_id, paths[key])
        rel = f"ablation/{fingerprint(cfg.to_dict())}"
        st.local(rel).mkdir(parents=True, exist_ok=True)
        for key in ("results", "tables", "plot"):
            shutil.copy2(paths[key], st.local(rel))
        get_run_logger().info("ablation: %d runs in %.0f s -> %s", len(runs), results["seconds"],
                              paths["results"])
        return {**paths, "seconds": results["seconds"], "published": publish(st.root, str(st.work), rel)}


def main(argv: list[str] | None = None) -> None:
    """What `aligncap experiment ablation` starts in a child process: the flow in Prefect's
    embedded mode; prints the tables and then the returned paths as JSON. Options (validated
    there): `aligncap_core.cli.ablation_cmd`."""
    import json
    from pathlib import Path

    from aligncap_core.cli import child_options

    opts = child_options(argv, "experiment ablation")
    embedded_prefect_env()
    given = {"seeds": opts.get("seeds"), "synth_n": opts.get("synth_n"), "data_dir": opts.get("data")}
    params = AblationParams.model_validate({**(opts.get("config") or {}),
                                            **{k: v for k, v in given.items() if v is not None}})
    tracking = TrackingParams(experiment="aligncap-ablation", tracking_uri=opts.get("tracking_uri"))
    out = ablation(opts["out"], params, tracking, opts.get("store"))
    print(Path(out["tables"]).read_text())
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
