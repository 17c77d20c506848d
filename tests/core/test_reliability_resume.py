"""Crash and resume (issue #9, part 2): `kill -9` a real training process, re-run it, and get the
same weights as a run that was never interrupted.

Each stage (teacher, student, DPO round) runs in a child process (`ENTRY`, the library's stage
function on the micro preset). A watcher polls the run folder every few milliseconds while it
trains and records any checkpoint directory that is visible but incomplete; the child gets
SIGKILL once a checkpoint exists, preferably while the next one is being written (a `.tmp-*`
folder is present), the worst moment. The same command is then run again to the end and its
final trainable weights are compared with an uninterrupted run (atol 1e-4; in practice equal).

The child sleeps a little per step (`--slow`) so that the kill lands mid-run on any machine;
sleeping draws no random numbers and changes no weights.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers.training import make_corpus

pytestmark = pytest.mark.slow  # real multi-process training runs (10-25 s each)

REPO = Path(__file__).resolve().parents[2]

# One child process = one stage run: `ENTRY kind out slow spec_json`. Prints the step of the
# checkpoint it resumed from (0: fresh) before training.
ENTRY = r"""
import json, sys, time
from pathlib import Path
import torch

torch.set_num_threads(1)
kind, out, slow, spec = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3]), json.loads(sys.argv[4])

if kind in ("teacher", "student"):
    from aligncap_core.model.checkpoint import latest_checkpoint
    from aligncap_core.train import stages
    from aligncap_core.train.config import StudentConfig, TeacherConfig, from_dict
    from aligncap_core.train.loggers import JsonlLogger

    class SlowLogger(JsonlLogger):
        def log_metrics(self, metrics, step):
            super().log_metrics(metrics, step)
            time.sleep(slow)

    last = latest_checkpoint(out)
    print("RESUMED_FROM", json.loads((last / "meta.json").read_text())["step"] if last else 0, flush=True)
    logger = SlowLogger(out / "metrics.jsonl")
    if kind == "teacher":
        stages.train_teacher(spec["data"], out, from_dict(TeacherConfig, spec["cfg"]), logger=logger,
                             show_progress=False)
    else:
        stages.train_student(spec["data"], spec["teacher"], out, from_dict(StudentConfig, spec["cfg"]),
                             logger=logger, show_progress=False)
else:  # a DPO round
    from aligncap_core.prefs import dpo as D

    base_cls = D._dpo_trainer_class

    def slow_cls():
        class Slow(base_cls()):
            def training_step(self, *a, **k):
                time.sleep(slow)
                return super().training_step(*a, **k)
        return Slow

    D._dpo_trainer_class = slow_cls
    work = out.parent / f".{out.name}.dpo-work"
    done = sorted(int(p.name.split("-")[1]) for p in work.glob("checkpoint-*")) if work.exists() else []
    print("RESUMED_FROM", done[-1] if done else 0, flush=True)
    D.run_dpo_round(spec["policy"], spec["pairs"], None, out, D.DPORoundConfig(**spec["cfg"]))
