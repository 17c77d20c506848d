"""Model presets and LoRA settings.

A preset describes the *architecture* of the small from-scratch Llama used by the offline
default (ARCHITECTURE.md, "Defaults that run anywhere"). A Hugging Face model id or path
(`load_base`) replaces it in production; the LoRA settings apply to both.

The `micro-qwen2` and `micro-llama-chat` presets are real-base stand-ins for tests and the GPU
smoke bench: the architectures and tokenizer conventions of Qwen2 (untied output layer, no bos,
no pad token) and Llama 3 (a chat template, bos added by the tokenizer itself, no pad token) at
the micro size, built locally (no hub). Saved with `build_tiny_base` and passed as `base:`,
they take the hub-model path through every stage.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from aligncap_core.errors import ConfigError


@dataclass(frozen=True)
class TokenizerStyle:
    """The special tokens of a locally trained tokenizer (`model.base.train_tokenizer`).

    special: added first, ids 0..n-1. bos / eos / pad: their roles (None: the tokenizer has
    none; `load_base` then pads with eos). add_bos: the tokenizer puts bos before every text
    itself (Llama's post-processor); aligncap never relies on it (`batching` encodes with
    add_special_tokens=False and places bos explicitly). chat_template: saved with the
    tokenizer; aligncap's prompts do not apply it (the same plain prompt for every base keeps
    the teacher's and the student's caption tokens aligned)."""

    special: tuple[str, ...]
    bos: str | None
    eos: str
    pad: str | None
    add_bos: bool = False
    chat_template: str | None = None


_CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
           "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}"
           "{{ '<|im_start|>assistant\\n' }}{% endif %}")
_LLAMA3_CHAT = ("{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + "
                "'<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}{% endfor %}"
                "{% if add_generation_prompt %}"
                "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")

TOKENIZER_STYLES: dict[str, TokenizerStyle] = {
    "plain": TokenizerStyle(("<pad>", "<s>", "</s>"), bos="<s>", eos="</s>", pad="<pad>"),
    "qwen2": TokenizerStyle(("<|endoftext|>", "<|im_start|>", "<|im_end|>"), bos=None,
                            eos="<|endoftext|>", pad=None, chat_template=_CHATML),
    "llama3": TokenizerStyle(("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                              "<|end_header_id|>", "<|eot_id|>"), bos="<|begin_of_text|>",
                             eos="<|end_of_text|>", pad=None, add_bos=True,
                             chat_template=_LLAMA3_CHAT),
}


@dataclass(frozen=True)
class ModelPreset:
    """Architecture of a from-scratch Llama base. The vocabulary size comes from the tokenizer
    trained on the corpus (`build_tiny_base`), so it is not a field here; the tokenizer's *target*
    size is."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    max_position_embeddings: int
    tokenizer_vocab_size: int  # BPE merges stop earlier when the corpus runs out of pairs
    # Tied input/output embeddings: at this size the embedding table is a large share of the
    # parameters (and grows by n_q * 1024 audio rows), and tying means one trainable row per
    # new token serves both reading and (for text tokens) writing, as in GPT-2 and Qwen2-0.5B.
    tie_word_embeddings: bool = True
    rope_theta: float = 10_000.0  # Llama default; sequences are short (<= 1024)
    rms_norm_eps: float = 1e-5
    arch: str = "llama"  # "llama" or "qwen2" (transformers' LlamaForCausalLM / Qwen2ForCausalLM)
    # special tokens and conventions of the tokenizer (model.base.TOKENIZER_STYLES): "plain"
    # (<pad> <s> </s>, adds nothing itself), "qwen2", "llama3"
    tokenizer_style: str = "plain"

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"preset {self.name!r}: hidden_size {self.hidden_size} is not divisible by "
                f"num_heads {self.num_heads}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"preset {self.name!r}: num_heads {self.num_heads} is not a multiple of "
                f"num_kv_heads {self.num_kv_heads}"
            )
        if self.tokenizer_vocab_size < 300:
            # byte-level BPE needs 256 byte symbols + special tokens before any merge
            raise ConfigError(
                f"preset {self.name!r}: tokenizer_vocab_size must be >= 300, got "
                f"{self.tokenizer_vocab_size}"
            )
        for k in ("num_layers", "intermediate_size", "max_position_embeddings"):
            if getattr(self, k) <= 0:
                raise ConfigError(f"preset {self.name!r}: {k} must be positive")
        if self.arch not in ARCHS:
            raise ConfigError(f"preset {self.name!r}: arch must be one of {', '.join(ARCHS)}")
        if self.tokenizer_style not in TOKENIZER_STYLES:
            raise ConfigError(f"preset {self.name!r}: tokenizer_style must be one of "
                              f"{', '.join(TOKENIZER_STYLES)}")

    def hf_config(self, vocab_size: int, *, bos_token_id: int | None, eos_token_id: int,
                  pad_token_id: int | None) -> Any:
        """A transformers config (`LlamaConfig` / `Qwen2Config`) for this preset and a
        tokenizer of `vocab_size` ids.

        The vocabulary is exactly the tokenizer's (no padding to a multiple of 64): audio tokens
        are appended later, and padding rows would be given ids that `add_audio_tokens` then
        reuses without its mean initialisation.
        """
        from transformers import LlamaConfig, Qwen2Config

        extra = {"use_sliding_window": False} if self.arch == "qwen2" else {}
        return (LlamaConfig if self.arch == "llama" else Qwen2Config)(
            vocab_size=vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            max_position_embeddings=self.max_position_embeddings,
            rope_theta=self.rope_theta,
            rms_norm_eps=self.rms_norm_eps,
            tie_word_embeddings=self.tie_word_embeddings,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            attention_dropout=0.0,  # tiny data regime: LoRA dropout is the regulariser we tune
            **extra,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ARCHS = ("llama", "qwen2")

PRESETS: dict[str, ModelPreset] = {
    # hidden 256 x 4 layers (~3M non-embedding params): ENVIRONMENT.md measured ~3k tok/s
    # fwd+bwd on 2 CPU cores and 98-100% attribute accuracy on seen voices after 7 minutes, so it
    # is the largest model a CPU-only run trains in minutes. 4 heads of 64 dims (the usual head
    # size). intermediate 688 = 8/3 * 256 (SwiGLU keeps the MLP FLOPs of a 4x GELU MLP) rounded
    # up to a multiple of 16. 1024 positions: ~40 prompt + ~40 caption tokens leave room for
    # ~6.5 s of audio at 2 codebooks x 75 frames/s (one token per code).
    # tokenizer 4096: transcripts + captions + prompts of the built-in corpus are a few thousand
    # distinct words; a larger BPE vocabulary would be mostly unseen rows.
    "tiny": ModelPreset(
        name="tiny", hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=4,
        intermediate_size=688, max_position_embeddings=1024, tokenizer_vocab_size=4096,
    ),
    # For unit tests only: every code path of `tiny`, a fraction of a second per step.
    "micro": ModelPreset(
        name="micro", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
        intermediate_size=176, max_position_embeddings=256, tokenizer_vocab_size=512,
    ),
    # Real-base stand-ins (module doc), micro-sized. Qwen2: untied output layer (as Qwen2-7B),
    # biased q/k/v projections, a tokenizer with neither bos nor pad.
    "micro-qwen2": ModelPreset(
        name="micro-qwen2", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
        intermediate_size=176, max_position_embeddings=256, tokenizer_vocab_size=512,
        tie_word_embeddings=False, rope_theta=1_000_000.0, rms_norm_eps=1e-6, arch="qwen2",
        tokenizer_style="qwen2",
    ),
    # Llama 3 conventions: a chat template, bos added by the tokenizer's post-processor, no pad.
    "micro-llama-chat": ModelPreset(
        name="micro-llama-chat", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
        intermediate_size=176, max_position_embeddings=256, tokenizer_vocab_size=512,
        rope_theta=500_000.0, tokenizer_style="llama3",
    ),
}


def get_preset(name: str) -> ModelPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown model preset {name!r} (known: {', '.join(sorted(PRESETS))}); "
            "use a Hugging Face model id or path for other models"
        ) from None


