"""Training loop and the teacher / student stages on the micro preset and a 24-clip fake corpus.

The corpus and the quick settings are tests/helpers/training.py's (real manifest rows, random
codes read through the real `load_codes` path, no audio encoding).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from aligncap_core.errors import ConfigError
from aligncap_core.train import stages
from aligncap_core.train.config import (
    StudentConfig,
    TeacherConfig,
    TrainConfig,
    dump_config,
    from_dict,
    load_config,
)
from aligncap_core.train.loop import StepOutput, TrainTask, fit
from tests.helpers import training
from tests.helpers.training import quick

corpus, teacher = training.corpus, training.teacher  # module-scoped fixtures


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ---- config ------------------------------------------------------------------------------------
def test_config_rejects_unknown_keys_and_round_trips(tmp_path):
    with pytest.raises(ConfigError, match="train.lrr"):
        from_dict(StudentConfig, {"train": {"lrr": 1e-3}})
    with pytest.raises(ConfigError, match="lamda_kd"):
        from_dict(StudentConfig, {"lamda_kd": 1.0})
    with pytest.raises(ConfigError, match="lora.r"):
        from_dict(StudentConfig, {"lora": {"r": "big"}})
    with pytest.raises(ConfigError, match="schedule"):
        TrainConfig(schedule="step")
    cfg = from_dict(StudentConfig, {"lambda_kd": 0, "keep_q": 1, "lora": {"r": 4}})
    assert cfg.lambda_kd == 0.0 and isinstance(cfg.lambda_kd, float) and cfg.lora.r == 4
    path = dump_config(cfg, tmp_path / "c.yaml")
    assert load_config(StudentConfig, path) == cfg
    over = load_config(StudentConfig, path, **{"train.max_steps": 7, "lambda_kd": None})
    assert over.train.max_steps == 7 and over.lambda_kd == 0.0
    assert yaml.safe_load(path.read_text())["lora"]["target_modules"][0] == "q_proj"
    with pytest.raises(ConfigError, match="preset"):
        TeacherConfig(preset="huge")


# ---- loop --------------------------------------------------------------------------------------
def _toy_task(tmp_path: Path, valid_losses: list[float]) -> TrainTask:
    """Linear regression whose valid loss is scripted, to drive early stopping exactly."""
    model = torch.nn.Linear(1, 1)
    xs = [torch.tensor([float(i)]) for i in range(8)]

    def compute_loss(m, batch):
        if not m.training:
            return StepOutput(torch.tensor(valid_losses.pop(0)), {}, 1)
        return StepOutput(((m(batch) - 2 * batch) ** 2).mean(), {}, len(batch))

    def save(path, step, metrics, state):
        path.mkdir(parents=True)
        torch.save(state, path / "trainer_state.pt")
        (path / "meta.json").write_text(json.dumps({"format_version": 1, "step": step}))
        return path

    return TrainTask("toy", model, xs, xs[:2], lambda b: torch.stack(b), compute_loss, save)


def test_early_stopping_stops_and_keeps_the_best(tmp_path):
    task = _toy_task(tmp_path, [1.0, 0.5, 0.7, 0.6, 0.1])
    cfg = TrainConfig(max_steps=50, batch_size=4, eval_every=2, early_stopping_patience=2,
                      checkpoint_every=0, keep_checkpoints=1, warmup_steps=0, lr=1e-2)
    res = fit(task, cfg, tmp_path / "run", show_progress=False)
    assert res.stopped_early and res.step == 8  # evals at 2, 4 (best 0.5), 6, 8: two misses
    assert res.best_checkpoint.name == "step-00000004" and res.best_valid_loss == 0.5
    assert sorted(p.name for p in (tmp_path / "run").glob("step-*")) == [
        "step-00000004", "step-00000008"]  # best kept beside the newest


def test_select_on_a_stage_figure_and_stop_at_its_target(tmp_path):
    """A stage's own validation figure (the teacher's copy rate) picks the best checkpoint, not
    the loss, and training stops once it reaches `stop_at`."""
    task = _toy_task(tmp_path, [0.9, 0.8, 0.7, 0.6, 0.5, 0.4])  # loss keeps falling
    rates = [0.50, 0.80, 0.70, 0.96, 0.99]
    task.validate = lambda m: {"valid/copy_rate": rates.pop(0), "valid/skipped": None}
    cfg = TrainConfig(max_steps=50, batch_size=4, eval_every=2, early_stopping_patience=0,
                      checkpoint_every=0, keep_checkpoints=1, warmup_steps=0, lr=1e-2,
                      select_metric="valid/copy_rate", select_mode="max", stop_at=0.95)
    res = fit(task, cfg, tmp_path / "run", show_progress=False)
    assert res.reached_target and res.step == 8  # 0.96 at the 4th evaluation
    assert res.best_checkpoint.name == "step-00000008" and res.best_value == 0.96
    assert res.best_valid_loss is None and res.metrics["valid/copy_rate"] == 0.96

    # a selection figure the stage does not compute is a clear error, at the first evaluation
    task = _toy_task(tmp_path, [1.0])
    with pytest.raises(ConfigError, match="valid/copy_rate.*valid/loss"):
        fit(task, TrainConfig(max_steps=4, batch_size=4, eval_every=2, warmup_steps=0,
                              select_metric="valid/copy_rate", select_mode="max"),
            tmp_path / "run2", show_progress=False)
    with pytest.raises(ConfigError, match="select_mode must be min"):
        TrainConfig(select_metric="valid/loss", select_mode="max")


def test_teacher_section_keeps_its_own_defaults():
    """Giving one `train` key of the teacher must not reset the section to a bare TrainConfig
    (weight decay 0.01 and loss selection instead of the teacher's 0.1 and copy rate)."""
    cfg = from_dict(TeacherConfig, {"train": {"max_steps": 7}})
    assert cfg.train.max_steps == 7 and cfg.train.weight_decay == 0.1
    assert cfg.train.select_metric == "valid/copy_rate" and cfg.train.stop_at == 0.97
    with pytest.raises(ConfigError, match="no prompt to copy"):
        from_dict(TeacherConfig, {"acoustic_prompt": False})


# ---- stages ------------------------------------------------------------------------------------
def test_teacher_trains_and_lowers_loss(teacher):
    meta = json.loads((teacher / "meta.json").read_text())
    assert meta["stage"] == "teacher" and meta["kind"] == "full" and meta["data_fingerprint"]
    assert "valid/loss" in meta["metrics"]
    losses = [m["train/loss"] for m in _metrics(teacher.parent) if "train/loss" in m]
    assert losses[-1] < losses[0] - 0.5, losses
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(teacher / "tokenizer")
    assert tok.convert_tokens_to_ids("<a1_15>") != tok.unk_token_id  # audio vocab from codec.json
    assert "<a2_0>" not in tok.get_vocab() and "<a0_16>" not in tok.get_vocab()


def _capturing_fit(monkeypatch) -> dict:
    """Wrap stages.fit to snapshot the model's weights before and after training."""
    seen: dict = {}
    real_fit = stages.fit

    def wrapped(task, cfg, run_dir, logger=None, show_progress=True):
        seen["before"] = {k: v.clone() for k, v in task.model.state_dict().items()}
        seen["trainable"] = {n for n, p in task.model.named_parameters() if p.requires_grad}
        result = real_fit(task, cfg, run_dir, logger, show_progress)
        seen["after"] = task.model.state_dict()
        return result

    monkeypatch.setattr(stages, "fit", wrapped)
    return seen


def test_student_changes_only_adapter_and_audio_rows(corpus, teacher, tmp_path, monkeypatch):
    seen = _capturing_fit(monkeypatch)
    cfg = from_dict(StudentConfig, {"lambda_kd": 1.0, "lora": {"r": 4, "alpha": 8},
                                    "train": vars(quick(max_steps=10))})
    best = stages.train_student(corpus, teacher, tmp_path / "student", cfg, show_progress=False)
    assert all(("lora_" in n or "trainable_tokens" in n) for n in seen["trainable"])
    changed = {k for k, v in seen["before"].items() if not torch.equal(v, seen["after"][k])}
    assert changed and all(("lora_" in k or "trainable_tokens" in k) for k in changed), changed
    assert any("trainable_tokens" in k for k in changed) and any("lora_B" in k for k in changed)
    meta = json.loads((best / "meta.json").read_text())
    assert meta["stage"] == "student" and meta["kind"] == "adapter"
    assert meta["base_model"] == "base"  # the teacher (its inference files), embedded
    assert json.loads((best / "base" / "meta.json").read_text())["stage"] == "teacher"
    assert not (best / "base" / "trainer_state.pt").exists()
    assert "valid/kl" in meta["metrics"] and meta["metrics"]["valid/kl"] >= 0
    kls = [m["train/kl"] for m in _metrics(tmp_path / "student") if "train/kl" in m]
    assert kls and all(k >= 0 for k in kls)


def test_lambda_zero_skips_the_teacher_pass(corpus, teacher, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("teacher pass ran with lambda_kd=0")

    monkeypatch.setattr(stages, "teacher_caption_logits", boom)
    cfg = StudentConfig(lambda_kd=0.0, acoustic_prompt=False, train=quick(max_steps=4, eval_every=2))
    best = stages.train_student(corpus, teacher, tmp_path / "sft", cfg, show_progress=False)
    rows = _metrics(tmp_path / "sft")
    assert not any("train/kl" in r or "valid/kl" in r for r in rows)
    assert json.loads((best / "meta.json").read_text())["step"] in (2, 4)


class Killed(Exception):
    pass


class KillAt:
    """A logger that kills the run when it is asked to log `step` (after checkpoint step-1)."""

    def __init__(self, step: int):
        self.step = step

    def log_metrics(self, metrics, step):
        if step == self.step:
            raise Killed

    def log_params(self, params):
        pass


def test_kill_and_resume_reaches_the_same_weights(corpus, teacher, tmp_path):
    # LoRA dropout > 0: the resumed run must also restore the RNG to match
    cfg = StudentConfig(lambda_kd=1.0, lora=from_dict(type(StudentConfig().lora),
                                                       {"r": 4, "alpha": 8, "dropout": 0.1}),
                        train=quick(max_steps=8, checkpoint_every=4, eval_every=0, log_every=1,
                                    batch_size=6))
    full = stages.train_student(corpus, teacher, tmp_path / "full", cfg, show_progress=False)
    with pytest.raises(Killed):
        stages.train_student(corpus, teacher, tmp_path / "killed", cfg, logger=KillAt(6),
                             show_progress=False)
    assert sorted(p.name for p in (tmp_path / "killed").glob("step-*")) == ["step-00000004"]
    resumed = stages.train_student(corpus, teacher, tmp_path / "killed", cfg, show_progress=False)
    assert full.name == resumed.name == "step-00000008"
    # it did resume: the second process trained (and logged) only steps 5..8
    assert [m["step"] for m in _metrics(tmp_path / "killed")] == [5, 6, 7, 8]
    a = torch.load(full / "trainer_state.pt", weights_only=False)
    b = torch.load(resumed / "trainer_state.pt", weights_only=False)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], atol=1e-6, rtol=0)
    assert a["loop"] == b["loop"]
    # a finished run is a no-op that returns the same checkpoint
    again = stages.train_student(corpus, teacher, tmp_path / "killed", cfg, show_progress=False)
    assert again == resumed


