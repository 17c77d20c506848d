"""The flows and prefect.yaml: entrypoints import and validate, prepare-data caches, and the
whole pipeline runs end to end on micro settings with nested MLflow runs."""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from tests.helpers.flows import MICRO_TRAIN

REPO = Path(__file__).resolve().parents[2]
PREFECT_YAML = REPO / "prefect.yaml"
GPU_FLOWS = {"train-teacher", "distill", "self-improve", "ablation"}  # training and generation


def _deployments() -> list[dict]:
    return yaml.safe_load(PREFECT_YAML.read_text())["deployments"]


def _load(entrypoint: str):
    path, func = entrypoint.split(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    return getattr(module, func)


@pytest.mark.parametrize("dep", _deployments(), ids=lambda d: d["entrypoint"])
def test_entrypoint_imports_and_defaults_validate(dep):
    from prefect import Flow

    fn = _load(dep["entrypoint"])
    assert isinstance(fn, Flow)
    params = fn.validate_parameters(dep.get("parameters") or {})  # pydantic, as the server does
    assert set(params) <= set(fn.parameters.properties)
    pool = "gpu" if fn.name in GPU_FLOWS else "cpu"
    assert dep["work_pool"]["name"] == pool


def test_prefect_yaml_schedule_pull_and_deployment_names():
    from flows.common import DEPLOYMENTS

    config = yaml.safe_load(PREFECT_YAML.read_text())
    # workers run the installed package: no pull step (no checkout, no shared working directory),
    # entrypoints by module so they import from any working directory
    assert config["pull"] == []
    assert all(":" in d["entrypoint"] and ".py" not in d["entrypoint"] for d in config["deployments"])
    full = {f"{_load(d['entrypoint']).name}/{d['name']}": d for d in config["deployments"]}
    assert set(DEPLOYMENTS.values()) <= set(full)  # run_deployment targets exist
    (schedule,) = full["self-improve/gpu"]["schedules"]
    assert schedule["active"] and len(schedule["cron"].split()) == 5
    assert full["self-improve/gpu"]["parameters"]["start_checkpoint"] is None  # from champion


def test_params_reject_typos_with_the_library_message():
    from flows.params import ImproveParams, StudentParams, TeacherParams

    with pytest.raises(ValidationError, match="train.lrr"):
        TeacherParams(train={"lrr": 0.1})
    with pytest.raises(ValidationError, match="betta"):
        ImproveParams(dpo={"betta": 0.1})
    with pytest.raises(ValidationError):
        StudentParams(max_stepz=3)
    with pytest.raises(ValidationError, match="train.lr must be a finite number > 0"):  # the library's range check
        TeacherParams(train={"lr": -1})
    with pytest.raises(ValidationError, match="dpo.round"):  # set by each round, not offered
        ImproveParams(dpo={"round": 1})
    assert TeacherParams(preset="micro", train={"max_steps": 5}).resolved() == {"preset": "micro", "train": {"max_steps": 5}}


def test_stage_params_are_the_library_config_shape():
    """A stage section is the library's YAML (same keys and nesting as TeacherConfig etc.), its
    fields generated from the dataclass with no default copied: only the given keys are
    resolved and serialized (an explicit null stays), and a JSON round trip (what the Prefect API
    does to a parameter) gives the same section."""
    import json

    from aligncap_core.config import from_dict
    from aligncap_core.improve import ImproveConfig
    from aligncap_core.train.config import StudentConfig, TeacherConfig, TrainConfig
    from flows.params import EvalParams, ImproveParams, StudentParams, TeacherParams

    section = {"preset": "micro", "train": {"max_steps": 5, "stop_at": None}}
    t = TeacherParams(**section)
    assert t.resolved() == section
    assert TeacherParams.model_validate(json.loads(t.model_dump_json())).resolved() == section
    assert from_dict(TeacherConfig, t.resolved()).train.stop_at is None
    assert TeacherParams().resolved() == {} and StudentParams().resolved() == {}
    # every library key is offered, nested sections included, described by the library's comment
    assert set(TeacherParams.model_fields) == {f.name for f in dataclasses.fields(TeacherConfig)}
    assert set(StudentParams.model_fields) == {f.name for f in dataclasses.fields(StudentConfig)}
    assert set(ImproveParams.model_fields) == {f.name for f in dataclasses.fields(ImproveConfig)}
    train_model = TeacherParams.model_fields["train"].annotation.__args__[0]
    assert set(train_model.model_fields) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert "peak AdamW lr" in train_model.model_fields["lr"].description
    # the defaults quoted are the section's own: the teacher's train section is not a bare TrainConfig
    assert TeacherConfig().train.max_steps != TrainConfig().max_steps
    assert f"(default: {TeacherConfig().train.max_steps})" in train_model.model_fields["max_steps"].description
    assert all(f.default is None for f in train_model.model_fields.values())  # no copied default
    # the demo's sections are library YAMLs as they stand (what `aligncap train teacher --config` reads)
    demo = yaml.safe_load((REPO / "flows/demo.yaml").read_text())
    assert from_dict(TeacherConfig, demo["teacher"]).train.max_steps == demo["teacher"]["train"]["max_steps"]
    prosody = from_dict(StudentConfig, demo["student"]).prosody_settings
    assert prosody.voice_bins == 16 and prosody.trim_db == 35  # the voice token and the silence trim
    assert ImproveConfig.from_dict(demo["improve"]).dpo == demo["improve"]["dpo"]
    # the decoder section is DecodingSettings' shape too
    assert EvalParams(decoding={"strategy": "greedy"}).settings()["decoding"]["strategy"] == "greedy"
    # a real-data manifest that is set but not found is said, not skipped in silence
    missing = EvalParams(realdata="no/such/manifest.jsonl").realdata_missing()
    assert "no/such/manifest.jsonl not found" in missing and "skipped" in missing
    assert EvalParams(realdata=None).realdata_missing() is None
    assert EvalParams(realdata=str(REPO / "flows/demo.yaml")).realdata_missing() is None  # exists



def test_improve_eval_settings_conflicting_with_the_evaluation_are_an_error():
    """The rounds are evaluated like the final evaluation: an improve eval_limit /
    eval_splits that differs from the evaluation's is refused with both names, not overwritten."""
    from aligncap_core.errors import ConfigError
    from flows.params import EvalParams, ImproveParams

    evaluation = EvalParams(splits=["valid"], limit=20)
    with pytest.raises(ConfigError, match=r"improve.eval_limit = 5 conflicts with evaluation.limit = 20"):
        ImproveParams(eval_limit=5).resolved(evaluation)
    with pytest.raises(ConfigError, match=r"improve.eval_splits = \['zeroshot'\] conflicts with "
                                          r"evaluation.splits = \['valid'\]"):
        ImproveParams(eval_splits=["zeroshot"], select_split="zeroshot").resolved(evaluation)
    # the same values, or none, are fine; the evaluation's are what the rounds get
    for config in ({}, {"eval_limit": 20, "eval_splits": ["valid"]}):
        got = ImproveParams(**config).resolved(evaluation)
        assert (got["eval_limit"], got["eval_splits"]) == (20, ["valid"])
    # without an evaluation (a library-shaped call), the config's own value stands
    assert ImproveParams(eval_limit=5).resolved()["eval_limit"] == 5


def _task_states(flow_run_id) -> dict[str, str]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name.rsplit("-", 1)[0]: r.state.name for r in runs}


