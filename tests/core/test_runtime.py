"""The training runtime's settings that a GPU run uses, checked on the CPU (issue #22): bf16
frozen base weights with fp32 trainable ones, gradient checkpointing and fused AdamW; the
process count a launch gets; the launch command."""

from __future__ import annotations

import json

import pytest
import torch

from aligncap_core.errors import ConfigError
from aligncap_core.train import stages
from aligncap_core.train.config import StudentConfig, TeacherConfig, TrainConfig
from aligncap_core.train.launch import ENV_PROCESSES, launch_command, resolve_processes
from aligncap_core.train.runtime import Runtime, resolve_weights_dtype
from tests.helpers.training import make_corpus, quick


def test_weights_dtype_follows_autocast():
    assert resolve_weights_dtype("auto", "auto", "cpu") == torch.float32  # no GPU: fp32
    assert resolve_weights_dtype("bf16", "bf16", "cpu") == torch.bfloat16
    with pytest.raises(ConfigError, match="needs autocast"):
        resolve_weights_dtype("bf16", "fp32", "cpu")
    with pytest.raises(ConfigError, match="weights_dtype"):
        TrainConfig(weights_dtype="bf16", dtype="fp32")
    with pytest.raises(ConfigError, match="weights_dtype"):
        TrainConfig(weights_dtype="int8")


def test_process_count(monkeypatch):
    monkeypatch.delenv(ENV_PROCESSES, raising=False)
    assert resolve_processes(3) == 3
    assert resolve_processes(None) == max(1, torch.cuda.device_count())
    monkeypatch.setenv(ENV_PROCESSES, "4")
    assert resolve_processes(None) == 4 and resolve_processes(0) == 4 and resolve_processes(2) == 2
    monkeypatch.setenv(ENV_PROCESSES, "0")  # 0 = one per GPU
    assert resolve_processes(None) == max(1, torch.cuda.device_count())
    monkeypatch.setenv(ENV_PROCESSES, "eight")
    with pytest.raises(ConfigError, match=ENV_PROCESSES):
        resolve_processes(None)
    cmd = launch_command("student", "/tmp/spec.json", 8, port=29555)
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--num_processes") + 1] == "8" and "--multi_gpu" in cmd
    assert cmd[-3:] == ["aligncap_core.train.launch", "student", "/tmp/spec.json"]
    with pytest.raises(ConfigError, match="unknown stage"):
        launch_command("teach", "/tmp/spec.json", 2)


def test_single_process_runtime_is_the_plain_loop():
    rt = Runtime("cpu")
    assert (rt.world, rt.rank, rt.is_main, rt.distributed) == (1, 0, True, False)
    model = torch.nn.Linear(2, 2)
    assert rt.prepare(model) is model  # nothing wrapped
    assert rt.my_batches([[1, 2], [3, 4]]) == [[1, 2], [3, 4]]
    assert rt.mean({"a": 1.5}) == {"a": 1.5} and rt.gather("x") == ["x"] and rt.broadcast(3) == 3


def test_student_with_bf16_base_checkpointing_and_fused_adamw(tmp_path, monkeypatch):
    """What a GPU run does by default (bf16 frozen base, fp32 adapter, bf16 autocast), plus
    gradient checkpointing and fused AdamW, here on the CPU: the base is bf16 while training,
    the trained weights fp32, and the loss goes down."""
    corpus = make_corpus(tmp_path / "corpus")
    teacher = stages.train_teacher(corpus, tmp_path / "t", TeacherConfig(
        preset="micro", train=quick(max_steps=10, eval_every=0)), show_progress=False)
    seen = {}
    real_fit = stages.fit

    def fit(task, cfg, run_dir, logger=None, show_progress=True):
        result = real_fit(task, cfg, run_dir, logger, show_progress)
        seen["dtypes"] = {(p.requires_grad, p.dtype) for p in task.model.parameters()}
        seen["checkpointing"] = task.model.get_base_model().is_activation_checkpointing
        return result

    monkeypatch.setattr(stages, "fit", fit)
    cfg = StudentConfig(train=quick(max_steps=6, eval_every=3, log_every=1, lr=1e-2, dtype="bf16",
                                    weights_dtype="bf16", gradient_checkpointing=True,
                                    fused_adamw=True))
    best = stages.train_student(corpus, teacher, tmp_path / "s", cfg, show_progress=False)
    assert seen["dtypes"] == {(False, torch.bfloat16), (True, torch.float32)}
    assert seen["checkpointing"] is False  # switched off again after training (generation next)
    losses = [json.loads(x)["train/loss"] for x in (tmp_path / "s" / "metrics.jsonl").read_text()
              .splitlines() if "train/loss" in x]
    assert len(losses) == 6 and losses[-1] < losses[0], losses
    state = torch.load(best / "trainer_state.pt", weights_only=False)
    assert {v.dtype for v in state["model"].values()} == {torch.float32}
