"""bf16 on the CPU (issue #21): the per-machine probe behind `dtype: auto`, and the bf16 paths
of training, DPO and captioning against fp32 on the micro model.

The suite runs with ALIGNCAP_CPU_BF16=0 (conftest), so `auto` is fp32 everywhere unless a test
says otherwise; the bf16 paths run on any CPU (emulated where there are no bf16 units: slower,
the same numbers).
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from aligncap_core import precision, store
from aligncap_core.errors import ConfigError
from aligncap_core.model.batching import (
    encode_student_example,
    encode_teacher_example,
    pad_examples,
)
from aligncap_core.model.losses import kd_loss
from aligncap_core.train.runtime import resolve_autocast, resolve_weights_dtype
from aligncap_core.train.stages import forward_caption, teacher_caption_logits
from tests.helpers.models import audio_vocab, perturbed_student

CPU = torch.device("cpu")


# ---- the probe ---------------------------------------------------------------------------------
def test_verdict_needs_a_bf16_unit_and_a_measured_gain():
    assert precision.bf16_units({"avx2", "fma", "avx512f"}) == []
    assert precision.bf16_units({"avx512_bf16", "amx_bf16", "avx2"}) == ["amx_bf16", "avx512_bf16"]
    none = precision.decide([], None, None, cpu="EPYC")
    assert not none.use_bf16 and none.reason.startswith("no bf16 units") and none.speedup is None
    amx = precision.decide(["amx_bf16"], 90.0, 650.0)
    assert amx.use_bf16 and amx.speedup == pytest.approx(650 / 90) and "7.2x" in amx.reason
    slow = precision.decide(["avx512_bf16"], 90.0, 150.0)  # a unit, but not worth the casts
    assert not slow.use_bf16 and "below 2.0x" in slow.reason
    assert amx.params()["cpu_bf16.units"] == "amx_bf16" and none.params()["cpu_bf16.units"] == "none"


def test_probe_measures_once_per_machine_and_obeys_the_override(tmp_path, monkeypatch):
    monkeypatch.setenv(store.ENV_CACHE, str(tmp_path))
    monkeypatch.delenv(precision.ENV_OVERRIDE)
    monkeypatch.setattr(precision, "_MEMO", {})
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "amx_bf16", "avx512_bf16"})
    timed = []

    def time_matmuls():
        timed.append(1)
        return 80.0, 640.0

    monkeypatch.setattr(precision, "time_matmuls", time_matmuls)
    first = precision.cpu_bf16()
    assert first.use_bf16 and first.units == ["amx_bf16", "avx512_bf16"] and len(timed) == 1
    saved = json.loads((tmp_path / "cpu_bf16.json").read_text())
    assert saved["report"]["bf16_gflops"] == 640.0 and torch.__version__ in saved["key"]
    monkeypatch.setattr(precision, "_MEMO", {})  # a new process: reads the file, no timing
    assert precision.cpu_bf16() == first and len(timed) == 1
    assert precision.cpu_bf16(refresh=True) == first and len(timed) == 2

    monkeypatch.setenv(precision.ENV_OVERRIDE, "0")
    assert not precision.cpu_bf16().use_bf16 and "ALIGNCAP_CPU_BF16=0" in precision.cpu_bf16().reason
    monkeypatch.setenv(precision.ENV_OVERRIDE, "1")
    assert precision.cpu_bf16().use_bf16
    monkeypatch.setenv(precision.ENV_OVERRIDE, "yes")
    with pytest.raises(ConfigError, match="ALIGNCAP_CPU_BF16"):
        precision.cpu_bf16()

    monkeypatch.delenv(precision.ENV_OVERRIDE)
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "fma"})  # an AVX2-only CPU
    report = precision.cpu_bf16()
    assert not report.use_bf16 and report.fp32_gflops is None and len(timed) == 2  # nothing timed


def test_matmul_timing_measures_both_dtypes():
    fp32, bf16 = precision.time_matmuls((64, 64, 64), reps=2)
    assert fp32 > 0 and bf16 > 0
    assert torch.get_num_threads() >= 1


def test_auto_follows_the_probe_and_explicit_dtypes_win(monkeypatch):
    monkeypatch.setenv(precision.ENV_OVERRIDE, "1")
    assert resolve_autocast("auto", CPU) == torch.bfloat16
    assert resolve_weights_dtype("auto", "auto", "cpu") == torch.bfloat16  # the frozen base too
    assert resolve_autocast("fp32", CPU) is None and resolve_weights_dtype("auto", "fp32", "cpu") == torch.float32
    assert precision.inference_dtype("auto", CPU) == torch.bfloat16
    assert precision.inference_dtype("fp32", CPU) == torch.float32
    monkeypatch.setenv(precision.ENV_OVERRIDE, "0")
    assert resolve_autocast("auto", CPU) is None and resolve_weights_dtype("auto", "auto", "cpu") == torch.float32
    assert resolve_autocast("bf16", CPU) == torch.bfloat16 and precision.cpu_dtype("bf16") == torch.bfloat16
    with pytest.raises(ConfigError, match="auto, fp32 or bf16"):
        precision.cpu_dtype("half")


def test_a_run_on_a_cpu_without_bf16_work_is_told_at_the_start(monkeypatch):
    """The pipeline warns before its first stage (flows.pipeline) where training will run in
    fp32 on the CPU: the demo's time budget is measured on CPUs with bf16 units."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(precision.ENV_OVERRIDE, "0")
    note = precision.slow_cpu_note()
    assert note and f"{precision.ENV_OVERRIDE}=0" in note and "fp32" in note and "46 minutes" in note
    monkeypatch.setenv(precision.ENV_OVERRIDE, "1")
    assert precision.slow_cpu_note() is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv(precision.ENV_OVERRIDE, "0")
    assert precision.slow_cpu_note() is None  # a GPU trains the stages