def test_evaluation_key_holds_the_decoding_defaults():
    """A decoding default that changes must change the evaluate task's cache key: the settings
    carry every DecodingSettings field, given or not."""
    import dataclasses

    from aligncap_core.inference.consistent import DecodingSettings
    from flows.params import EvalParams

    assert EvalParams().settings()["decoding"] == dataclasses.asdict(DecodingSettings())
    given = EvalParams(decoding={"risk": 2.0, "voice_check": False}).settings()["decoding"]
    assert given == dataclasses.asdict(DecodingSettings(risk=2.0, voice_check=False))


def test_a_round_replaces_the_champion_only_by_more_than_min_delta():
    from flows.pipeline import pick_champion

    def stage(f1, halluc):
        return {"valid": {"clue_f1": f1, "hallucination_rate": halluc}}

    # the demo of fd712b7 (valid, 80 clips)
    stages = {"teacher": stage(0.99, 0.0), "student": stage(0.8861, 0.0625),
              "round-1": stage(0.8783, 0.05), "round-2": stage(0.8896, 0.0625)}
    cfg = {"select_split": "valid", "select_metric": "clue_f1 - hallucination_rate", "min_delta": 0.0}
    assert pick_champion(stages, cfg) == ("round-1", pytest.approx(0.8283))  # never the teacher
    # round-1 wins by 0.005, less than one of 80 clips' hallucination (0.0125): the student stays
    assert pick_champion(stages, {**cfg, "min_delta": 0.0125}) == ("student", pytest.approx(0.8236))
    stages["round-2"] = stage(0.95, 0.05)  # a real improvement still wins
    assert pick_champion(stages, {**cfg, "min_delta": 0.0125})[0] == "round-2"


