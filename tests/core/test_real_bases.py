"""Every stage on bases built like real hub models, not like the `tiny` preset (issue #22):

- `micro-qwen2`: Qwen2ForCausalLM, untied output layer, biased q/k/v, a tokenizer with neither
  bos nor pad (pad falls back to eos);
- `micro-llama-chat`: Llama 3 conventions: a chat template, bos added by the tokenizer's own
  post-processor, no pad token.

Both are built locally (`build_tiny_base`, no hub) and passed as `base:` (a save_pretrained
folder, as a downloaded model would be), so they take the hub path: a LoRA "teacher" adapter,
the KD student beside it, a DPO round with the KD term on the teacher adapter, then captioning
real audio through the checkpoint's codec.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from aligncap_core.model.config import LoraSettings
from aligncap_core.train import stages
from aligncap_core.train.config import DEFAULT_INSTRUCTION, StudentConfig, TeacherConfig
from aligncap_core.utils import read_jsonl
from tests.helpers.training import quick

LORA = LoraSettings(r=4, alpha=8, dropout=0.0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The inference tests' prepared corpus: tones tokenized by a tiny calibrated codec."""
    from tests.helpers.audio_corpus import coded_corpus

    return coded_corpus(tmp_path_factory.mktemp("real-bases") / "data")


def _train_cfg(**kw):
    return quick(**{"max_steps": 4, "eval_every": 2, "log_every": 1, **kw})


@pytest.fixture(scope="module", params=["micro-qwen2", "micro-llama-chat"])
def base(request, corpus, tmp_path_factory) -> tuple[str, Path]:
    from aligncap_core.model.base import build_tiny_base
    from aligncap_core.train.data import corpus_texts

    texts = corpus_texts([r for r in read_jsonl(corpus / "manifest.jsonl")], DEFAULT_INSTRUCTION)
    out = tmp_path_factory.mktemp(request.param) / "base"
    return request.param, build_tiny_base(request.param, texts, out, seed=0)


def _losses(run: Path) -> list[float]:
    return [json.loads(x)["train/loss"] for x in (run / "metrics.jsonl").read_text().splitlines()
            if "train/loss" in x]


def test_every_stage_on_a_real_architecture(base, corpus, tmp_path):
    from transformers import AutoTokenizer

    from aligncap_core.codec import codes_to_tokens, load_codes
    from aligncap_core.inference.captioner import Captioner
    from aligncap_core.model.batching import student_prompt_ids
    from aligncap_core.model.checkpoint import load_checkpoint
    from aligncap_core.prefs.candidates import student_prompt_text
    from aligncap_core.prefs.dpo import DPORoundConfig, run_dpo_round
    from aligncap_core.prefs.dpo_data import TeacherInfo
    from aligncap_core.prefs.pairs import write_pairs
    from aligncap_core.train.data import teacher_text

    name, base_dir = base
    # ---- teacher: a LoRA adapter on the (hub-style) base
    teacher = stages.train_teacher(corpus, tmp_path / "t", TeacherConfig(
        base=str(base_dir), lora=LORA, train=_train_cfg(lr=1e-2)), show_progress=False)
    tmeta = json.loads((teacher / "meta.json").read_text())
    assert (tmeta["kind"], tmeta["adapters"]) == ("adapter", ["teacher"])
    t_losses = _losses(tmp_path / "t")
    assert all(np.isfinite(t_losses)) and t_losses[-1] < t_losses[0], t_losses

    # ---- student: KD from the teacher adapter
    student = stages.train_student(corpus, teacher, tmp_path / "s", StudentConfig(
        lora=LORA, train=_train_cfg(lr=1e-2)), show_progress=False)
    smeta = json.loads((student / "meta.json").read_text())
    assert sorted(smeta["adapters"]) == ["student", "teacher"] and "valid/kl" in smeta["metrics"]
    s_losses = _losses(tmp_path / "s")
    assert all(np.isfinite(s_losses)) and s_losses[-1] < s_losses[0], s_losses
    from safetensors.torch import load_file

    rows = load_file(str(student / "audio_rows.safetensors"))
    # an untied output layer has its own audio rows, saved beside the input ones
    assert ("output" in rows) == (name == "micro-qwen2")

    tok = AutoTokenizer.from_pretrained(student / "tokenizer")
    assert tok.chat_template, "the base's chat template travels with the checkpoint"
    row = next(r for r in read_jsonl(corpus / "manifest.jsonl") if r["split"] == "train")
    audio = codes_to_tokens(load_codes(corpus, row))
    ids = student_prompt_ids(tok, DEFAULT_INSTRUCTION, audio)
    chat = {t for t in tok.all_special_tokens if "start" in t or "header" in t or "eot" in t}
    assert not set(tok.convert_ids_to_tokens(ids)) & chat  # plain prompts, for every base
    if tok.bos_token is None:  # Qwen2: no bos at all
        assert tok.convert_ids_to_tokens(ids[:1]) != [tok.eos_token]
    else:  # Llama 3's tokenizer adds bos itself: the prompt still holds exactly one
        assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
    assert tok.pad_token_id == tok.eos_token_id  # no pad token: pads with eos, masked out

    # ---- one DPO round (+ KD through the teacher adapter)
    clips = [r for r in read_jsonl(corpus / "manifest.jsonl") if r["split"] == "train"][:4]
    pairs = [{"id": r["id"], "prompt": student_prompt_text(DEFAULT_INSTRUCTION,
                                                           codes_to_tokens(load_codes(corpus, r))),
              "chosen": r["captions"][0], "rejected": "A person is speaking.",
              "teacher_text": teacher_text(r, True), "chosen_score": 9.0, "rejected_score": 3.0,
              "margin": 6.0, "provenance": {"round": 1, "policy": str(student), "judge": "rubric",
                                            "strategy": "golden_vs_sample"}} for r in clips]
    pairs_path = write_pairs(tmp_path / "pairs.jsonl", pairs)
    policy = run_dpo_round(student, pairs_path, TeacherInfo(adapter="teacher"), tmp_path / "round-1",
                           DPORoundConfig(max_steps=2, batch_size=2, learning_rate=5e-3,
                                          logging_steps=1, max_length=256, save_steps=0))
    pmeta = json.loads((policy / "meta.json").read_text())
    assert (pmeta["stage"], pmeta["round"], pmeta["step"]) == ("dpo", 1, 2)
    assert np.isfinite(pmeta["metrics"]["loss"]) and pmeta["metrics"]["kd_loss"] >= 0
    before, after = (load_checkpoint(p)[0].state_dict() for p in (student, policy))
    moved = [k for k in after if ".student" in k and not torch.equal(before[k], after[k])]
    assert moved and all(("lora_" in k or "trainable_tokens" in k) for k in moved)

    # ---- captioning audio files through the student's codec
    from aligncap_core.inference.speech import attach_codec, find_codec

    attach_codec(policy, find_codec(corpus), instruction=DEFAULT_INSTRUCTION, keep_q=None)
    cap = Captioner.load(policy, device="cpu")
    wav = tmp_path / "clip.wav"
    sf.write(wav, 0.3 * np.sin(2 * np.pi * 220 * np.arange(9600) / 24000).astype(np.float32), 24000)
    (caption,) = cap.caption_files([wav])
    assert isinstance(caption, str)
    assert not any(t in caption for t in ("<a0_", "<audio>", "<|"))  # never speech or chat tokens
