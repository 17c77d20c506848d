"""Checkpoint save/load round trips: adapter and full kinds, resume state, shim, S3."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch

from aligncap_core.errors import ConfigError
from aligncap_core.model.checkpoint import (
    checkpoint_name,
    latest_checkpoint,
    load_checkpoint,
    load_trainer_state,
    read_meta,
    save_checkpoint,
)
from aligncap_core.model.config import LoraSettings
from aligncap_core.model.lora import make_student
from tests.helpers.models import micro_base_dir, micro_model_with_audio

LORA = LoraSettings(r=4, alpha=8, dropout=0.0)


def _trained_student(steps: int = 2):
    model, tok, audio_ids = micro_model_with_audio()
    student = make_student(model, audio_ids, LORA)
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-2)
    x = torch.tensor([[1, 5, 9] + audio_ids[:6] + [12, 2]])
    for _ in range(steps):
        student(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    return student, tok, opt, x


def test_adapter_checkpoint_round_trip_and_resume(tmp_path):
    student, tok, opt, x = _trained_student()
    student.eval()
    want = student(input_ids=x).logits
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    path = save_checkpoint(
        tmp_path / "run" / checkpoint_name(2), student, tok, stage="distill", step=2,
        base_model=str(micro_base_dir()), run_config={"lora": LORA.to_dict(), "lr": 1e-2},
        data_fingerprint="abc123", metrics={"loss": 1.5},
        trainer_state={"optimizer": opt.state_dict(), "step": 2, "data_position": 7},
    )
    expected_draws = (random.random(), np.random.rand(), torch.rand(1))
    assert sorted(p.name for p in path.iterdir()) == [
        "adapters", "audio_rows.safetensors", "base", "config.yaml", "meta.json", "tokenizer",
        "trainer_state.pt"]  # base: the local base, embedded (hard links)
    assert json.loads((path / "meta.json").read_text())["base_model"] == "base"
    assert (path / "base" / "model.safetensors").stat().st_ino == \
        (micro_base_dir() / "model.safetensors").stat().st_ino
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]

    # the base on disk has no audio tokens: the loader grows it from the checkpoint
    model, tok2, meta = load_checkpoint(path)
    assert len(tok2) == len(tok) and meta["step"] == 2 and meta["stage"] == "distill"
    assert meta["data_fingerprint"] == "abc123" and meta["metrics"] == {"loss": 1.5}
    assert meta["adapters"] == ["student"] and meta["format_version"] == 2
    assert torch.allclose(model(input_ids=x).logits, want, atol=1e-6)
    assert not any(p.requires_grad for p in model.parameters())

    resumed, _, _ = load_checkpoint(path, trainable=True)
    assert any(p.requires_grad for p in resumed.parameters())
    state = load_trainer_state(path)
    assert state["step"] == 2 and state["data_position"] == 7
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected_draws
    opt2 = torch.optim.AdamW([p for p in resumed.parameters() if p.requires_grad], lr=1e-2)
    opt2.load_state_dict(state["optimizer"])


def test_full_teacher_then_student_on_it(tmp_path):
    model, tok, audio_ids = micro_model_with_audio()
    with torch.no_grad():  # "teacher stage": every weight changes
        for p in model.parameters():
            p.add_(0.01)
    teacher = save_checkpoint(tmp_path / "teacher", model, tok, stage="teacher", step=10,
                              base_model=str(micro_base_dir()), full_weights=True)
    t_model, _, t_meta = load_checkpoint(teacher)
    x = torch.tensor([[1, 5, 9, audio_ids[3], 2]])
    assert t_meta["kind"] == "full"
    assert torch.allclose(t_model(input_ids=x).logits, model(input_ids=x).logits, atol=1e-6)

    student = make_student(t_model, audio_ids, LORA)
    with torch.no_grad():
        for n, p in student.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    student.eval()
    s_path = save_checkpoint(tmp_path / "student", student, tok, stage="distill", step=3,
                             base_model=str(teacher))
    loaded, _, meta = load_checkpoint(s_path)
    assert meta["base_model"] == str((s_path / "base").resolve())  # the teacher, embedded
    assert torch.allclose(loaded(input_ids=x).logits, student(input_ids=x).logits, atol=1e-6)
    # a merged full copy of the student loads with the same function
    merged = save_checkpoint(tmp_path / "merged", student, tok, stage="export", step=3,
                             base_model=str(teacher), full_weights=True)
    m, _, _ = load_checkpoint(merged)
    assert torch.allclose(m(input_ids=x).logits, student(input_ids=x).logits, atol=1e-5)
    assert type(student).__name__.startswith("Peft")  # saving merged did not unwrap it


def test_latest_checkpoint_shim_and_crash(tmp_path):
    student, tok, _, _ = _trained_student(steps=1)
    run = tmp_path / "run"
    assert latest_checkpoint(run) is None
    for step in (5, 20):
        save_checkpoint(run / checkpoint_name(step), student, tok, stage="distill", step=step,
                        base_model=str(micro_base_dir()))
    (run / ".tmp-step-00000099-x").mkdir()  # leftover of a crashed save
    assert latest_checkpoint(run) == run / checkpoint_name(20)

    # a crash while writing leaves the previous checkpoint and no half directory
    class Boom(RuntimeError):
        pass

    def bad_save(*a, **k):
        raise Boom()

    orig = tok.save_pretrained
    tok.save_pretrained = bad_save
    with pytest.raises(Boom):
        save_checkpoint(run / checkpoint_name(30), student, tok, stage="distill", step=30,
                        base_model=str(micro_base_dir()))
    tok.save_pretrained = orig
    assert not (run / checkpoint_name(30)).exists()
    assert latest_checkpoint(run) == run / checkpoint_name(20)

    # shim: a pre-versioned meta.json (no format_version/kind/adapters) still loads
    old = run / checkpoint_name(20)
    meta = json.loads((old / "meta.json").read_text())
    for k in ("format_version", "kind", "adapters", "active_adapter", "created"):
        meta.pop(k)
    (old / "meta.json").write_text(json.dumps(meta))
    assert read_meta(old)["kind"] == "adapter" and read_meta(old)["adapters"] == ["student"]
    model, _, _ = load_checkpoint(old)
    assert model.active_adapter == "student"
    # shim: version 1 recorded the base's absolute path and had no base/ folder
    shutil.rmtree(old / "base")
    (old / "meta.json").write_text(json.dumps({**meta, "format_version": 1, "kind": "adapter",
                                               "adapters": ["student"], "active_adapter": "student",
                                               "base_model": str(micro_base_dir().resolve())}))
    assert read_meta(old)["format_version"] == 2
    assert load_checkpoint(old)[2]["base_model"] == str(micro_base_dir().resolve())
    meta["format_version"] = 99
    (old / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError):
        load_checkpoint(old)
    with pytest.raises(ConfigError):
        save_checkpoint(tmp_path / "x", student.get_base_model(), tok, stage="s", step=0,
                        base_model="b")


def test_s3_checkpoint_loads_with_the_same_function(tmp_path, monkeypatch):
    moto = pytest.importorskip("moto")
    import boto3

    student, tok, _, x = _trained_student(steps=1)
    student.eval()
    path = save_checkpoint(tmp_path / "ck", student, tok, stage="distill", step=1,
                           base_model=str(micro_base_dir()))
    for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                 "AWS_DEFAULT_REGION": "us-east-1", "ALIGNCAP_CACHE": str(tmp_path / "cache")}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with moto.mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="ckpts")
        for f in path.rglob("*"):
            if f.is_file():
                s3.upload_file(str(f), "ckpts", f"run1/step-1/{f.relative_to(path)}")
        model, _, meta = load_checkpoint("s3://ckpts/run1/step-1")
        assert meta["step"] == 1
        assert torch.allclose(model(input_ids=x).logits, student(input_ids=x).logits, atol=1e-6)


def test_teacher_and_student_adapters_round_trip(tmp_path):
    from peft import get_peft_model

    from aligncap_core.model.lora import lora_config

    model, tok, audio_ids = micro_model_with_audio()
    pm = get_peft_model(model, lora_config(LoraSettings(r=2, alpha=4, target_modules=("q_proj",))),
                        adapter_name="teacher")
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    student = make_student(pm, audio_ids, LORA)
    with torch.no_grad():
        for n, p in student.named_parameters():
            if "lora_B.student" in n:
                p.normal_(0, 0.3)
    student.eval()
    path = save_checkpoint(tmp_path / "c", student, tok, stage="distill", step=1,
                           base_model=str(micro_base_dir()))
    loaded, _, meta = load_checkpoint(path)
    assert meta["adapters"] == ["teacher", "student"] and loaded.active_adapter == "student"
    x = torch.tensor([[1, 5, 9, audio_ids[3], 2]])
    for name in ("student", "teacher"):
        student.set_adapter(name)
        loaded.set_adapter(name)
        assert torch.allclose(loaded(input_ids=x).logits, student(input_ids=x).logits, atol=1e-6)
    with loaded.disable_adapter():
        base = loaded(input_ids=x).logits
    assert not torch.allclose(base, loaded(input_ids=x).logits, atol=1e-3)  # teacher is non-trivial
