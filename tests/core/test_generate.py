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
from tests.helpers.models import micro_model_with_audio


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


# --- several samples per prompt from one prompt pass (num_return_sequences) ---

def _shared(n: int, **kw) -> GenerationSettings:
    return GenerationSettings(num_return_sequences=n, **kw)


def _count_prompt_rows(model):
    """(rows list, hook handle): the batch size of every multi-token (prompt) forward."""
    rows: list[int] = []
    emb = model.get_input_embeddings()
    handle = emb.register_forward_pre_hook(
        lambda _m, args: rows.append(args[0].shape[0]) if args[0].shape[1] > 1 else None)
    return rows, handle


def _hf_greedy(model, tok, prompts, max_new_tokens, suppress=(), min_new_tokens=1):
    """transformers' own greedy `generate` (the reference this module's loop must equal)."""
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    ids, attn = left_pad(prompts, pad)
    with torch.no_grad():
        gen = model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=max_new_tokens,
                             min_new_tokens=min_new_tokens, do_sample=False, num_beams=1,
                             eos_token_id=eos, pad_token_id=pad, temperature=None, top_p=None,
                             top_k=None, suppress_tokens=sorted(suppress) or None)
    rows = gen[:, ids.shape[1]:].tolist()
    return [r[: r.index(eos)] if eos in r else r for r in rows]


def test_greedy_equals_transformers_generate(mtk):
    """Greedy decoding (this module's static-cache loop) gives transformers' generate ids, for
    left-padded prompts of different lengths, batched or not, eos masked before min_new_tokens."""
    model, tok, audio_ids, prompts = mtk
    for bs in (8, 1):
        out = generate_token_ids(model, tok, prompts, GenerationSettings(max_new_tokens=12, batch_size=bs),
                                 suppress_token_ids=audio_ids)
        assert out == _hf_greedy(model, tok, prompts, 12, audio_ids)
    out = generate_token_ids(model, tok, prompts, GenerationSettings(max_new_tokens=12, min_new_tokens=5),
                             suppress_token_ids=audio_ids)
    assert out == _hf_greedy(model, tok, prompts, 12, audio_ids, min_new_tokens=5)
    assert model.training is False


def test_shared_prefix_greedy_equals_generate(mtk):
    """Greedy through the shared-prefix loop == HF generate, for left-padded prompts of
    different lengths, however the prompts are split into forwards; near-zero temperature
    sampling (top-p on) gives the same ids."""
    model, tok, audio_ids, prompts = mtk
    assert len({len(p) for p in prompts}) == len(prompts)  # every row padded differently
    ref = _hf_greedy(model, tok, prompts, 12, audio_ids)
    for n, bs in ((2, 8), (3, 4), (2, 1)):  # 4, 1 and 1 prompts per forward
        out = generate_token_ids(model, tok, prompts, _shared(n, max_new_tokens=12, batch_size=bs),
                                 suppress_token_ids=audio_ids)
        assert out == [r for r in ref for _ in range(n)]
    cold = _shared(3, max_new_tokens=12, do_sample=True, temperature=1e-4, top_p=0.9)
    assert generate_token_ids(model, tok, prompts, cold, audio_ids, generator_seed=5) == \
        [r for r in ref for _ in range(3)]


def test_shared_prefix_peft_student_equals_generate():
    """The LoRA student (a PeftModel with trainable audio rows) is called the same way."""
    from tests.helpers.models import perturbed_student

    student, tok = perturbed_student(seed=1, scale=0.5)
    prompts = [student_prompt_ids(tok, "Describe.", ["<a0_1>", "<a1_5>"] * 6),
               student_prompt_ids(tok, "Describe how the speaker sounds.", ["<a0_7>", "<a1_2>"])]
    ref = _hf_greedy(student, tok, prompts, 8)
    out = generate_token_ids(student, tok, prompts, _shared(2, max_new_tokens=8))
    assert out == [r for r in ref for _ in range(2)]


