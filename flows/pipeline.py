"""Flow `aligncap-pipeline`: the whole method end to end, one MLflow parent run per flow run.

    synth (built-in corpus) -> prepare -> clues -> tokenize      (flow prepare-data, pool cpu)
    -> teacher -> student (KD)                                   (flows train-teacher, distill: gpu)
    -> R preference rounds                                       (flow self-improve: gpu)
    -> evaluate every stage on valid, zeroshot and real data     (flow evaluate: cpu)
    -> register the champion, OUT/champion, OUT/results.json

Stages hand off URIs of the artifact store (`aligncap_core.store`): STORE/data/<key>,
STORE/teacher/<key>/step-N, ... Each output's key is derived from what made it, so a changed
setting makes new outputs beside the old ones and the same settings reuse them. The store is
`store`, else $ALIGNCAP_STORE (s3://bucket/prefix for workers on several machines), else OUT
itself (embedded runs: nothing is copied).

Embedded (no server): `aligncap run --out runs/demo` runs everything in one process
on Prefect's ephemeral API. Under a server with deployments, the GPU flows are started with
`run_deployment(..., as_subflow=True)` on pool `gpu` (see `use_deployments`).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from aligncap_core.precision import slow_cpu_note
from flows.common import (
    call_stage,
    deployments_enabled,
    embedded_prefect_env,
    open_store,
    parent_run,
)
from flows.evaluate import evaluate
from flows.improve import self_improve
from flows.params import (
    DataParams,
    EvalParams,
    ImproveParams,
    StudentParams,
    TeacherParams,
    TrackingParams,
)
from flows.prepare import prepare_data
from flows.train import distill, train_teacher
from tasks import register


def pick_champion(stages: dict[str, dict[str, dict]], cfg: dict[str, Any]) -> tuple[str, float | None]:
    """The speech stage with the best selection score (ImproveConfig.select_metric on
    select_split); the student when no stage has a score. A later stage replaces the best so
    far only when it beats it by more than ImproveConfig.min_delta (`RoundSelector`, the rounds'
    own selection): a round must really improve on its start, not win by a clip's noise."""
    from aligncap_core.improve import ImproveConfig, RoundSelector, selection_score

    sel = RoundSelector(ImproveConfig.from_dict(cfg), best={"stage": "student", "score": None})
    for stage, by_split in stages.items():
        if stage == "teacher":  # reads text, not audio: never a speech captioning champion
            continue
        sel.update({"stage": stage,
                    "score": selection_score(by_split.get(cfg["select_split"]), cfg["select_metric"])})
    return sel.best["stage"], sel.best["score"]


def _plot(stages: dict[str, dict[str, dict]], split: str, out_png: Path, t: Any) -> None:
    from aligncap_core.tracking import plot_rounds

    series = {s: m[split] for s, m in stages.items() if s != "teacher" and split in m}
    if series:
        plot_rounds(series, out_png, metrics=list(PLOT_METRICS),
                    run_id=t.parent_run_id, uri=t.uri)


