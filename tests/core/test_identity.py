"""Run identity (issue #19, problem 1): a run folder is resumed only by the settings and inputs
that made it; anything else is refused loudly, never continued under new settings."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from aligncap_core.train import stages
from aligncap_core.train.config import TeacherConfig, to_dict
from aligncap_core.train.identity import (
    RUN_FILE,
    RunIdentity,
    RunMismatchError,
    claim_run_dir,
    identity_config,
    keyed_run_dir,
)
from tests.helpers.training import make_corpus, quick


def _teacher_cfg(**train) -> TeacherConfig:
    return TeacherConfig(preset="micro", train=quick(**{"max_steps": 6, "eval_every": 0,
                                                        "checkpoint_every": 0, **train}))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def test_key_depends_on_what_makes_the_model_not_on_operational_fields(corpus):
    base = stages.teacher_identity(corpus, _teacher_cfg())
    assert stages.teacher_identity(corpus, _teacher_cfg()).key == base.key  # deterministic
    assert stages.teacher_identity(corpus, _teacher_cfg(lr=1e-2)).key != base.key
    assert stages.teacher_identity(corpus, _teacher_cfg(max_steps=7)).key != base.key
    # threads, logging and checkpoint cadence do not change the trained weights
    same = _teacher_cfg(num_threads=2, log_every=1, keep_checkpoints=3, checkpoint_every=2)
    assert stages.teacher_identity(corpus, same).key == base.key
    assert "num_threads" not in identity_config(to_dict(same))["train"]


def test_claim_refuses_other_settings_and_legacy_folders(tmp_path):
    a = RunIdentity("teacher", {"train": {"lr": 0.001}}, {"data": "d1"})
    b = RunIdentity("teacher", {"train": {"lr": 0.002}}, {"data": "d2"})
    assert claim_run_dir(tmp_path / "r", a) is False  # new: claimed
    assert claim_run_dir(tmp_path / "r", a) is True  # same key: resume
    with pytest.raises(RunMismatchError) as e:
        claim_run_dir(tmp_path / "r", b)
    msg = str(e.value)
    assert "train.lr 0.001 -> 0.002" in msg and "inputs.data 'd1' -> 'd2'" in msg
    assert "new --out" in msg and str(tmp_path / "r") in msg
    assert json.loads((tmp_path / "r" / RUN_FILE).read_text())["key"] == a.key  # untouched
    # checkpoints without run.json (an older aligncap): cannot tell, so refused
    (tmp_path / "old" / "step-00000010").mkdir(parents=True)
    with pytest.raises(RunMismatchError, match="no run.json"):
        claim_run_dir(tmp_path / "old", a)
    assert keyed_run_dir(tmp_path, a) != keyed_run_dir(tmp_path, b)


def test_changed_learning_rate_never_resumes_the_old_run(corpus, tmp_path):
    out = tmp_path / "t"
    first = stages.train_teacher(corpus, out, _teacher_cfg(), show_progress=False)
    meta = json.loads((first / "meta.json").read_text())
    assert meta["run_key"] == stages.teacher_identity(corpus, _teacher_cfg()).key
    weights = {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file()}

    # same settings: the finished run comes back as it is (no step retrained, no checkpoint rewritten)
    assert stages.train_teacher(corpus, out, _teacher_cfg(), show_progress=False) == first
    assert {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file()} == weights
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    # a new learning rate into the same folder is refused before anything is written
    with pytest.raises(RunMismatchError, match="train.lr"):
        stages.train_teacher(corpus, out, _teacher_cfg(lr=1e-2), show_progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()
            if p.name in before} == before
    assert (out / "config.yaml").read_text().count("0.003") == 1  # still the first run's lr

    # keyed folders: both runs live side by side
    ka = keyed_run_dir(tmp_path / "k", stages.teacher_identity(corpus, _teacher_cfg()))
    kb = keyed_run_dir(tmp_path / "k", stages.teacher_identity(corpus, _teacher_cfg(lr=1e-2)))
    a = stages.train_teacher(corpus, ka, _teacher_cfg(), show_progress=False)
    b = stages.train_teacher(corpus, kb, _teacher_cfg(lr=1e-2), show_progress=False)
    assert a.parent != b.parent and (a / "meta.json").read_text() != (b / "meta.json").read_text()


def test_student_key_follows_the_teacher_checkpoint(corpus, tmp_path):
    from aligncap_core.train.config import StudentConfig

    t1 = stages.train_teacher(corpus, tmp_path / "t1", _teacher_cfg(), show_progress=False)
    t2 = stages.train_teacher(corpus, tmp_path / "t2", _teacher_cfg(seed=1), show_progress=False)
    cfg = StudentConfig(train=quick(max_steps=2, eval_every=0, checkpoint_every=0))
    k1 = stages.student_identity(corpus, t1, cfg).key
    assert k1 != stages.student_identity(corpus, t2, cfg).key
    # a copy of the same checkpoint elsewhere is the same teacher
    shutil.copytree(t1, tmp_path / "copy")
    assert stages.student_identity(corpus, tmp_path / "copy", cfg).key == k1
    stages.train_student(corpus, t1, tmp_path / "s", cfg, show_progress=False)
    with pytest.raises(RunMismatchError, match="inputs.teacher"):
        stages.train_student(corpus, t2, tmp_path / "s", cfg, show_progress=False)
    with pytest.raises(RunMismatchError, match="lambda_kd"):
        stages.train_student(corpus, t1, tmp_path / "s", replace(cfg, lambda_kd=0.0),
                             show_progress=False)


def test_cli_says_why_and_what_to_do(corpus, tmp_path, monkeypatch, capsys):
    from typer.testing import CliRunner

    from aligncap_core.cli import app, main
    from aligncap_core.train.config import dump_config

    a = dump_config(_teacher_cfg(max_steps=3), tmp_path / "a.yaml")
    b = dump_config(_teacher_cfg(max_steps=3, lr=1e-2), tmp_path / "b.yaml")
    args = ["train", "teacher", str(corpus), "--out", str(tmp_path / "t"), "--config"]
    assert CliRunner().invoke(app, [*args, str(a)]).exit_code == 0
    monkeypatch.setattr("sys.argv", ["aligncap", *args, str(b)])
    with pytest.raises(SystemExit) as exit_:
        main()  # the console entry point: one error line, exit code 2, no stack trace
    out = capsys.readouterr()
    text = out.out + out.err
    assert exit_.value.code == 2
    assert "error:" in text and "other settings" in text and "new --out" in text
    assert "Traceback" not in text
