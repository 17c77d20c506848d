"""Multi-process training (issue #22): 2 processes under `accelerate launch` (DDP over gloo on
this CPU machine, started by the same command that starts one process per GPU) train what 1
process trains with the same global batch, and resume after `kill -9` of the whole launch.

Student: 1 process with batch 4 x grad_accum 2 (in this process) against 2 processes with
batch 4 x grad_accum 1 (launched, SIGKILLed once a checkpoint is on disk, relaunched): same
loss at every step, same validation loss, same final weights. DPO round: the same with TRL's
DPOTrainer (batch 2 x grad_accum 2 against 2 x 2 processes). Dropout is 0: the processes draw
their own dropout masks, which cannot match one process's stream.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from aligncap_core.errors import ConfigError
from aligncap_core.train import stages
from aligncap_core.train.config import StudentConfig, from_dict
from aligncap_core.train.launch import launch_command, run_stage
from tests.helpers import training

pytestmark = pytest.mark.slow  # real multi-process training runs (10-25 s each)

# the training tests' module fixtures: the toy corpus and a micro teacher trained on it
corpus, teacher = training.corpus, training.teacher

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1"}


def _kill_when(stage: str, spec: dict, tmp: Path, ready, timeout: float = 300) -> None:
    """Launch `stage` in 2 processes exactly as `run_stage` does, wait until `ready()`, then
    SIGKILL every process of the launch (launcher and workers: one process group)."""
    spec_path = tmp / f"{stage}-spec.json"
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.Popen(launch_command(stage, spec_path, 2), cwd=REPO, env=_env(),
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail(f"{stage} launch ended before it could be killed (exit "
                            f"{proc.returncode}):\n{proc.stderr.read()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"{stage}: no checkpoint after {timeout} s")
            time.sleep(0.002)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        # the workers are not all in the launcher's process group (the elastic agent starts
        # them in sessions of their own) and outlive it for a moment: one caught mid-save
        # renamed step-4 after the caller had listed [3]. So every process of this launch (its
        # command line names the spec) is killed too, and the caller lists the checkpoints
        # only once none is left
        _kill_launch_processes(spec_path)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _kill_launch_processes(spec_path: Path, timeout: float = 30) -> None:
    """SIGKILL every process whose command line names `spec_path`; return once none is left."""
    key = str(spec_path).encode()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = []
        for d in Path("/proc").iterdir():
            try:
                if d.name.isdigit() and key in (d / "cmdline").read_bytes():
                    alive.append(int(d.name))
            except OSError:
                continue
        if not alive:
            return
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    pytest.fail(f"processes of the killed launch still running after {timeout} s: {alive}")


def _by_step(path: Path, key: str) -> dict[int, float]:
    """The last logged value of `key` per step (a resumed run logs its steps again)."""
    out = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if key in row:
            out[row["step"]] = row[key]
    return out


def _steps_logged(run: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()
            if "train/loss" in x]


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys() and a
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-5, worst
    return worst


def _student_cfg(grad_accum: int) -> dict:
    return {"lambda_kd": 1.0, "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            "train": {"lr": 3e-3, "warmup_steps": 2, "max_steps": 12, "batch_size": 4,
                      "grad_accum": grad_accum, "eval_every": 6, "eval_batches": 0,
                      "checkpoint_every": 3, "keep_checkpoints": 2, "early_stopping_patience": 0,
                      "log_every": 1, "num_threads": 1, "device": "cpu", "dtype": "fp32"}}


def test_student_two_processes_match_one_and_resume_after_kill(corpus, teacher, tmp_path):
    one = tmp_path / "one"
    torch.set_num_threads(1)
    stages.train_student(corpus, teacher, one, from_dict(StudentConfig, _student_cfg(2)),
                         show_progress=False)

    two = tmp_path / "two"
    spec = {"data_dir": str(corpus), "teacher_ckpt": str(teacher), "out_dir": str(two),
            "config": _student_cfg(1), "show_progress": False}
    _kill_when("student", spec, tmp_path, lambda: any(
        (p / "meta.json").is_file() for p in two.glob("step-*")))
    killed_at = sorted(int(p.name[5:]) for p in two.glob("step-*"))
    assert killed_at and killed_at[-1] < 12, f"the launch was not killed mid-run: {killed_at}"
    n_before = len(_steps_logged(two))

    # the global batch is batch_size x grad_accum x processes: the unfinished 2-process run is
    # not continued by 1 process (it would silently train another recipe)
    shutil.copytree(two, tmp_path / "copy")
    with pytest.raises(ConfigError, match="trains on 2 process"):
        stages.train_student(corpus, teacher, tmp_path / "copy",
                             from_dict(StudentConfig, _student_cfg(1)), show_progress=False)

    best = run_stage("student", spec, processes=2)  # relaunch: resumes
    assert Path(best).parent == two
    again = _steps_logged(two)[n_before:]
    resumed_from = again[0] - 1
    assert resumed_from in killed_at and again == list(range(resumed_from + 1, 13)), (
        again, killed_at)  # it resumed from a checkpoint, not from scratch

    a, b = _by_step(one / "metrics.jsonl", "train/loss"), _by_step(two / "metrics.jsonl", "train/loss")
    assert sorted(a) == sorted(b) == list(range(1, 13))
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=1e-5), (step, a[step], b[step])
    va, vb = _by_step(one / "metrics.jsonl", "valid/loss"), _by_step(two / "metrics.jsonl", "valid/loss")
    assert sorted(va) == sorted(vb) == [6, 12]
    for step in va:
        assert vb[step] == pytest.approx(va[step], abs=1e-5)
    sa = torch.load(one / "step-00000012" / "trainer_state.pt", weights_only=False)
    sb = torch.load(two / "step-00000012" / "trainer_state.pt", weights_only=False)
    worst = _assert_same_weights(sa["model"], sb["model"])
    print(f"student: losses {[round(a[s], 6) for s in sorted(a)]}; resumed from step "
          f"{resumed_from}; max weight difference {worst:.2e}")
    assert (sa["loop"]["processes"], sb["loop"]["processes"]) == (1, 2)
    assert len(sb["rng_by_rank"]) == 2  # each process resumes its own random stream
    assert not [p for p in two.iterdir() if p.name.startswith(".")]
    # run.json written by rank 0 with this run's key: the identity check holds under DDP
    ident = stages.student_identity(corpus, teacher, from_dict(StudentConfig, _student_cfg(1)))
    assert json.loads((two / "run.json").read_text())["key"] == ident.key


# ---- DPO ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def round0(tmp_path_factory):
    from aligncap_core.prefs.pairs import read_pairs, write_pairs
    from tests.helpers.dpo import make_round0

    root = tmp_path_factory.mktemp("dpo")
    ckpt, pairs = make_round0(root)
    rows = read_pairs(pairs)  # 8 pairs: every step of batch 2 x 2 sees 4 different ones
    flipped = [dict(r, id=r["id"] + "-b", chosen=r["rejected"], rejected=r["chosen"]) for r in rows]
    return ckpt, write_pairs(root / "pairs8.jsonl", rows + flipped)


def _dpo_cfg(grad_accum: int) -> dict:
    return {"max_steps": 8, "batch_size": 2, "grad_accum": grad_accum, "learning_rate": 5e-3,
            "logging_steps": 1, "lambda_kd": 0.5, "max_length": 128, "save_steps": 2}


def test_dpo_two_processes_match_one_and_resume_after_kill(round0, tmp_path):
    from tests.helpers.dpo import dpo_weights

    policy, pairs = round0
    one = tmp_path / "one" / "policy"
    torch.set_num_threads(1)
    run_stage("dpo_round", {"policy_ckpt": str(policy), "pairs_path": str(pairs),
                            "out_dir": str(one), "config": _dpo_cfg(2),
                            "metrics_path": str(tmp_path / "one.jsonl")}, processes=1)

    two = tmp_path / "two" / "policy"
    work = two.parent / ".policy.dpo-work"
    spec = {"policy_ckpt": str(policy), "pairs_path": str(pairs), "out_dir": str(two),
            "config": _dpo_cfg(1), "metrics_path": str(tmp_path / "two.jsonl")}
    _kill_when("dpo_round", spec, tmp_path, lambda: any(
        (p / "trainer_state.json").is_file() for p in work.glob("checkpoint-*")))
    assert not two.exists(), "killed before the round ended"
    saved = sorted(int(p.name.split("-")[1]) for p in work.glob("checkpoint-*"))
    assert saved and saved[-1] < 8
    assert sorted(p.name for p in next(work.glob("checkpoint-*")).glob("rng_state*")) == [
        "rng_state_0.pth", "rng_state_1.pth"]  # every process's random state

    run_stage("dpo_round", spec, processes=2)  # relaunch: resumes from the work checkpoint
    assert not work.exists()
    a, b = _by_step(tmp_path / "one.jsonl", "dpo/loss"), _by_step(tmp_path / "two.jsonl", "dpo/loss")
    assert sorted(a) == sorted(b) == list(range(1, 9))
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=1e-5), (step, a[step], b[step])
    for key in ("dpo/rewards/margins", "dpo/kd_loss"):
        ka, kb = _by_step(tmp_path / "one.jsonl", key), _by_step(tmp_path / "two.jsonl", key)
        assert all(kb[s] == pytest.approx(ka[s], abs=1e-5) for s in ka), key
    worst = _assert_same_weights(dpo_weights(one), dpo_weights(two))
    meta = json.loads((two / "meta.json").read_text())
    assert (meta["stage"], meta["step"], meta["round"]) == ("dpo", 8, 1)
    print(f"dpo: losses {[round(a[s], 6) for s in sorted(a)]}; killed after checkpoint "
          f"{saved[-1]}; max weight difference {worst:.2e}")