@flow(name="aligncap-pipeline", persist_result=True)
def aligncap_pipeline(out_dir: str = "runs/pipeline", data: DataParams = DataParams(),
                      teacher: TeacherParams = TeacherParams(),
                      student: StudentParams = StudentParams(),
                      improve: ImproveParams = ImproveParams(),
                      evaluation: EvalParams = EvalParams(),
                      tracking: TrackingParams = TrackingParams(),
                      use_deployments: bool | None = None, store: str | None = None) -> dict[str, Any]:
    """Run every stage with `out_dir` as this worker's work folder; returns (and writes to
    OUT/results.json) `{"stages": {stage: {split: metrics}}, "champion": stage, "checkpoints":
    {stage: URI}, "wall_seconds": s, ...}`.

    use_deployments: start the GPU flows through their deployments (True), in this process
    (False), or auto (empty): through deployments when this run itself came from a deployment.
    store: the artifact store every stage publishes to (empty: $ALIGNCAP_STORE, else out_dir).
    """
    t0 = time.perf_counter()
    log = get_run_logger()
    out = Path(out_dir)
    remote = deployments_enabled(use_deployments)
    st = open_store(store, out_dir)
    if tracking.enabled:
        # resolved once here, so stages on other workers log to the same store
        tracking = tracking.model_copy(update={"tracking_uri": tracking.uri(out_dir)})
    cfg = improve.resolved(evaluation)
    if missing := evaluation.realdata_missing():
        log.warning(missing)
    if not remote and (slow := slow_cpu_note()):  # said at the start, not found out an hour in
        log.warning(slow)
    params = {"out_dir": out_dir, "data": data.model_dump(), "teacher": teacher.resolved(),
              "student": student.resolved(), "improve": cfg, "evaluation": evaluation.model_dump(),
              "use_deployments": remote, "store": st.root}
    with parent_run(tracking, out_dir, "pipeline", None, params) as t:
        # resolved once here, so every stage on every worker publishes to the same store
        common = {"tracking": tracking, "parent_run_id": t.parent_run_id, "store": st.root}
        data_dir = prepare_data(out_dir, data, **common)
        teacher_ckpt = call_stage(train_teacher, remote, data_dir=data_dir, out_dir=out_dir,
                                  teacher=teacher, **common)
        student_ckpt = call_stage(distill, remote, data_dir=data_dir, teacher_ckpt=teacher_ckpt,
                                  out_dir=out_dir, student=student, **common)
        improved = call_stage(self_improve, remote, data_dir=data_dir, out_dir=out_dir,
                              start_checkpoint=student_ckpt, start_stage="student",
                              improve=improve, evaluation=evaluation, **common)
        checkpoints = {"teacher": teacher_ckpt, "student": student_ckpt,
                       **{s: r["checkpoint"] for s, r in improved["rounds"].items()}}
        chosen = None  # evaluation.realdata_stages "champion": real data for this stage only
        if evaluation.realdata_stages == "champion":
            chosen, _ = pick_champion({"student": improved["start"]["metrics"],
                                       **{s: r["metrics"] for s, r in improved["rounds"].items()}}, cfg)
        stages = evaluate(checkpoints, data_dir, out_dir, evaluation, **common,
                          realdata_stages=None if chosen is None else [chosen])
        champion, score = pick_champion(stages, cfg)
        if chosen is not None and champion != chosen:  # the same selection on the same reports
            raise RuntimeError(f"the champion picked from the final evaluation ({champion}) is not "
                               f"the one the rounds' reports picked ({chosen}), whose real data was "
                               "evaluated: the two evaluations differ; set evaluation.realdata_stages "
                               "to 'all' and report this")
        published = register(checkpoints[champion], champion, str(out / "champion"),
                             t.parent_run_id if tracking.register_champion else None, t.uri,
                             tracking.model_name, score, data_dir)
        if t.parent_run_id:
            _plot(stages, cfg["select_split"], out / "rounds.png", t)
        results = {"stages": stages, "champion": champion, "champion_score": score,
                   "select_metric": cfg["select_metric"], "champion_checkpoint": published["checkpoint"],
                   "champion_copy": published["copy"], "champion_version": published["version"],
                   "model_uri": published["model_uri"], "checkpoints": checkpoints, "data": data_dir,
                   "store": st.root,
                   "mlflow_run_id": t.parent_run_id, "tracking_uri": t.uri,
                   "wall_seconds": round(time.perf_counter() - t0, 1)}
        from aligncap_core.utils import atomic_write

        with atomic_write(out / "results.json") as f:
            json.dump(results, f, indent=2, default=str)
        if t.parent_run_id:
            from aligncap_core.tracking import client

            client(t.uri).log_artifact(t.parent_run_id, str(out / "results.json"))
    log.info("champion: %s (%s = %s); results in %s (%.0f s)", champion, cfg["select_metric"],
             score, out / "results.json", results["wall_seconds"])
    return results


# what `make demo` prints and plots (names of aligncap_core.eval.metrics.report_keys; a test checks)
# level_withheld: share of clips the level check left volume and emotion out of (inference.domain)
TABLE_METRICS = ("clue_f1", "hallucination_rate", "level_withheld", "kl_gap", "cider", "meteor")
# the level_withheld column shows the shares of clips all three checks withheld attributes of
WITHHELD = ("level_withheld", "voice_withheld", "pitch_withheld")
PLOT_METRICS = ("bleu4", "cider", "clue_f1", "hallucination_rate")
TABLE_ATTRIBUTES = ("emotion", "pitch", "speed", "volume", "gender")  # of vocab.ATTRIBUTES


