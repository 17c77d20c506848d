"""Base model, audio tokens, the LoRA student and the KD batch path on a micro Llama."""

from __future__ import annotations

import re

import pytest
import torch

from aligncap_core.errors import ConfigError
from aligncap_core.model.base import add_audio_tokens, load_base
from aligncap_core.model.batching import (
    KDCollator,
    encode_student_example,
    encode_teacher_example,
)
from aligncap_core.model.config import LoraSettings, ModelPreset, get_preset
from aligncap_core.model.lora import make_student, teacher_pass, trainable_parameter_names
from aligncap_core.model.losses import align_caption_logits, caption_ce_loss, kd_loss
from tests.helpers.models import audio_vocab, micro_base_dir, micro_model_with_audio

LORA = LoraSettings(r=4, alpha=8, dropout=0.0)


def test_presets_and_validation():
    assert get_preset("tiny").hidden_size == 256 and get_preset("tiny").num_layers == 4
    with pytest.raises(ConfigError):
        ModelPreset("bad", 60, 2, 7, 7, 100, 64, 512)
    with pytest.raises(ConfigError):
        get_preset("huge")
    with pytest.raises(ConfigError):
        LoraSettings(r=0)
    with pytest.raises(ConfigError):
        LoraSettings(dropout=1.0)


def test_tiny_base_loads_like_a_hub_model():
    model, tok = load_base(micro_base_dir())
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.vocab_size == len(tok) and model.config.hidden_size == 64
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    ids = tok("A woman speaks quickly.", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == "A woman speaks quickly."
    assert tok.unk_token_id is None or tok.unk_token_id not in ids  # byte-level: no <unk>
    with pytest.raises(ConfigError):
        load_base(micro_base_dir().parent / "missing")


def test_add_audio_tokens_one_id_per_token_and_idempotent():
    model, tok = load_base(micro_base_dir())
    n_old = len(tok)
    old_rows = model.get_input_embeddings().weight[:n_old].clone()
    vocab = audio_vocab()
    ids = add_audio_tokens(model, tok, vocab)
    assert ids == list(range(n_old, n_old + len(vocab)))
    assert model.get_input_embeddings().weight.shape[0] == len(tok) == n_old + len(vocab)
    text = "Describe it.<audio><a0_3><a1_15><a0_3></audio> A man speaks."
    toks = tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"])
    audio = [t for t in toks if re.fullmatch(r"<a\d+_\d+>|</?audio>", t)]
    assert audio == ["<audio>", "<a0_3>", "<a1_15>", "<a0_3>", "</audio>"]
    enc = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(enc, skip_special_tokens=True) == "Describe it. A man speaks."
    # old rows untouched; new rows near the old mean (not an outlier norm)
    w = model.get_input_embeddings().weight
    assert torch.equal(w[:n_old], old_rows)
    assert (w[n_old:].mean(0) - old_rows.mean(0)).norm() < 0.5 * old_rows.norm(dim=1).mean()
    assert add_audio_tokens(model, tok, vocab) == ids and len(tok) == n_old + len(vocab)


def _strip_peft(name: str) -> str:
    return name.replace(".token_adapter.base_layer", "").replace(".base_layer", "")


def test_student_trains_only_lora_and_new_rows():
    model, tok, audio_ids = micro_model_with_audio()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n_old = audio_ids[0]

    from peft import get_peft_model

    from aligncap_core.model.lora import lora_config

    # a frozen text "teacher" adapter next to the student: multiple adapters on one base
    peft_model = get_peft_model(model, lora_config(LoraSettings(r=2, alpha=4, dropout=0.0,
                                                                target_modules=("q_proj", "v_proj"))),
                                adapter_name="teacher")
    with torch.no_grad():  # make the teacher adapter non-trivial (LoRA B starts at 0)
        for n, p in peft_model.named_parameters():
            if "lora_B.teacher" in n:
                p.normal_(0, 0.5)
    student = make_student(peft_model, audio_ids, LORA)
    teacher_before = {n: p.clone() for n, p in student.named_parameters() if ".teacher" in n}
    names = trainable_parameter_names(student)
    assert names and all(".student" in n for n in names)
    assert any("trainable_tokens_delta" in n for n in names)

    emb = student.get_input_embeddings()
    rows_before = emb(torch.tensor(audio_ids)).detach().clone()

    # one real KD batch: teacher text vs student audio, same caption
    caption = "A man speaks slowly in a low voice."
    t_ex = encode_teacher_example(tok, "Kids are talking by the door. Describe how the speaker sounds.", caption)
    s_ex = encode_student_example(tok, "Describe how the speaker sounds.", ["<a0_1>", "<a1_2>", "<a0_3>"], caption)
    s_ex2 = encode_student_example(tok, "Describe.", ["<a0_4>"] * 7, caption)
    t_ex2 = encode_teacher_example(tok, "Dogs.", caption)
    batch = KDCollator(tok.pad_token_id)([{"teacher": t_ex, "student": s_ex},
                                          {"teacher": t_ex2, "student": s_ex2}])
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-2)
    torch.manual_seed(0)
    for _ in range(3):
        tb, sb = batch["teacher"], batch["student"]
        with teacher_pass(student, "teacher"):
            t_logits = student(input_ids=tb["input_ids"], attention_mask=tb["attention_mask"]).logits
        assert trainable_parameter_names(student) == names and student.active_adapter == "student"
        t_cap, t_mask = align_caption_logits(t_logits, tb["caption_start"], tb["caption_len"])
        del t_logits  # only the caption slice is kept: full teacher logits would peak memory
        s_logits = student(input_ids=sb["input_ids"], attention_mask=sb["attention_mask"]).logits
        s_cap, s_mask = align_caption_logits(s_logits, sb["caption_start"], sb["caption_len"])
        assert torch.equal(t_mask, s_mask)
        loss = caption_ce_loss(s_logits, sb["labels"]) + 0.5 * kd_loss(s_cap, t_cap, s_mask, 2.0)
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
        opt.zero_grad()

    # base weights (incl. the old embedding rows and the tied head) are bit-identical
    after = {_strip_peft(k): v for k, v in student.get_base_model().state_dict().items()
             if "lora_" not in k and "trainable_tokens" not in k}
    assert set(before) <= set(after)
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    # the frozen teacher adapter did not move; the student's LoRA and audio rows did
    for n, p in student.named_parameters():
        if n in teacher_before:
            assert torch.equal(p, teacher_before[n]), n
    assert any(not torch.equal(p, torch.zeros_like(p)) for n, p in student.named_parameters()
               if "lora_B.student" in n)
    rows_after = student.get_input_embeddings()(torch.tensor(audio_ids))
    assert not torch.equal(rows_after, rows_before)
    old_rows = student.get_input_embeddings()(torch.arange(n_old))
    assert torch.equal(old_rows, before["model.embed_tokens.weight"][:n_old])

    # disabling every adapter gives back the untouched base exactly
    x = batch["teacher"]["input_ids"][:1]
    with teacher_pass(student):
        base_logits = student(input_ids=x).logits
    ref, _ = load_base(micro_base_dir())
    ref.resize_token_embeddings(before["model.embed_tokens.weight"].shape[0], mean_resizing=False)
    ref.load_state_dict(before)
    assert torch.allclose(base_logits, ref(input_ids=x).logits, atol=1e-6)