def test_shared_prefix_eos_and_min_new_tokens(mtk):
    """eos ends a row (excluded, the row cut there; the others go on) and is masked before
    min_new_tokens, exactly as generate does: eos here is the id greedy decoding of prompt 0
    produces first, so that row is empty with min_new_tokens=0."""
    from types import SimpleNamespace

    model, tok, audio_ids, prompts = mtk
    first = generate_token_ids(model, tok, prompts[:1], GenerationSettings(max_new_tokens=4),
                               suppress_token_ids=audio_ids)[0]
    fake = SimpleNamespace(eos_token_id=first[0], pad_token_id=tok.pad_token_id)
    for m in (0, 1, 3):
        ref = _hf_greedy(model, fake, prompts, 10, audio_ids, min_new_tokens=m)
        assert generate_token_ids(model, fake, prompts,
                                  GenerationSettings(max_new_tokens=10, min_new_tokens=m),
                                  suppress_token_ids=audio_ids) == ref
        out = generate_token_ids(model, fake, prompts,
                                 _shared(2, max_new_tokens=10, min_new_tokens=m, batch_size=8),
                                 suppress_token_ids=audio_ids)
        assert out == [r for r in ref for _ in range(2)]
        assert all(len(r) >= m and fake.eos_token_id not in r for r in out)
        if m == 0:
            assert out[0] == [] and out[1] == []
    # eos suppressed: every row runs to max_new_tokens
    full = generate_token_ids(model, tok, prompts, _shared(2, max_new_tokens=7, do_sample=True),
                              [*audio_ids, tok.eos_token_id], generator_seed=0)
    assert [len(r) for r in full] == [7] * 8


def test_shared_prefix_sampling(mtk):
    model, tok, audio_ids, prompts = mtk
    s = _shared(3, max_new_tokens=10, do_sample=True, temperature=1.5, top_p=0.9, batch_size=6)
    state = torch.get_rng_state()
    rows, handle = _count_prompt_rows(model)
    try:
        a = generate_token_ids(model, tok, prompts, s, audio_ids, generator_seed=7)
    finally:
        handle.remove()
    assert rows == [2, 2]  # each prompt prefilled once: 6 rows per forward = 2 prompts x 3
    assert torch.equal(state, torch.get_rng_state())  # own generator: the global RNG untouched
    assert len(a) == 3 * len(prompts)
    assert a == generate_token_ids(model, tok, prompts, s, audio_ids, generator_seed=7)
    assert a != generate_token_ids(model, tok, prompts, s, audio_ids, generator_seed=8)
    banned = set(audio_ids) | {tok.eos_token_id}
    assert all(len(r) <= 10 and not banned & set(r) for r in a)
    # the 3 samples of a prompt differ by the sampling noise (hot sampling, 10 tokens)
    assert all(len({tuple(r) for r in a[k: k + 3]}) > 1 for k in range(0, len(a), 3))
    texts = generate_captions(model, tok, prompts, s, audio_ids, generator_seed=7)
    assert texts == [tok.decode(r, skip_special_tokens=True).strip() for r in a]
    assert model.training is False


def test_top_p_sampler_matches_nucleus_distribution():
    """The inverse-CDF sampler draws from the distribution transformers' TopPLogitsWarper
    keeps (renormalised), never a removed or a -inf token."""
    from transformers.generation.logits_process import TopPLogitsWarper

    from aligncap_core.model.generate import _sample_top_p

    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, float("-inf"), 1.5, -3.0]])
    for top_p in (0.5, 0.8, 0.97):
        want = TopPLogitsWarper(top_p)(torch.zeros(1, 1, dtype=torch.long), logits.clone())
        want = want.softmax(-1)[0]
        g = torch.Generator().manual_seed(0)
        draws = _sample_top_p(logits.expand(40000, -1), top_p, g)
        freq = torch.bincount(draws, minlength=logits.shape[1]).float() / len(draws)
        assert torch.all(freq[want == 0] == 0)
        assert torch.allclose(freq, want, atol=0.01), (top_p, freq, want)


def test_shared_prefix_settings_validation():
    with pytest.raises(ConfigError):
        GenerationSettings(num_return_sequences=0)
    with pytest.raises(ConfigError):
        GenerationSettings(num_return_sequences=2, num_beams=2)