def test_model_loading_tasks_release_memory_when_they_end():
    import tasks
    from tasks.data import _release

    heavy = [tasks.tokenize, tasks.train_teacher, tasks.train_student, tasks.generate_candidates,
             tasks.dpo_round, tasks.evaluate]
    for t in heavy:
        assert _release in t.on_completion_hooks and _release in t.on_failure_hooks, t.name


def test_prepare_data_runs_then_reuses_its_keyed_output(tmp_path):
    from aligncap_core.store import MANIFEST
    from flows.params import DataParams, TrackingParams
    from flows.prepare import prepare_data

    data = DataParams(synth_n=24, synth_workers=1, n_q=1)
    off = TrackingParams(enabled=False)
    first = prepare_data(str(tmp_path), data, off, return_state=True)
    data_dir = Path(first.result())
    assert data_dir.parent == tmp_path / "data" and (data_dir / MANIFEST).is_file()  # committed
    assert json.loads((data_dir / "run.json").read_text())["key"] == data_dir.name
    manifest = data_dir / "manifest.jsonl"
    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    assert len(rows) == 24 and all("codes" in r and "p_act" in r for r in rows)
    mtime = manifest.stat().st_mtime_ns

    # the same settings: the committed data, no stage runs
    second = prepare_data(str(tmp_path), data, off, return_state=True)
    assert second.result() == str(data_dir)
    assert _task_states(second.state_details.flow_run_id) == {}
    assert manifest.stat().st_mtime_ns == mtime  # nothing rewrote the data

    # a changed setting (another codec seed) prepares a new folder beside it; the corpus is reused
    third = prepare_data(str(tmp_path), data.model_copy(update={"seed": 1}), off, return_state=True)
    states = _task_states(third.state_details.flow_run_id)
    assert states["synth"] == "Cached" and states["tokenize"] == "Completed"
    assert Path(third.result()) != data_dir and Path(third.result()).parent == data_dir.parent
    assert manifest.stat().st_mtime_ns == mtime  # the first data is untouched

    # domain randomisation: copies of the train clips join them, clued and tokenized like them
    aug = prepare_data(str(tmp_path), data.model_copy(update={"augment": {"copies": 1, "seed": 3}}),
                       off, return_state=True)
    states = _task_states(aug.state_details.flow_run_id)
    assert states["synth"] == "Cached" and states["augment"] == "Completed"
    aug_rows = [json.loads(x) for x in (Path(aug.result()) / "manifest.jsonl").read_text().splitlines()]
    copies = [r for r in aug_rows if "-aug1" in r["id"]]
    n_train = sum(r["split"] == "train" for r in rows)
    summary = json.loads((Path(aug.result()) / "fingerprint.json").read_text())
    assert 0 < len(copies) <= n_train and len(aug_rows) == len(rows) + len(copies)
    assert all(r["split"] == "train" and "codes" in r and "p_act" in r for r in copies), summary
    assert Path(aug.result()) not in (data_dir, Path(third.result()))
    with pytest.raises(ValueError, match="copie"):  # a bad augment setting is refused up front
        DataParams(augment={"copies": -1})