# ---- bf16 and fp32 agree -----------------------------------------------------------------------
def _batches(tok):
    """A KD batch of the micro vocabulary: {"student": ..., "teacher": ...}, 4 rows each."""
    audio = audio_vocab()[2:]
    captions = ["A man speaks slowly in a low, heavy voice, sounding sad.",
                "A woman speaks quickly in a high, trembling voice, sounding excited.",
                "She whispers softly, sounding fearful.",
                "The speaker sounds calm and talks at a normal pace."]
    s = [encode_student_example(tok, "Describe how the speaker sounds.",
                                audio[3 * i: 3 * i + 12 + 4 * i], c) for i, c in enumerate(captions)]
    t = [encode_teacher_example(tok, "Kids are talking by the door. Emotional clues: pitch low. "
                                "Describe how the speaker sounds.", c) for c in captions]
    return pad_examples(s, tok.pad_token_id), pad_examples(t, tok.pad_token_id)


def _losses_and_grads(student, s, t, bf16: bool):
    """(ce, kd total, LoRA/row gradients) of one KD step, as `train_student` computes it."""
    student.zero_grad(set_to_none=True)
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    with amp:
        t_cap, _ = teacher_caption_logits(student, t, None)
        s_cap, mask, ce = forward_caption(student, s)
        total = ce + kd_loss(s_cap, t_cap, mask, 1.0)
    total.backward()
    grads = torch.cat([p.grad.flatten().float() for p in student.parameters() if p.requires_grad])
    return float(ce.detach()), float(total.detach()), grads


