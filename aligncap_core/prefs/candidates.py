"""Sampling N candidate captions per clip from the current policy (preference round step 1).

    rows = sample_candidates(policy, tokenizer, [{"id": "clip-1", "prompt": prompt_text}], n=4)
    # [{"id": "clip-1", "candidates": ["A man speaks ...", ...],
    #   "sampling": {"n": 4, "temperature": 1.0, "top_p": 0.9, "seed": 0, ...}}]

A prompt is token ids (`prompt_ids`, exactly what the student reads) or text (`prompt`: the
instruction followed by the audio tokens as text, `student_prompt_text`); text is encoded as
bos + tokens, the same way `model.batching` builds the student prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from aligncap_core.errors import ConfigError
from aligncap_core.model.batching import AUDIO_CLOSE, AUDIO_OPEN, teacher_prompt_ids
from aligncap_core.model.checkpoint import AUDIO_TOKEN_RE
from aligncap_core.model.generate import GenerationSettings, generate_captions
from aligncap_core.train.threads import ThreadGovernor
from aligncap_core.utils import progress


def student_prompt_text(instruction: str, audio_tokens: Sequence[str]) -> str:
    """The student prompt as text: instruction + `<audio>` + tokens + `</audio>`.

    Audio tokens are added tokens, matched whole before BPE, so this text encodes to the same
    ids as `batching.student_prompt_ids` (no space before `<audio>`: a trailing space would
    become a token of its own)."""
    toks = list(audio_tokens)
    if not toks or toks[0] != AUDIO_OPEN:
        toks = [AUDIO_OPEN, *toks, AUDIO_CLOSE]
    return instruction + "".join(toks)


def normalize_caption(text: str) -> str:
    """Key for duplicate detection: lower case, whitespace collapsed."""
    return " ".join(text.lower().split())


def audio_token_ids_of(tokenizer: Any) -> list[int]:
    """Ids of every audio token the tokenizer holds (never generated inside a caption)."""
    return sorted(i for i, t in tokenizer.added_tokens_decoder.items()
                  if AUDIO_TOKEN_RE.fullmatch(t.content))


def encode_prompt(tokenizer: Any, row: dict) -> list[int]:
    """`row["prompt_ids"]` as given, else bos + tokens of `row["prompt"]`."""
    if row.get("prompt_ids") is not None:
        ids = [int(i) for i in row["prompt_ids"]]
    elif isinstance(row.get("prompt"), str):
        ids = teacher_prompt_ids(tokenizer, row["prompt"])  # bos + text ids: generic
    else:
        raise ConfigError(f"{row.get('id', '?')}: prompt row needs 'prompt_ids' or 'prompt' text")
    if not ids:
        raise ConfigError(f"{row.get('id', '?')}: empty prompt")
    return ids


def dedupe(texts: Sequence[str]) -> list[str]:
    """Drop repeats of the same caption up to case/whitespace; first occurrence wins, order kept."""
    seen: set[str] = set()
    out = []
    for t in texts:
        key = normalize_caption(t)
        if key not in seen:
            seen.add(key)
            out.append(t.strip())
    return out


def sample_candidates(model: Any, tokenizer: Any, prompts: Sequence[dict], n: int = 4,
                      temperature: float = 1.0, top_p: float = 0.9, max_new_tokens: int = 64,
                      batch_size: int = 16, seed: int = 0,
                      suppress_token_ids: Sequence[int] | None = None,
                      show_progress: bool = False) -> list[dict]:
    """Sample `n` captions per prompt; returns one row per prompt, in order:
    `{"id", "candidates": [unique captions], "sampling": {settings, n_unique, n_duplicates}}`.

    Reproducible: the same model, prompts, settings, `batch_size` and `seed` give the same
    candidates (each generation batch is seeded; the caller's RNG state is restored after).
    The n draws of one prompt are n rows of the same batch, decoded from one shared pass over
    the prompt (`GenerationSettings.num_return_sequences`: the ~200-token audio prompt is not
    re-run n times), so they differ by the sampling noise only. `batch_size` counts rows: a
    batch holds max(1, batch_size // n) clips x n samples. Duplicates (after case/whitespace
    normalisation) are dropped, so a clip may end up with fewer than n candidates; empty
    captions are kept (the judge scores them as failures, which makes them useful rejected
    examples).

    suppress_token_ids: default every audio token of the tokenizer (a caption is text).
    """
    if n < 1:
        raise ConfigError(f"sample_candidates: n must be >= 1, got {n}")
    ids_seen = [p.get("id") for p in prompts]
    if any(i is None for i in ids_seen) or len(set(ids_seen)) != len(ids_seen):
        raise ConfigError("sample_candidates: every prompt needs a unique 'id'")
    settings = GenerationSettings(max_new_tokens=max_new_tokens, do_sample=True,
                                  temperature=temperature, top_p=top_p, batch_size=batch_size,
                                  num_return_sequences=n)
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    clips_per_batch = max(1, batch_size // n)
    suppress = audio_token_ids_of(tokenizer) if suppress_token_ids is None else suppress_token_ids
    texts: list[str] = []
    # fork_rng: generation re-seeds torch per batch; the caller's RNG stream must not depend on
    # whether a sampling step ran in between
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    # CPU: adapt the intra-op threads to the machine's load between batches (train.threads);
    # sampled ids do not depend on it (same seeds, bit-identical matmuls)
    cpu = next(model.parameters()).device.type == "cpu"
    threads_before = torch.get_num_threads()
    governor = ThreadGovernor() if cpu else None
    with torch.random.fork_rng(devices=devices), progress(disable=not show_progress) as bar:
        task = bar.add_task("sample candidates", total=len(encoded) * n)
        for start in range(0, len(encoded), clips_per_batch):
            if governor:
                governor.update()
            chunk = encoded[start: start + clips_per_batch]
            # seed + first row: the seed generate_captions would use for this batch in one call
            texts += generate_captions(model, tokenizer, chunk, settings, suppress,
                                       generator_seed=seed + start * n)
            bar.update(task, advance=len(chunk) * n)
    if governor:
        torch.set_num_threads(threads_before)
    sampling = {"n": n, "temperature": temperature, "top_p": top_p,
                "max_new_tokens": max_new_tokens, "batch_size": batch_size, "seed": seed}
    out = []
    for k, p in enumerate(prompts):
        cands = dedupe(texts[k * n: (k + 1) * n])
        out.append({"id": p["id"], "candidates": cands,
                    "sampling": {**sampling, "n_unique": len(cands),
                                 "n_duplicates": n - len(cands)}})
    return out
