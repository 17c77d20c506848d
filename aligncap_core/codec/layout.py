"""Codes -> LLM tokens: `<audio> <a0_12> <a1_907> <a0_55> <a1_3> ... </audio>`.

Frame-major (all codebooks of frame 0, then frame 1, ...) so a causal LM reads each 13.3 ms frame
coarse-to-fine before the next one, as in VALL-E-style flattened RVQ layouts. One token per
(codebook, code) pair: the same code index means different things in different codebooks.
"""

from __future__ import annotations

import re

import numpy as np

AUDIO_START = "<audio>"
AUDIO_END = "</audio>"
_TOKEN = re.compile(r"<a(\d+)_(\d+)>")


def audio_token(q: int, code: int) -> str:
    return f"<a{q}_{code}>"


def codes_to_tokens(codes: np.ndarray, keep_q: int | None = None) -> list[str]:
    """codes `(n_q, T)` ints -> `[<audio>, <a0_c>, <a1_c>, ... (T * keep_q tokens), </audio>]`.

    keep_q: keep only the first keep_q codebooks (coarsest first; fewer tokens for small models).
    None keeps all; a value above n_q is an error rather than a silent truncation.
    """
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be (n_q, T), got shape {codes.shape}")
    n_q = codes.shape[0]
    if keep_q is not None:
        if not 1 <= keep_q <= n_q:
            raise ValueError(f"keep_q={keep_q} but codes have {n_q} codebooks")
        codes = codes[:keep_q]
    out = [AUDIO_START]
    for frame in codes.T.tolist():  # (T, q): frame-major
        out.extend(f"<a{q}_{c}>" for q, c in enumerate(frame))
    out.append(AUDIO_END)
    return out


def tokens_to_codes(tokens: list[str]) -> np.ndarray:
    """Inverse of `codes_to_tokens` -> `(n_q, T)` int64; markers and other tokens are ignored."""
    pairs = [(int(m[1]), int(m[2])) for t in tokens if (m := _TOKEN.fullmatch(t))]
    if not pairs:
        return np.zeros((0, 0), dtype=np.int64)
    n_q = max(q for q, _ in pairs) + 1
    if len(pairs) % n_q:
        raise ValueError(f"{len(pairs)} audio tokens is not a whole number of {n_q}-codebook frames")
    return np.array([c for _, c in pairs], dtype=np.int64).reshape(-1, n_q).T


def audio_token_vocab(n_q: int, codebook_size: int = 1024) -> list[str]:
    """The tokens to add to an LLM tokenizer: markers, then `<a{q}_{code}>` for every q, code."""
    return [AUDIO_START, AUDIO_END] + [audio_token(q, c) for q in range(n_q) for c in range(codebook_size)]