def test_bf16_generation_keeps_the_last_logits_by_index_and_decodes_alike(mtk):
    """A bf16 model prefills with `logits_to_keep` as an index (last_logits_only: no weight
    copy in the head's matmul): its last-position logits are those of the full forward, and
    greedy through HF generate, the shared-prefix loop and one prompt at a time agree."""
    import copy

    from aligncap_core.model.generate import last_logits_only

    model, tok, audio_ids, prompts = mtk
    assert last_logits_only(model) == 1  # fp32: unchanged
    m16 = copy.deepcopy(model).to(torch.bfloat16)
    keep = last_logits_only(m16)
    assert isinstance(keep, torch.Tensor) and keep.tolist() == [-1]
    ids, attn = left_pad(prompts, tok.pad_token_id)
    with torch.no_grad():
        full = m16(input_ids=ids, attention_mask=attn).logits[:, -1:]
        last = m16(input_ids=ids, attention_mask=attn, logits_to_keep=keep).logits
    assert last.shape == full.shape and torch.equal(last, full)
    s = GenerationSettings(max_new_tokens=10, batch_size=8)
    ref = generate_token_ids(m16, tok, prompts, s, suppress_token_ids=audio_ids)
    assert ref == [generate_token_ids(m16, tok, [p], s, suppress_token_ids=audio_ids)[0] for p in prompts]
    assert generate_token_ids(m16, tok, prompts, _shared(2, max_new_tokens=10),
                              suppress_token_ids=audio_ids) == [r for r in ref for _ in range(2)]


def test_fp32_model_generates_inside_a_bf16_autocast_region(mtk):
    """The teacher's copy-rate captions are generated inside its bf16 training run (autocast on,
    weights fp32). RoPE makes the keys fp32 and the values stay bf16, which a static KV cache
    cannot hold: `make demo` on an AMX CPU failed in the teacher's first validation. Generation
    runs in the weights' dtype instead, so the captions are the fp32 ones, in every path."""
    model, tok, audio_ids, prompts = mtk
    greedy = GenerationSettings(max_new_tokens=10, batch_size=8)
    for s in (greedy, _shared(2, max_new_tokens=10)):
        ref = generate_token_ids(model, tok, prompts, s, suppress_token_ids=audio_ids)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = generate_token_ids(model, tok, prompts, s, suppress_token_ids=audio_ids)
            assert torch.is_autocast_enabled("cpu")  # the caller's region is left as it was
        assert got == ref


def test_no_repeat_ngram_size_blocks_a_captions_own_repeats(mtk):
    """The n-gram rule of the step-4 re-decoding (`no_repeat_ngram_size`, over the generated
    tokens: the prompt's audio tokens are not caption text): no output repeats one of its own
    n-grams; each equals plain greedy up to where greedy first repeats one (the rule changes
    nothing before), batched or not; plain greedy on this model does repeat (bigrams, 48
    tokens)."""
    model, tok, audio_ids, prompts = mtk
    n = 2

    def first_repeat(r):
        seen = set()
        for i in range(len(r) - n + 1):
            if tuple(r[i:i + n]) in seen:
                return i + n - 1  # the token that completes the repeat
            seen.add(tuple(r[i:i + n]))
        return None

    s = GenerationSettings(max_new_tokens=48, batch_size=8, no_repeat_ngram_size=n)
    out = generate_token_ids(model, tok, prompts, s, suppress_token_ids=audio_ids)
    assert out == [generate_token_ids(model, tok, [p], s, suppress_token_ids=audio_ids)[0] for p in prompts]
    plain = generate_token_ids(model, tok, prompts, GenerationSettings(max_new_tokens=48),
                               suppress_token_ids=audio_ids)
    assert sum(first_repeat(r) is not None for r in plain) >= 2  # the rule has something to do
    for r, g in zip(out, plain, strict=True):
        assert first_repeat(r) is None
        k = first_repeat(g)
        assert r[:k] == g[:k] if k is not None else r == g
        assert k is None or r[k] != g[k]
    with pytest.raises(ConfigError, match="no_repeat_ngram_size"):
        GenerationSettings(no_repeat_ngram_size=-1)
    with pytest.raises(ConfigError, match="not beam search"):
        GenerationSettings(no_repeat_ngram_size=3, num_beams=2)