def test_make_student_on_plain_model_and_bad_ids():
    model, tok, audio_ids = micro_model_with_audio()
    with pytest.raises(ConfigError):
        make_student(model, [10_000], LORA)
    student = make_student(model, audio_ids, LORA)
    n_lora = sum(1 for n in trainable_parameter_names(student) if "lora_" in n)
    assert n_lora == 2 * 7 * 2  # A and B x 7 projections x 2 layers
    with pytest.raises(ConfigError):
        make_student(student, audio_ids, LORA)  # "student" exists already


def test_batching_labels_and_caption_positions():
    _, tok, _ = micro_model_with_audio()
    cap = "She whispers softly."
    cap_ids = tok(cap, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    t = encode_teacher_example(tok, "Kids are talking.", cap)
    s = encode_student_example(tok, "Describe.", ["<a0_1>", "<a1_1>"], cap)
    for e in (t, s):
        assert e.input_ids[0] == tok.bos_token_id
        assert e.input_ids[e.caption_start:] == cap_ids and e.caption_len == len(cap_ids)
        assert e.labels[: e.caption_start] == [-100] * e.caption_start
        assert e.labels[e.caption_start:] == cap_ids
    assert tok.convert_ids_to_tokens(s.input_ids[s.caption_start - 4: s.caption_start]) == [
        "<audio>", "<a0_1>", "<a1_1>", "</audio>"]
    b = KDCollator(tok.pad_token_id)([{"teacher": t, "student": s}] * 2)
    sb = b["student"]
    assert sb["input_ids"].shape == sb["labels"].shape == sb["attention_mask"].shape
    assert sb["caption_start"].tolist() == [s.caption_start] * 2
    # a text prompt is cut to fit (bos and the whole caption kept) and the cut is counted;
    # a speech prompt is never cut (model.batching.encode_student_windows splits it instead)
    long_t = encode_teacher_example(tok, "Kids are talking by the door. " * 8, cap, max_len=20)
    assert len(long_t.input_ids) == 20 and long_t.input_ids[0] == tok.bos_token_id
    assert long_t.input_ids[long_t.caption_start:] == cap_ids and long_t.cut > 0 and t.cut == 0
    with pytest.raises(ConfigError, match="windows"):
        encode_student_example(tok, "Describe.", ["<a0_2>"] * 50, cap, max_len=20)
    with pytest.raises(ConfigError):
        encode_student_example(tok, "Describe.", ["<a9_999>"], cap)
    with pytest.raises(ConfigError):
        KDCollator(tok.pad_token_id)([{"teacher": t, "student": encode_student_example(
            tok, "x", ["<a0_1>"], "Another caption.")}])


def test_uniform_dropout_has_dropout_s_distribution_and_make_student_installs_it():
    from aligncap_core.model.lora import UniformDropout

    d = UniformDropout(0.2)
    x = torch.ones(200_000, requires_grad=True)
    torch.manual_seed(0)
    y = d(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.8) < 0.005  # 4.5 sigma at n = 200k
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.8))
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())  # d y / d x = mask / (1 - p)
    torch.manual_seed(0)
    assert torch.equal(d(x), y)  # seeded: the same mask again
    d.eval()
    assert d(x) is x
    assert isinstance(d, torch.nn.Dropout)  # TRL's disable_dropout sets .p on nn.Dropout modules

    model, _, ids = micro_model_with_audio()
    student = make_student(model, ids, LoraSettings(r=4, alpha=8, dropout=0.1))
    drops = [m.lora_dropout["student"] for m in student.modules()
             if isinstance(getattr(m, "lora_dropout", None), torch.nn.ModuleDict)]
    assert drops and all(type(m) is UniformDropout and m.p == 0.1 for m in drops)
