"""Shared micro-model builders for the model-core tests (built once per test process)."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

CORPUS = [
    "A woman speaks quickly in a high, trembling voice, sounding excited.",
    "A man speaks slowly in a low, heavy voice, sounding sad.",
    "The speaker sounds calm and talks at a normal pace.",
    "Kids are talking by the door.",
    "Dogs are sitting by the door.",
    "Emotional clues: pitch high; speed fast; tone trembling, excited. Describe how the speaker sounds.",
    "Describe how the speaker sounds.",
    "A loud, angry male voice shouts fast.",
    "She whispers softly, sounding fearful.",
] * 4


def audio_vocab(n_q: int = 2, codebook_size: int = 16) -> list[str]:
    """Local stand-in for codec.audio_token_vocab (small codebooks keep the tests fast)."""
    return ["<audio>", "</audio>"] + [f"<a{q}_{c}>" for q in range(n_q) for c in range(codebook_size)]


@functools.lru_cache(maxsize=1)
def micro_base_dir() -> Path:
    from aligncap_core.model.base import build_tiny_base

    root = Path(tempfile.mkdtemp(prefix="aligncap-micro-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)  # no folder left per test process
    out = root / "base"
    return build_tiny_base("micro", CORPUS, out, seed=0)


def micro_model_with_audio():
    """(model, tokenizer, audio_ids) on a fresh copy of the micro base, fp32."""
    import torch

    from aligncap_core.model.base import add_audio_tokens, load_base

    model, tok = load_base(micro_base_dir(), dtype=torch.float32)
    torch.manual_seed(1)
    ids = add_audio_tokens(model, tok, audio_vocab())
    return model, tok, ids


def perturbed_student(seed: int = 0, scale: float = 0.05):
    """(student, tokenizer): a LoRA student on the micro base whose trainable weights are
    nudged off their init, so the policy differs from the base without any training."""
    import torch

    from aligncap_core.model.config import LoraSettings
    from aligncap_core.model.lora import make_student

    model, tok, ids = micro_model_with_audio()
    student = make_student(model, ids, LoraSettings(r=4, alpha=8, dropout=0.0))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in student.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=gen))
    return student, tok
