"""Batched caption generation on a micro Llama (random init, fp32)."""

from __future__ import annotations

import pytest
import torch

from aligncap_core.errors import ConfigError
from aligncap_core.model.batching import student_prompt_ids, teacher_prompt_ids
from aligncap_core.model.generate import (
    GenerationSettings,
    generate_captions,
    generate_token_ids,
    left_pad,
)
from tests.core.model_helpers import micro_model_with_audio


@pytest.fixture(scope="module")
def mtk():
    model, tok, audio_ids = micro_model_with_audio()
    torch.manual_seed(3)
    with torch.no_grad():  # a sharper random model: greedy paths differ between prompts
        for p in model.parameters():
            p.mul_(4.0)
    model.eval()
    prompts = [
        teacher_prompt_ids(tok, "Kids are talking by the door. Describe how the speaker sounds."),
        student_prompt_ids(tok, "Describe.", ["<a0_1>", "<a1_5>"] * 6),
        teacher_prompt_ids(tok, "Dogs."),
        student_prompt_ids(tok, "Describe how the speaker sounds.", ["<a0_7>"]),
    ]
    return model, tok, audio_ids, prompts


def test_batched_greedy_equals_one_at_a_time(mtk):
    model, tok, audio_ids, prompts = mtk
    s = GenerationSettings(max_new_tokens=12, batch_size=8)
    batched = generate_token_ids(model, tok, prompts, s, suppress_token_ids=audio_ids)
    single = [generate_token_ids(model, tok, [p], s, suppress_token_ids=audio_ids)[0] for p in prompts]
    assert batched == single
    assert any(len(r) > 0 for r in batched)
    assert len({tuple(r) for r in batched}) > 1  # not a degenerate constant output
    assert not any(i in set(audio_ids) for r in batched for i in r)
    assert all(tok.eos_token_id not in r for r in batched)
    # the same through the batch-size loop
    assert generate_token_ids(model, tok, prompts, GenerationSettings(max_new_tokens=12, batch_size=3),
                              suppress_token_ids=audio_ids) == batched


def test_beam_and_sampling(mtk):
    model, tok, audio_ids, prompts = mtk
    beams = generate_captions(model, tok, prompts, GenerationSettings(max_new_tokens=8, num_beams=3))
    assert len(beams) == len(prompts) and all(isinstance(c, str) for c in beams)
    samp = GenerationSettings(max_new_tokens=8, do_sample=True, temperature=1.5, top_p=0.9)
    a = generate_captions(model, tok, prompts, samp, audio_ids, generator_seed=7)
    b = generate_captions(model, tok, prompts, samp, audio_ids, generator_seed=7)
    assert a == b
    assert all("<a" not in c and "<audio>" not in c for c in a)
    assert model.training is False


def test_left_pad_and_settings_validation():
    ids, attn = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and attn.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ConfigError):
        GenerationSettings(do_sample=True, num_beams=2)
    with pytest.raises(ConfigError):
        GenerationSettings(top_p=0)
    with pytest.raises(ConfigError):
        GenerationSettings(max_new_tokens=0)