def test_pipeline_end_to_end_micro(tmp_path):
    from mlflow import MlflowClient

    from flows.params import (
        DataParams,
        EvalParams,
        ImproveParams,
        StudentParams,
        TeacherParams,
        TrackingParams,
    )
    from flows.pipeline import aligncap_pipeline

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "run"
    evaluation = EvalParams(limit=3, realdata_limit=3, max_new_tokens=12, meteor=False, kl_gap=False,
                            realdata=str(REPO.parent / "shared/realdata/manifest.jsonl"),
                            realdata_stages="champion")
    state = aligncap_pipeline(
        out_dir=str(out),
        data=DataParams(synth_n=40, synth_workers=1, n_q=1),
        teacher=TeacherParams(preset="micro", train={**MICRO_TRAIN, "max_steps": 20}),
        student=StudentParams(train={**MICRO_TRAIN, "eval_every": 0, "max_steps": 6}),
        improve=ImproveParams(
            rounds=1, patience=0, n=2, max_new_tokens=12, clips_per_round=8, min_margin=0.0,
            dpo={"max_steps": 2, "batch_size": 4, "learning_rate": 5e-3, "max_length": 256}),
        evaluation=evaluation,
        tracking=TrackingParams(tracking_uri=uri, experiment="flows-test"),
        return_state=True)
    results = state.result()

    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["champion"] == results["champion"]
    assert set(on_disk) >= {"stages", "champion", "wall_seconds"}
    stages = on_disk["stages"]
    assert set(stages) == {"teacher", "student", "round-1"}
    assert "loss" in stages["teacher"]["valid"]
    has_real = (REPO.parent / "shared/realdata/manifest.jsonl").is_file()
    assert results["champion"] in {"student", "round-1"}
    # realdata_stages "champion": the real clips for the champion only, the data's splits for all
    # (the real data is also reported per corpus: the first 3 rows are RAVDESS clips)
    real = {"realdata", "realdata/ravdess"} if has_real else set()
    for stage in ("student", "round-1"):
        expected = {"valid", "zeroshot"} | (real if stage == results["champion"] else set())
        assert set(stages[stage]) == expected
        assert {"bleu4", "cider", "clue_f1"} <= set(stages[stage]["valid"])
    # the evaluate flow with realdata_stages empty ("all") scores the other stage's real clips
    # too, beside the same reports of its data splits
    from flows.evaluate import evaluate

    other = ({"student", "round-1"} - {results["champion"]}).pop()
    again = evaluate({other: results["checkpoints"][other]}, results["data"], str(out), evaluation,
                     tracking=TrackingParams(enabled=False), store=results["store"])
    assert set(again[other]) == {"valid", "zeroshot"} | real
    assert again[other]["valid"] == stages[other]["valid"]
    assert (out / "champion" / "meta.json").is_file()

    # the table `python -m flows.pipeline` (make demo) prints at the end
    from rich.console import Console

    from flows.pipeline import results_table

    console = Console(record=True, width=200)
    console.print(results_table(on_disk))
    text = console.export_text()
    assert f"{results['champion']}*" in text and f"ce {stages['teacher']['valid']['ce']:.3f}" in text
    # the teacher was selected on its copy rate, which the table reports
    assert f"copies {stages['teacher']['valid']['copy_rate']:.3f}" in text
    assert f"{stages['round-1']['valid']['hallucination_rate']:.3f}" in text
    # with its 95% interval: how far another split of as many clips could read
    h = stages["round-1"]["valid"]
    assert f"{h['hallucination_rate']:.3f} ({h['hallucination_low']:.2f}-{h['hallucination_high']:.2f})" in text
    # what the checks left out, per split: level / voice / pitch
    v = stages["round-1"]["valid"]
    assert "withheld: level / voice / pitch" in text
    assert f"{v['level_withheld']:.3f} / {v['voice_withheld']:.3f} / {v['pitch_withheld']:.3f}" in text
    # hearing apart from phrasing: mention / accuracy when stated, and the no-audio baseline row
    m = stages["round-1"]["valid"]
    if m["mention_gender"] is not None and m["acc_stated_gender"] is not None:
        assert f"{m['mention_gender']:.3f} / {m['acc_stated_gender']:.3f}" in text
    assert "majority" in text and f"{m['majority_hallucination_rate']:.3f}" in text

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name("flows-test")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("aligncap.role") == "parent"]
    assert parent.data.tags["prefect.flow_run_id"] == str(state.state_details.flow_run_id)
    assert parent.info.status == "FINISHED"
    children = {r.data.tags["aligncap.stage"]: r for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert {"prepare", "teacher", "distill", "round-1"} <= set(children)
    assert "train/loss" in children["teacher"].data.metrics  # step metrics from the loop
    for name in ("distill", "round-1"):  # evaluation tables of the student and the round
        assert any(k.startswith("eval/valid/") for k in children[name].data.metrics)
    mv = client.get_model_version_by_alias("aligncap-sec", "champion")
    assert mv.tags["stage"] == results["champion"]
    # registered as an MLflow pyfunc model with a signature, the checkpoint inside it
    from mlflow.models import Model

    mlmodel = Model.load(client.download_artifacts(mv.run_id, "champion/MLmodel", str(out)))
    assert "python_function" in mlmodel.flavors and mlmodel.signature is not None


def test_teacher_flow_changed_setting_trains_anew_same_setting_trains_once(tmp_path):
    """Issue #19, problem 1: a changed learning rate into the same out_dir must not return (or
    resume) the old model; the same settings twice must not train twice."""
    from flows.params import TeacherParams, TrackingParams
    from flows.train import train_teacher
    from tests.helpers.training import make_corpus

    data = make_corpus(tmp_path / "data")
    off = TrackingParams(enabled=False)
    train = {**MICRO_TRAIN, "eval_every": 0, "checkpoint_every": 0}

    def run(lr: float):
        params = TeacherParams(preset="micro", train={**train, "lr": lr, "max_steps": 4})
        state = train_teacher(str(data), str(tmp_path / "out"), params, off, return_state=True)
        return state.result(), _task_states(state.state_details.flow_run_id)["train_teacher"]

    a, a_state = run(3e-3)
    b, b_state = run(1e-2)
    assert (a_state, b_state) == ("Completed", "Completed")  # trained twice
    assert a != b and Path(a).parent != Path(b).parent  # two run folders under OUT/teacher
    assert Path(a).is_dir() and Path(b).is_dir()
    ma, mb = (json.loads((Path(p) / "meta.json").read_text()) for p in (a, b))
    assert ma["run_key"] != mb["run_key"]
    assert yaml.safe_load((Path(b).parent / "config.yaml").read_text())["train"]["lr"] == 1e-2

    again, again_state = run(3e-3)
    assert again == a and again_state == "Cached"  # same settings: trained once


def test_the_pipeline_module_points_to_the_one_command_line(tmp_path):
    """`aligncap run` is the pipeline's command line; the module it starts, run by hand with
    options, exits 2 naming the command instead of guessing, and `aligncap run` checks its
    options and its parameters file before anything starts."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "flows.pipeline", "--out", str(tmp_path / "x")],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 2 and "aligncap run" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    r = subprocess.run([sys.executable, "-m", "aligncap_core.cli", "run", "--out", str(tmp_path / "y"),
                        "--params", str(tmp_path / "missing.yaml")],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 2 and "missing.yaml" in r.stderr, r.stderr[-2000:]
    # a typo in the parameters file: one line naming the key, before any server or stage starts
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher:\n  train: {max_stepz: 3}\n")
    r = subprocess.run([sys.executable, "-m", "aligncap_core.cli", "run", "--out", str(tmp_path / "z"),
                        "--params", str(bad)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 2 and "teacher.train.max_stepz" in r.stderr and "Traceback" not in r.stderr, \
        r.stderr[-2000:]
    assert not any((tmp_path / d).exists() for d in ("x", "y", "z"))


def test_builtin_data_is_keyed_by_the_generator_code(monkeypatch):
    """The synthesized corpus and the data prepared from it are cached under the generator's
    fingerprint: other generator code makes them again instead of reusing them."""
    from aligncap_core.data import synth
    from flows.params import DataParams
    from tasks.data import _synth_inputs, data_identity

    settings = DataParams().model_dump()
    synth_args = {"n": 8, "seed": 0, "out_dir": "/tmp/corpus"}
    keys = []
    for code in ("generator-a", "generator-b"):
        monkeypatch.setattr(synth, "generator_fingerprint", lambda code=code: code)
        keys.append((data_identity(settings).key, repr(_synth_inputs(synth_args))))
    assert keys[0][0] != keys[1][0] and keys[0][1] != keys[1][1]