print("DONE", flush=True)
"""

LOOP_FILES = ("meta.json", "trainer_state.pt", "config.yaml", "tokenizer")
DPO_FILES = ("trainable.pt", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json")


def _child(kind: str, out: Path, spec: dict, slow: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-c", ENTRY, kind, str(out), str(slow), json.dumps(spec)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{err[-3000:]}"
    return out


def _run_and_kill(kind: str, out: Path, spec: dict, watch: Path, is_ckpt, files: tuple[str, ...],
                  slow: float, timeout: float = 240) -> dict:
    """Start the child, watch `watch` until a checkpoint is complete, SIGKILL the child (during
    the next save when it can be caught). Returns what the watcher saw."""
    proc = _child(kind, out, spec, slow)
    half, seen, killed_mid_save = [], set(), False
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{kind} finished before it could be killed; raise --slow or max_steps:\n"
                            f"{proc.stderr.read()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"{kind}: no checkpoint in {watch} after {timeout} s")
            try:
                entries = list(watch.iterdir()) if watch.is_dir() else []
            except FileNotFoundError:
                entries = []
            complete = []
            for p in entries:
                if not is_ckpt(p.name):
                    continue
                missing = [f for f in files if not (p / f).exists()]
                if missing and p.exists():  # (a pruned one may vanish between the two checks)
                    half.append((p.name, missing))
                elif not missing:
                    complete.append(p.name)
            seen.update(complete)
            saving = any(p.name.startswith(".tmp-") for p in entries)
            if complete and (saving or len(seen) >= 2):
                killed_mid_save = saving
                break
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return {"half": half, "seen": sorted(seen), "killed_mid_save": killed_mid_save}


def _resume(kind: str, out: Path, spec: dict) -> int:
    text = _finish(_child(kind, out, spec, 0.0))
    return int(next(line.split()[1] for line in text.splitlines() if line.startswith("RESUMED_FROM")))


class _one_thread:
    """The children train on one thread; in-process reference runs do the same (and restore)."""

    def __enter__(self):
        self.n = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.n)


def _run_inprocess(kind: str, out: Path, spec: dict) -> None:
    """The uninterrupted reference run: the same stage function as ENTRY, in this process."""
    with _one_thread():
        if kind == "dpo":
            from aligncap_core.prefs.dpo import DPORoundConfig, run_dpo_round

            run_dpo_round(spec["policy"], spec["pairs"], None, out, DPORoundConfig(**spec["cfg"]))
            return
        from aligncap_core.train import stages
        from aligncap_core.train.config import StudentConfig, TeacherConfig, from_dict

        if kind == "teacher":
            stages.train_teacher(spec["data"], out, from_dict(TeacherConfig, spec["cfg"]),
                                 show_progress=False)
        else:
            stages.train_student(spec["data"], spec["teacher"], out,
                                 from_dict(StudentConfig, spec["cfg"]), show_progress=False)


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=0, msg=lambda m, k=k: f"{k}: {m}")


def _step_dirs(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.startswith("step-"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def _train_cfg(max_steps: int) -> dict:
    return {"lr": 3e-3, "warmup_steps": 2, "max_steps": max_steps, "batch_size": 6, "eval_every": 0,
            "eval_batches": 0, "checkpoint_every": 3, "keep_checkpoints": 2,
            "early_stopping_patience": 0, "log_every": 1, "num_threads": 1, "device": "cpu",
            "dtype": "fp32"}


@pytest.fixture(scope="module")
def teacher_runs(corpus, tmp_path_factory):
    """An uninterrupted teacher run and a killed + resumed one (from scratch, full weights)."""
    root = tmp_path_factory.mktemp("teacher-kill")
    spec = {"data": str(corpus), "cfg": {"preset": "micro", "train": _train_cfg(12)}}
    full = root / "full"
    _run_inprocess("teacher", full, spec)
    killed = root / "killed"
    watch = _run_and_kill("teacher", killed, spec, killed, lambda n: n.startswith("step-"),
                          LOOP_FILES, slow=0.15)
    resumed_from = _resume("teacher", killed, spec)
    return full, killed, watch, resumed_from


def test_teacher_kill9_resumes_to_the_same_weights(teacher_runs):
    full, killed, watch, resumed_from = teacher_runs
    assert watch["half"] == [], f"half-written checkpoints were visible: {watch['half']}"
    print("teacher watch:", watch)
    assert resumed_from >= 3 and resumed_from % 3 == 0, "the re-run must resume, not restart"
    assert _step_dirs(full) == _step_dirs(killed) == ["step-00000009", "step-00000012"]
    leftovers = [p.name for p in killed.iterdir() if p.name.startswith(".")]
    assert leftovers == [], f"temporary folders left behind: {leftovers}"
    a = torch.load(full / "step-00000012" / "trainer_state.pt", weights_only=False)
    b = torch.load(killed / "step-00000012" / "trainer_state.pt", weights_only=False)
    _assert_same(a["model"], b["model"])
    assert a["loop"] == b["loop"]
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    # the killed process logged 1..k; the re-run replayed only resumed_from+1..12
    assert steps[-(12 - resumed_from):] == list(range(resumed_from + 1, 13))


def test_student_kill9_resumes_to_the_same_weights(corpus, teacher_runs, tmp_path):
    full_teacher = teacher_runs[0] / "step-00000012"
    cfg = {"lambda_kd": 1.0, "lora": {"r": 4, "alpha": 8, "dropout": 0.1},  # dropout: RNG restored too
           "train": _train_cfg(9)}
    spec = {"data": str(corpus), "teacher": str(full_teacher), "cfg": cfg}
    full, killed = tmp_path / "full", tmp_path / "killed"
    _run_inprocess("student", full, spec)
    watch = _run_and_kill("student", killed, spec, killed, lambda n: n.startswith("step-"),
                          LOOP_FILES, slow=0.2)
    assert watch["half"] == []
    print("student watch:", watch)
    resumed_from = _resume("student", killed, spec)
    assert resumed_from in (3, 6)
    a = torch.load(full / "step-00000009" / "trainer_state.pt", weights_only=False)
    b = torch.load(killed / "step-00000009" / "trainer_state.pt", weights_only=False)
    _assert_same(a["model"], b["model"])
    assert not [p for p in killed.iterdir() if p.name.startswith(".")]


def test_leftover_temp_and_half_deleted_checkpoints_are_ignored(corpus, teacher_runs, tmp_path):
    """What a kill at the worst moment leaves: a `.tmp-` save, a `.del-` prune. A re-run skips
    them, clears them and, the run being finished, returns the same checkpoint."""
    import shutil

    from aligncap_core.model.checkpoint import latest_checkpoint

    run = tmp_path / "run"
    shutil.copytree(teacher_runs[1], run)
    (run / ".tmp-step-00000015-abc").mkdir()
    (run / ".tmp-step-00000015-abc" / "meta.json").write_text('{"step": 15}')
    shutil.copytree(run / "step-00000009", run / ".del-step-00000006")
    assert latest_checkpoint(run).name == "step-00000012"
    spec = {"data": str(corpus), "cfg": {"preset": "micro", "train": _train_cfg(12)}}
    before = (run / "step-00000012" / "meta.json").read_text()
    _run_inprocess("teacher", run, spec)
    assert not [p for p in run.iterdir() if p.name.startswith(".")]
    assert (run / "step-00000012" / "meta.json").read_text() == before  # finished: a no-op
    assert _step_dirs(run) == ["step-00000009", "step-00000012"]


# ---- DPO ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dpo_round0(tmp_path_factory):
    from tests.helpers.dpo import make_round0

    root = tmp_path_factory.mktemp("dpo-kill")
    return (root, *make_round0(root))


def test_dpo_round_kill9_resumes_to_the_same_weights(dpo_round0):
    from tests.helpers.dpo import dpo_weights

    root, policy, pairs = dpo_round0
    cfg = {"max_steps": 8, "batch_size": 2, "learning_rate": 5e-3, "logging_steps": 1,
           "lambda_kd": 0.5, "max_length": 128, "save_steps": 2}
    spec = {"policy": str(policy), "pairs": str(pairs), "cfg": cfg}
    full, killed = root / "full" / "policy", root / "killed" / "policy"
    _run_inprocess("dpo", full, spec)
    assert not (full.parent / ".policy.dpo-work").exists(), "the work folder is removed at the end"
    work = killed.parent / ".policy.dpo-work"
    watch = _run_and_kill("dpo", killed, spec, work, lambda n: n.startswith("checkpoint-"),
                          DPO_FILES, slow=0.4)
    assert watch["half"] == [], f"half-written DPO checkpoints were visible: {watch['half']}"
    print("dpo watch:", watch)
    assert not killed.exists(), "no final checkpoint before the round finished"
    resumed_from = _resume("dpo", killed, spec)
    assert resumed_from in (2, 4, 6), "the re-run must resume the round, not restart it"
    assert not work.exists()
    a, b = json.loads((full / "meta.json").read_text()), json.loads((killed / "meta.json").read_text())
    assert a["step"] == b["step"] == 8 and a["round"] == b["round"] == 1
    _assert_same(dpo_weights(full), dpo_weights(killed))


def test_dpo_work_folder_of_other_inputs_is_not_resumed(dpo_round0, tmp_path, caplog):
    """A leftover work folder from a round with other settings must not be resumed."""
    from aligncap_core.prefs.dpo import DPORoundConfig, _work_dir

    root, policy, pairs = dpo_round0
    out = tmp_path / "policy"
    work, resume = _work_dir(out, policy, pairs, None, DPORoundConfig(max_steps=4, save_steps=2))
    (work / "checkpoint-2").mkdir()
    (work / "checkpoint-2" / "trainer_state.json").write_text("{}")
    assert _work_dir(out, policy, pairs, None, DPORoundConfig(max_steps=4, save_steps=2))[1] == work / "checkpoint-2"
    work2, resume2 = _work_dir(out, policy, pairs, None, DPORoundConfig(max_steps=4, save_steps=2, beta=0.2))
    assert work2 == work and resume2 is None and not (work / "checkpoint-2").exists()


# ---- issue #19, problem 4: two runs into one folder; a damaged newest checkpoint --------------
def _logged_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_runs_into_one_folder_both_end_correctly(corpus, teacher_runs, tmp_path):
    """The same command twice at once into one folder (a retried flow run beside the original,
    two people): the second waits for the first and then finds the run finished. Before, each
    cleared the other's temporary saves, replaced and pruned its checkpoints and trained the
    same steps again beside it."""
    spec = {"data": str(corpus), "cfg": {"preset": "micro", "train": _train_cfg(12)}}
    run = tmp_path / "run"
    first, second = _child("teacher", run, spec, 0.4), _child("teacher", run, spec, 0.4)
    out_first, out_second = _finish(first), _finish(second)
    assert "DONE" in out_first and "DONE" in out_second
    full = teacher_runs[0]  # the same settings, run alone
    assert _step_dirs(run) == _step_dirs(full) == ["step-00000009", "step-00000012"]
    assert _logged_steps(run) == list(range(1, 13)), "every step trained once, by one run"
    a = torch.load(full / "step-00000012" / "trainer_state.pt", weights_only=False)
    b = torch.load(run / "step-00000012" / "trainer_state.pt", weights_only=False)
    _assert_same(a["model"], b["model"])
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")], "leftovers (locks, temp)"


@pytest.mark.parametrize("damaged", ["trainer_state.pt", "model/model.safetensors"])
def test_truncated_newest_checkpoint_resumes_from_the_previous_one(corpus, teacher_runs, tmp_path,
                                                                  damaged, caplog):
    """A newest checkpoint cut short (a copy or a disk that filled up) must not stop the run:
    it is set aside with a warning and training resumes from the one before it, to the same
    weights as a run that was never damaged."""
    import shutil

    full = teacher_runs[0]
    run = tmp_path / "run"
    shutil.copytree(full, run)
    f = run / "step-00000012" / damaged
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    spec = {"data": str(corpus), "cfg": {"preset": "micro", "train": _train_cfg(12)}}
    with caplog.at_level("WARNING"):
        _run_inprocess("teacher", run, spec)
    assert any("step-00000012" in r.getMessage() and "damaged" in r.getMessage() for r in caplog.records)
    assert _step_dirs(run) == ["step-00000009", "step-00000012"]
    a = torch.load(full / "step-00000012" / "trainer_state.pt", weights_only=False)
    b = torch.load(run / "step-00000012" / "trainer_state.pt", weights_only=False)
    _assert_same(a["model"], b["model"])
    assert a["loop"] == b["loop"]
    from aligncap_core.model.checkpoint import load_checkpoint, verify_checkpoint

    assert verify_checkpoint(run / "step-00000012") is None  # rebuilt whole
    load_checkpoint(run / "step-00000012")
    assert _logged_steps(run)[-3:] == [10, 11, 12]  # replayed from step 9
    assert [p.name.split("-", 1)[1].rsplit("-", 1)[0] for p in run.iterdir()
            if p.name.startswith(".corrupt-")] == ["step-00000012"]