def test_bf16_and_fp32_losses_and_gradients_agree_on_a_tiny_model():
    """The same student and batch: fp32, and what a bf16 CPU run computes (the frozen base in
    bf16, fp32 adapter and audio rows, bf16 autocast). Losses within 1% relative, gradients
    pointing the same way (cosine > 0.99)."""
    from aligncap_core.train.runtime import upcast_trainable

    student, tok = perturbed_student()
    student.eval()  # no dropout: the two sides must see the same network
    s, t = _batches(tok)
    ce32, kd32, g32 = _losses_and_grads(student, s, t, bf16=False)
    for p in student.parameters():
        if not p.requires_grad:
            p.data = p.data.to(torch.bfloat16)
    upcast_trainable(student)
    assert {p.dtype for p in student.parameters() if p.requires_grad} == {torch.float32}
    ce16, kd16, g16 = _losses_and_grads(student, s, t, bf16=True)
    assert ce16 == pytest.approx(ce32, rel=1e-2) and kd16 == pytest.approx(kd32, rel=1e-2)
    assert kd16 != kd32  # bf16 really ran
    assert torch.nn.functional.cosine_similarity(g16, g32, dim=0) > 0.99
    assert g16.norm() == pytest.approx(float(g32.norm()), rel=0.05)


def test_teacher_loss_with_fp32_master_weights_agrees_under_bf16_autocast():
    from tests.helpers.models import micro_model_with_audio

    model, tok, _ = micro_model_with_audio()
    model.eval()
    _, t = _batches(tok)
    ce32 = float(forward_caption(model, t)[2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ce16 = float(forward_caption(model, t)[2])
    assert ce16 == pytest.approx(ce32, rel=1e-2) and ce16 != ce32


def test_uniform_dropout_in_bf16_draws_16_bit_uniforms_and_stays_unbiased():
    from aligncap_core.model.lora import UniformDropout

    d = UniformDropout(0.2)
    x = torch.ones(400_000, dtype=torch.bfloat16, requires_grad=True)
    torch.manual_seed(0)
    y = d(x)
    kept = y != 0
    drop = round(0.2 * 65536)  # p is a multiple of 2^-16
    assert abs(kept.float().mean().item() - (1 - drop / 65536)) < 0.004  # 6 sigma at n = 400k
    assert torch.equal(y[kept], torch.full_like(y[kept], 65536 / (65536 - drop)))
    y.float().sum().backward()
    assert torch.equal(x.grad, y.detach())  # d y / d x = mask * scale
    torch.manual_seed(0)
    assert torch.equal(d(x), y)  # seeded: the same mask again
    d05 = UniformDropout(0.05)  # the default p: 1 / 0.95 is no bf16 number, the mean stays x's
    x = torch.randn(400_000).abs().add(0.5).to(torch.bfloat16)
    ratio = d05(x).double().sum() / x.double().sum()
    assert abs(ratio.item() - 1) < 1.2e-3, ratio  # 3.5 sigma of the mask's noise; a scale rounded to bf16 is +1.9e-3
    torch.manual_seed(0)
    kept32 = d(torch.ones(1000)) != 0
    torch.manual_seed(0)
    assert torch.equal(kept32, torch.rand(1000) >= 0.2)  # fp32 keeps its earlier masks


# ---- the stages in bf16 ------------------------------------------------------------------------
def test_student_stage_on_auto_trains_in_bf16_where_the_probe_says_so(tmp_path, monkeypatch):
    """`train.dtype: auto` on a CPU the probe calls fast in bf16: the frozen base loads in bf16,
    the run logs what it chose (params.json, as MLflow params) and the loss goes down."""
    from aligncap_core.train import stages
    from aligncap_core.train.config import StudentConfig, TeacherConfig
    from tests.helpers.training import make_corpus, quick

    corpus = make_corpus(tmp_path / "corpus")
    teacher = stages.train_teacher(corpus, tmp_path / "t", TeacherConfig(
        preset="micro", train=quick(max_steps=10, eval_every=0)), show_progress=False)
    teacher_params = json.loads((tmp_path / "t" / "params.json").read_text())
    assert teacher_params["precision.autocast"] == "fp32"  # ALIGNCAP_CPU_BF16=0 in the suite
    monkeypatch.setenv(precision.ENV_OVERRIDE, "1")
    seen = {}
    real_fit = stages.fit

    def fit(task, cfg, run_dir, logger=None, show_progress=True):
        seen["dtypes"] = {(p.requires_grad, p.dtype) for p in task.model.parameters()}
        return real_fit(task, cfg, run_dir, logger, show_progress)

    monkeypatch.setattr(stages, "fit", fit)
    stages.train_student(corpus, teacher, tmp_path / "s", StudentConfig(
        train=quick(max_steps=6, eval_every=3, log_every=1, lr=1e-2)), show_progress=False)
    assert seen["dtypes"] == {(False, torch.bfloat16), (True, torch.float32)}
    params = json.loads((tmp_path / "s" / "params.json").read_text())
    assert params["precision.autocast"] == "bf16" and params["precision.weights"] == "bf16"
    assert params["precision.cpu_bf16.reason"] == "ALIGNCAP_CPU_BF16=1"
    losses = [json.loads(x)["train/loss"] for x in (tmp_path / "s" / "metrics.jsonl").read_text()
              .splitlines() if "train/loss" in x]
    assert len(losses) == 6 and losses[-1] < losses[0], losses


def test_dpo_round_in_bf16_agrees_with_fp32(tmp_path):
    """One DPO round (TRL, with the KD term) in fp32 and in bf16 from the same policy and
    pairs: the same first-step loss within 1%, the precision recorded in the checkpoint."""
    from aligncap_core.prefs.dpo import DPORoundConfig, run_dpo_round
    from aligncap_core.prefs.dpo_data import TeacherInfo
    from aligncap_core.train.loggers import JsonlLogger
    from tests.helpers.dpo import TEACHER, make_round0

    ckpt, pairs = make_round0(tmp_path)
    losses = {}
    for dt in ("fp32", "bf16"):
        cfg = DPORoundConfig(max_steps=2, batch_size=2, learning_rate=5e-3, logging_steps=1,
                             lambda_kd=0.5, max_length=128, dtype=dt, save_steps=0)
        out = run_dpo_round(ckpt, pairs, TeacherInfo(texts={f"clip-{i}": TEACHER for i in range(4)}),
                            tmp_path / dt, cfg, JsonlLogger(tmp_path / f"{dt}.jsonl"))
        steps = [json.loads(x) for x in (tmp_path / f"{dt}.jsonl").read_text().splitlines()]
        losses[dt] = steps[0]["dpo/loss"]
        run_config = yaml.safe_load((out / "config.yaml").read_text())
        assert run_config["precision"]["precision.autocast"] == dt
        assert json.loads((tmp_path / "params.json").read_text())["precision.autocast"] == dt
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=1e-2)


def test_teacher_stage_in_bf16_measures_its_copy_rate(tmp_path, monkeypatch):
    """The teacher trained in bf16 autocast (fp32 master weights) generates its validation
    captions for the copy rate at every evaluation: this is where `make demo` broke on AMX."""
    from aligncap_core.train import stages
    from aligncap_core.train.config import TeacherConfig
    from aligncap_core.utils import read_jsonl, write_jsonl
    from tests.helpers.training import make_corpus, quick

    corpus = make_corpus(tmp_path / "corpus")
    # what `data clues` adds: the attributes the prompt states, which the copy rate scores
    rows = read_jsonl(corpus / "manifest.jsonl")
    write_jsonl(corpus / "manifest.jsonl", [{**r, "clue_attributes": r["attributes"]} for r in rows])
    monkeypatch.setenv(precision.ENV_OVERRIDE, "1")
    stages.train_teacher(corpus, tmp_path / "t", TeacherConfig(
        preset="micro", train=quick(max_steps=4, eval_every=2)), show_progress=False)
    params = json.loads((tmp_path / "t" / "params.json").read_text())
    assert params["precision.autocast"] == "bf16"
    rows = [json.loads(x) for x in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    rates = [r["valid/copy_rate"] for r in rows if "valid/copy_rate" in r]
    assert len(rates) == 2 and all(0.0 <= r <= 1.0 for r in rates), rows
