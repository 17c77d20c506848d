"""The base causal LM: a tiny Llama (or Qwen2) built from a preset, or any Hugging Face causal LM.

Both are saved/loaded with `save_pretrained` / `from_pretrained`, so every later stage treats
the from-scratch model exactly like a hub model.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from aligncap_core.errors import ConfigError
from aligncap_core.model.config import TOKENIZER_STYLES, ModelPreset, get_preset
from aligncap_core.utils import atomic_dir, fingerprint

BASE_INFO = "aligncap_base.json"  # provenance of a from-scratch base (preset, seed, corpus)


def train_tokenizer(corpus_texts: Iterable[str], vocab_size: int, style: str = "plain") -> Any:
    """Train a byte-level BPE tokenizer on `corpus_texts` -> `PreTrainedTokenizerFast`.

    Byte-level: any text (names, numbers, other languages in a user's manifest) encodes
    without <unk>. Special tokens get the first ids (`model.config.TOKENIZER_STYLES[style]`;
    "plain": pad, bos, eos). A "plain" tokenizer adds no special tokens by itself; `batching`
    places bos/eos explicitly, the same way for every tokenizer (also one, like Llama 3's, that
    adds bos itself).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    st = TOKENIZER_STYLES[style]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,  # a merge seen once is noise on a small corpus
        special_tokens=list(st.special),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((t for t in corpus_texts if t), trainer=trainer)
    if st.add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{st.bos} $A", pair=f"{st.bos} $A {st.bos} $B",
            special_tokens=[(st.bos, tok.token_to_id(st.bos))])
    out = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=st.bos, eos_token=st.eos, pad_token=st.pad,
        additional_special_tokens=[t for t in st.special if t not in (st.bos, st.eos, st.pad)],
        clean_up_tokenization_spaces=False,
    )
    if st.chat_template:
        out.chat_template = st.chat_template
    return out


def build_tiny_base(preset: ModelPreset | str, corpus_texts: Sequence[str],
                    out_dir: str | Path, seed: int = 0) -> Path:
    """Train a tokenizer on `corpus_texts`, build a randomly initialised model, save both.

    corpus_texts: transcripts, captions and prompt texts (everything the LM will read or write).
    Returns `out_dir`, loadable with `load_base(out_dir)`. Written atomically. Same preset,
    texts and seed give the same weights.
    """
    from transformers import AutoModelForCausalLM

    preset = get_preset(preset) if isinstance(preset, str) else preset
    texts = [t for t in corpus_texts if t and t.strip()]
    if not texts:
        raise ConfigError("build_tiny_base: corpus_texts is empty; pass transcripts and captions")
    tokenizer = train_tokenizer(texts, preset.tokenizer_vocab_size, preset.tokenizer_style)
    cfg = preset.hf_config(
        len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        info = {"preset": preset.to_dict(), "seed": seed, "corpus_fingerprint": fingerprint(texts),
                "n_texts": len(texts), "vocab_size": len(tokenizer)}
        (tmp / BASE_INFO).write_text(json.dumps(info, indent=2))
    return Path(out_dir)


def _as_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    d = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(d, torch.dtype):
        raise ConfigError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
    return d


def load_base(model_id_or_path: str | Path, dtype: torch.dtype | str | None = None,
              device: str | torch.device | None = None) -> tuple[Any, Any]:
    """Load `(model, tokenizer)` for any causal LM: a hub id (on a machine that has it) or a
    local directory written by `save_pretrained` (e.g. `build_tiny_base`).

    A tokenizer without a pad token (Llama, Mistral) gets pad = eos: padding is always masked
    out of attention and labels, so the id it reuses never matters.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = str(model_id_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(src)
        model = AutoModelForCausalLM.from_pretrained(src, dtype=_as_dtype(dtype))
    except OSError as e:
        raise ConfigError(
            f"cannot load base model {src!r}: not a local model directory and not available "
            f"from the Hugging Face cache/hub on this machine ({e})"
        ) from e
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if device is not None:
        model.to(device)
    return model, tokenizer


def add_audio_tokens(model: Any, tokenizer: Any, audio_tokens: Sequence[str]) -> list[int]:
    """Add the audio tokens (`<audio>`, `</audio>`, every `<a{q}_{code}>`) to `tokenizer` and
    grow `model`'s embeddings; return the ids of `audio_tokens` in the given order.

    The tokens are *added tokens*: matched whole before BPE, so a string of audio tokens
    encodes to exactly one id per token (checked here). They are special, so
    `decode(skip_special_tokens=True)` drops them from generated captions.

    New rows are mean-initialised (transformers' `mean_resizing`: sampled around the mean of the
    existing rows with their covariance; Hewitt 2021). A random row can have a much larger norm
    than trained rows; tied to the output layer it would then grab probability mass from every
    text token, so the untrained model would start by emitting audio tokens and the KD term
    would begin far from the teacher. Mean rows leave the text distribution almost unchanged.

    Idempotent: tokens already in the vocabulary (a checkpoint's tokenizer) are not re-added.
    """
    from tokenizers import AddedToken

    if not audio_tokens:
        raise ConfigError("add_audio_tokens: audio_tokens is empty")
    vocab = tokenizer.get_vocab()
    missing = [t for t in dict.fromkeys(audio_tokens) if t not in vocab]
    if missing:
        tokenizer.add_tokens(
            [AddedToken(t, special=True, normalized=False, single_word=False, lstrip=False,
                        rstrip=False) for t in missing],
            special_tokens=True,
        )
    ids = tokenizer.convert_tokens_to_ids(list(audio_tokens))
    if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    probe = list(audio_tokens[:64])
    enc = tokenizer("".join(probe), add_special_tokens=False)["input_ids"]
    if enc != ids[: len(probe)]:
        raise ConfigError(
            "audio tokens are split by the tokenizer: "
            f"{probe[:4]} -> {tokenizer.convert_ids_to_tokens(enc[:8])}"
        )
    return ids