# Attention and MLP projections of Llama-family blocks (Llama, Qwen2, Mistral share the names).
# LoRA on all seven follows QLoRA (Dettmers et al. 2023): adapting only q/v underfits
# when the input modality changes, as it does here (text -> speech tokens).
LLAMA_PROJECTIONS: tuple[str, ...] = (
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
)


@dataclass
class LoraSettings:
    """LoRA adapter of the speech student (and of an optional text teacher adapter).

    r: rank of the update. 16 is enough capacity for a new input modality on a 256-wide model
        and still < 10% of its parameters.
    alpha: update scale is alpha / r; alpha = 2r is the common default, so changing r keeps the
        effective learning rate about the same.
    dropout: on the LoRA input; the distillation set is small (thousands of clips).
    target_modules: projection names to adapt (see LLAMA_PROJECTIONS).
    train_new_token_rows: train the embedding rows of the added audio tokens (peft
        `trainable_token_indices`); the rest of the embedding stays frozen. Without it the
        student could only read audio through mean-initialised, indistinguishable rows.
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = field(default=LLAMA_PROJECTIONS)
    train_new_token_rows: bool = True

    def __post_init__(self) -> None:
        self.target_modules = tuple(self.target_modules)
        if self.r <= 0:
            raise ConfigError(f"lora.r must be a positive integer, got {self.r}")
        if self.alpha <= 0:
            raise ConfigError(f"lora.alpha must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ConfigError("lora.target_modules is empty: name at least one projection")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d