def test_hub_base_teacher_adapter_then_student(corpus, tmp_path):
    """A non-scratch base (any save_pretrained dir or hub id) gets a LoRA "teacher" adapter; the
    student adds its own adapter on the same base and its checkpoint holds both."""
    from aligncap_core.model.checkpoint import load_checkpoint
    from aligncap_core.model.config import LoraSettings
    from tests.helpers.models import micro_base_dir

    lora = LoraSettings(r=4, alpha=8, dropout=0.0)
    tcfg = TeacherConfig(base=str(micro_base_dir()), lora=lora, train=quick(max_steps=4, eval_every=2))
    t = stages.train_teacher(corpus, tmp_path / "t", tcfg, show_progress=False)
    tmeta = json.loads((t / "meta.json").read_text())
    assert tmeta["kind"] == "adapter" and tmeta["adapters"] == ["teacher"]
    scfg = StudentConfig(lora=lora, train=quick(max_steps=4, eval_every=2))
    s = stages.train_student(corpus, t, tmp_path / "s", scfg, show_progress=False)
    model, _, smeta = load_checkpoint(s)
    assert sorted(smeta["adapters"]) == ["student", "teacher"] and smeta["active_adapter"] == "student"
    assert smeta["base_model"] == str((s / "base").resolve())  # a local base is embedded
    assert "valid/kl" in smeta["metrics"]


def test_cli_train_teacher_and_student(corpus, teacher, tmp_path):
    from typer.testing import CliRunner

    from aligncap_core.cli import app

    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: micro\ntrain:\n  max_stepz: 3\n")
    res = CliRunner().invoke(app, ["train", "teacher", str(corpus), "--out", str(tmp_path / "t"),
                                   "--config", str(bad)])
    assert isinstance(res.exception, ConfigError) and "train.max_stepz" in str(res.exception)
    good = tmp_path / "student.yaml"
    dump_config(StudentConfig(train=quick(eval_every=0)), good)
    res = CliRunner().invoke(app, ["train", "student", str(corpus), "--teacher", str(teacher),
                                   "--out", str(tmp_path / "s"), "--config", str(good),
                                   "--max-steps", "2", "--lambda-kd", "0", "--no-acoustic-prompt"])
    assert res.exit_code == 0, res.output
    saved = load_config(StudentConfig, tmp_path / "s" / "config.yaml")
    assert (saved.train.max_steps, saved.lambda_kd, saved.acoustic_prompt) == (2, 0.0, False)
    assert (tmp_path / "s" / "step-00000002" / "meta.json").is_file()