def _num(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, int | float) and not isinstance(v, bool) else "-"


def _metric(m: dict, key: str) -> str:
    """One metric cell; level_withheld's holds the three checks' shares (WITHHELD), the
    hallucination rate's its 95% interval (`clue_metrics.rate_interval`) when the report has it."""
    if key == "level_withheld":
        return " / ".join(_num(m.get(k)) for k in WITHHELD)
    if key == "hallucination_rate" and m.get("hallucination_low") is not None:
        # with its 95% interval: on 80 clips one clip is 0.0125 and the interval ~0.14 wide
        return f"{_num(m.get(key))} ({m['hallucination_low']:.2f}-{m['hallucination_high']:.2f})"
    return _num(m.get(key))


def _stated(m: dict, attr: str) -> str:
    """`mention / accuracy when stated` of one attribute, e.g. "0.95 / 0.91"."""
    if m.get(f"mention_{attr}") is None:
        return "-"
    return f"{_num(m.get(f'mention_{attr}'))} / {_num(m.get(f'acc_stated_{attr}'))}"


def results_table(results: dict[str, Any]) -> Any:
    """A rich Table of results.json: a row per stage and split (valid, zeroshot, realdata), the
    champion marked with *, and per split a `majority` row (no-audio baseline: the hallucination
    rate and accuracy of always stating each attribute's most frequent value). Attribute columns
    show `mention / accuracy when stated`; the teacher (a text model) shows its valid CE and its
    copy rate (the share of its prompt's attribute values its captions state)."""
    from rich.table import Table

    table = Table(title=f"aligncap pipeline: champion {results['champion']} "
                        f"({results['select_metric']} on valid); attributes: mention / accuracy when stated")
    for title in ("stage", "split", *TABLE_METRICS, *TABLE_ATTRIBUTES):
        title = "withheld: level / voice / pitch" if title == "level_withheld" else title
        table.add_column(title, justify="right" if title not in ("stage", "split") else "left")
    baselines: dict[str, dict] = {}
    for stage, by_split in results["stages"].items():
        mark = "*" if stage == results["champion"] else ""
        for split, m in by_split.items():
            if "clue_f1" not in m:  # the teacher: {"valid": {"loss", "ce", "copy_rate", ...}}
                ce, copy = m.get("ce"), m.get("copy_rate")
                table.add_row(stage + mark, split, "-" if ce is None else f"ce {ce:.3f}",
                              "-" if copy is None else f"copies {copy:.3f}",
                              *(["-"] * (len(TABLE_METRICS) + len(TABLE_ATTRIBUTES) - 2)))
                continue
            baselines.setdefault(split, m)
            table.add_row(stage + mark, split, *(_metric(m, k) for k in TABLE_METRICS),
                          *(_stated(m, a) for a in TABLE_ATTRIBUTES))
    for split, m in baselines.items():
        table.add_row("majority", split, "-", _num(m.get("majority_hallucination_rate")),
                      *(["-"] * (len(TABLE_METRICS) - 2)),
                      *(("- / " + _num(m.get(f"majority_{a}"))) if m.get(f"majority_{a}") is not None
                        else "-" for a in TABLE_ATTRIBUTES))
    return table


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """What `aligncap run` (and `make demo`) starts in a child process: the pipeline in Prefect's
    embedded mode, then its table. Options: `aligncap_core.cli.run_cmd`."""
    import yaml

    from aligncap_core.cli import child_options

    opts = child_options(argv, "run")
    embedded_prefect_env()
    params: dict[str, Any] = yaml.safe_load(Path(opts["params"]).read_text()) if opts.get("params") else {}
    params["out_dir"] = opts["out"]
    if opts.get("n") is not None:
        params.setdefault("data", {})["synth_n"] = opts["n"]
    if opts.get("rounds") is not None:
        params.setdefault("improve", {})["rounds"] = opts["rounds"]
    from prefect.exceptions import ParameterTypeError

    try:  # before the embedded server starts: a typo costs a second, not a traceback
        aligncap_pipeline.validate_parameters(params)
    except ParameterTypeError as e:
        print(f"error: {opts.get('params') or 'the options'}: {e}", file=sys.stderr)
        sys.exit(2)
    results = aligncap_pipeline(**params)
    from rich.console import Console

    Console(width=200).print(results_table(results))
    return results


if __name__ == "__main__":
    main()
