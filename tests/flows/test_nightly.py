"""The nightly self-improvement (issue #19, problem 3), embedded: a pipeline registers the first
champion, then the `self-improve` flow runs as its schedule does (no start checkpoint: from the
registered champion) twice. Each night must start from the registered version's files, register
a new version (and move the alias) only when a round beats it by min_delta, and never touch the
files of any registered version: before, every night wrote OUT/rounds/round-k, the very folder
the previous night's champion pointed to."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.helpers.flows import MICRO_TRAIN

# CIDEr: defined for any caption, so every night compares real numbers
IMPROVE = {"select_metric": "cider", "patience": 0, "n": 2, "max_new_tokens": 12, "clips_per_round": 8, "min_margin": 0.0,
           "dpo": {"max_steps": 2, "batch_size": 4, "learning_rate": 5e-3, "max_length": 256}}


def _tree(path: str | Path) -> dict[str, str]:
    root = Path(path)
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "_artifact.json"}


def _versions(client, name: str) -> dict[str, dict]:
    return {v.version: dict(v.tags) for v in client.search_model_versions(f"name = '{name}'")}


def _registered_checkpoint(source: str) -> Path:
    # the version's files: an aligncap pyfunc model holds the checkpoint under artifacts/
    from aligncap_core.serving import checkpoint_in

    return checkpoint_in(source.removeprefix("file://"))


def _location(tags: dict) -> str:
    # where a version says its checkpoint is: the store URI now, a local path before
    return tags.get("uri") or tags["checkpoint"]


@pytest.fixture(scope="module")
def first_champion(tmp_path_factory):
    from flows.params import (
        DataParams,
        EvalParams,
        ImproveParams,
        StudentParams,
        TeacherParams,
        TrackingParams,
    )
    from flows.pipeline import aligncap_pipeline

    root = tmp_path_factory.mktemp("nightly")
    tracking = TrackingParams(tracking_uri=f"sqlite:///{root / 'mlflow.db'}", experiment="nightly-test")
    evaluation = EvalParams(limit=3, max_new_tokens=12, meteor=False, kl_gap=False, realdata=None)
    results = aligncap_pipeline(
        out_dir=str(root / "pipeline"), data=DataParams(synth_n=32, synth_workers=1, n_q=1),
        teacher=TeacherParams(preset="micro", train={**MICRO_TRAIN, "eval_every": 0, "max_steps": 12}),
        student=StudentParams(train={**MICRO_TRAIN, "eval_every": 0, "max_steps": 4}),
        improve=ImproveParams(rounds=0, **IMPROVE), evaluation=evaluation, tracking=tracking)
    return root, results, tracking, evaluation


def test_nightly_rounds_never_clobber_a_registered_champion(first_champion):
    from mlflow import MlflowClient

    from aligncap_core.improve import selection_score
    from flows.improve import self_improve
    from flows.params import ImproveParams
    from tasks import register

    root, results, tracking, evaluation = first_champion
    client = MlflowClient(tracking_uri=tracking.tracking_uri, registry_uri=tracking.tracking_uri)
    name = tracking.model_name
    improve = ImproveParams(rounds=1, **IMPROVE)
    nightly = str(root / "nightly")

    def night() -> dict:
        before = _versions(client, name)
        alias = client.get_model_version_by_alias(name, "champion").version
        start = _tree(_registered_checkpoint(client.get_model_version(name, alias).source))
        data = results.get("data") or str(root / "pipeline" / "data")  # (before: OUT/data)
        out = self_improve(data_dir=data, out_dir=nightly, improve=improve, evaluation=evaluation,
                           tracking=tracking)
        # it started from the registered version's files, not from some local folder
        assert _tree(out["start"]["checkpoint"]) == start
        after = _versions(client, name)
        start_score = selection_score(out["start"]["metrics"]["valid"], "cider")
        assert start_score is not None and out["best"]["score"] is not None
        improved = out["best"]["score"] > start_score + 0.0
        now = client.get_model_version_by_alias(name, "champion").version
        if improved:  # one new version, the alias on it
            (new,) = set(after) - set(before)
            assert now == new and after[new]["stage"] == "round-1"
        else:  # the registry is left as it was
            assert after == before and now == alias
        return out

    # night 1 from the pipeline's champion
    first = night()
    v1_files = {v: _tree(_location(t)) for v, t in _versions(client, name).items()}
    # whatever night 1 decided, a round policy of it becomes the champion, as an improving night
    # registers it (so night 2 starts from a round's checkpoint, the case that clobbered)
    register(first["rounds"]["round-1"]["checkpoint"], "round-1", None, results["mlflow_run_id"],
             tracking.tracking_uri, name, 1.0)
    registered = {v: (_location(t), _tree(_location(t))) for v, t in _versions(client, name).items()}
    second = night()
    # every registered version's files are where they were, unchanged
    for v, (where, files) in registered.items():
        assert _tree(where) == files, f"version {v}'s files at {where} changed"
    assert {v: _tree(_location(t)) for v, t in _versions(client, name).items() if v in v1_files} == v1_files
    assert second["start"]["checkpoint"] != first["start"]["checkpoint"]
