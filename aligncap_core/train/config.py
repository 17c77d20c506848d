"""Typed configs of the two training stages, loaded from / dumped to YAML.

Every field is documented where it is declared. `from_dict` (the one loader,
`aligncap_core.config`, re-exported here) rejects unknown keys at any depth (`train.lrr` ->
ConfigError naming `train.lrr`), so a typo never silently trains with a default.

Defaults target the offline default: the `tiny` preset (hidden 256, 4 layers, ~5M parameters)
on a 2-core CPU, where ENVIRONMENT.md measured ~3k tokens/s forward+backward and ~1 s per KD
step of batch 16. Teacher sequences are short text (~80 tokens), student sequences carry ~150
audio tokens per second of speech, so the budgets below are a few minutes per stage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from aligncap_core.config import dump_config as dump_config  # the one loader, re-exported
from aligncap_core.config import from_dict as from_dict
from aligncap_core.config import load_config as load_config
from aligncap_core.config import to_dict as to_dict
from aligncap_core.errors import ConfigError
from aligncap_core.model.config import LoraSettings

# The student's text instruction before the audio tokens. It ends like the acoustic prompt
# ("Describe how the speaker sounds.") so that both sides ask the same question right before
# the caption, which is where the KL compares them.
DEFAULT_INSTRUCTION = "Listen to the speech and describe how the speaker sounds."
SCRATCH_BASE = "tiny"  # TeacherConfig.base value meaning "build a from-scratch Llama"

SCHEDULES = ("cosine", "linear", "constant")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "fp32", "bf16", "fp16")
WEIGHT_DTYPES = ("auto", "fp32", "bf16")


@dataclass
class TrainConfig:
    """The optimisation loop shared by both stages (`train.loop.fit`)."""

    lr: float = 1e-3  # peak AdamW lr; small models from scratch and LoRA both take ~1e-3
    weight_decay: float = 0.01  # on matrices only; norms and biases are never decayed
    warmup_steps: int = 50  # linear warm-up: Adam's second moments are noisy for the first steps
    schedule: str = "cosine"  # after warm-up: cosine / linear decay to 0, or constant
    max_grad_norm: float = 1.0  # clip the global grad norm (0 = off); guards early from-scratch spikes
    max_steps: int = 600  # optimizer steps (not micro-batches)
    batch_size: int = 16  # sequences per micro-batch and process (ENVIRONMENT.md speed figures use 16)
    # micro-batches per optimizer step and process; global batch = batch_size x grad_accum x
    # processes (train.runtime: N launched processes train what 1 does with N x grad_accum)
    grad_accum: int = 1
    eval_every: int = 100  # optimizer steps between validation passes (0 = never)
    eval_batches: int = 8  # validation micro-batches per pass (0 = the whole valid split)
    early_stopping_patience: int = 5  # validation passes without improvement before stopping (0 = off)
    checkpoint_every: int = 200  # optimizer steps between resumable checkpoints (0 = only at the end)
    keep_checkpoints: int = 2  # newest step checkpoints kept on disk; the best one is always kept
    seed: int = 0  # seeds init, data order (seed + epoch) and dropout
    device: str = "auto"  # auto = cuda when available, else cpu
    # autocast dtype; auto = bf16 on a GPU that supports it and on a CPU whose bf16 units (AMX,
    # AVX512-BF16) are measured faster (aligncap_core.precision), else fp32
    dtype: str = "auto"
    # dtype of the frozen base weights (trainable ones are always fp32): auto = bf16 where
    # autocast runs in bf16 (a 7B base: 14 GB instead of 28 per GPU), else fp32
    weights_dtype: str = "auto"
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower
    # torch's fused AdamW kernel; None = on CUDA, and on a CPU training in bf16 (3-4x faster
    # than the per-parameter loop there; fp32 CPU runs keep the loop and its exact results)
    fused_adamw: bool | None = None
    # tokens per sequence (capped at the model's positions). Longer speech is split into
    # windows of the clip (model.batching.speech_windows), never cut; a longer teacher text
    # loses its first tokens (counted and logged)
    max_len: int = 1024
    num_threads: int = 0  # torch CPU threads (0 = torch's default: all cores)
    log_every: int = 10  # optimizer steps between metric logs
    # The validation figure that picks the best checkpoint and drives early stopping: valid/loss,
    # or one a stage computes at each evaluation (the teacher's valid/copy_rate)
    select_metric: str = "valid/loss"
    select_mode: str = "min"  # min: lower is better; max: higher is better
    stop_at: float | None = None  # stop once the selection figure reaches this value (None: never)

    def __post_init__(self) -> None:
        if not self.lr > 0 or math.isinf(self.lr):  # `not >` also catches NaN
            raise ConfigError(f"train.lr must be a finite number > 0, got {self.lr}")
        if self.max_grad_norm < 0:
            raise ConfigError(f"train.max_grad_norm must be >= 0, got {self.max_grad_norm}")
        if self.weight_decay < 0:
            raise ConfigError(f"train.weight_decay must be >= 0, got {self.weight_decay}")
        _choice("train.schedule", self.schedule, SCHEDULES)
        _choice("train.device", self.device, DEVICES)
        _choice("train.dtype", self.dtype, DTYPES)
        _choice("train.weights_dtype", self.weights_dtype, WEIGHT_DTYPES)
        if self.weights_dtype == "bf16" and self.dtype == "fp32":
            raise ConfigError("train.weights_dtype bf16 needs autocast: set train.dtype to bf16 or "
                              "auto (fp32 activations cannot enter bf16 layers)")
        _choice("train.select_mode", self.select_mode, ("min", "max"))
        if not self.select_metric.startswith("valid/"):
            raise ConfigError(f"train.select_metric must name a validation figure (valid/...), "
                              f"got {self.select_metric!r}")
        if self.select_metric.endswith(("loss", "ce", "kl")) and self.select_mode != "min":
            raise ConfigError(f"train.select_metric {self.select_metric} is a loss: select_mode "
                              f"must be min, got {self.select_mode}")
        for k in ("max_steps", "batch_size", "grad_accum", "max_len", "log_every"):
            if getattr(self, k) < 1:
                raise ConfigError(f"train.{k} must be >= 1, got {getattr(self, k)}")
        for k in ("warmup_steps", "eval_every", "eval_batches", "early_stopping_patience",
                  "checkpoint_every", "seed", "num_threads"):
            if getattr(self, k) < 0:
                raise ConfigError(f"train.{k} must be >= 0, got {getattr(self, k)}")
        if self.keep_checkpoints < 1:
            raise ConfigError(f"train.keep_checkpoints must be >= 1 (resuming needs one), "
                              f"got {self.keep_checkpoints}")


def _teacher_train() -> TrainConfig:
    # The from-scratch teacher learns a language model of captions from nothing: more steps, and
    # weight decay 0.1 (the usual value for pretraining) since every weight is trained. It is
    # selected and stopped on its copy rate (train/copy_rate.py), not its loss: a KD teacher
    # must state what its prompt says, and at a good loss it may still not.
    return TrainConfig(lr=1e-3, weight_decay=0.1, max_steps=800, batch_size=16,
                       select_metric="valid/copy_rate", select_mode="max", stop_at=0.97)


def _student_train() -> TrainConfig:
    # LoRA + audio rows on a trained base: the KD step costs ~1 s at batch 16 on 2 cores, so
    # 600 steps is ~10 minutes.
    return TrainConfig(lr=1e-3, weight_decay=0.0, max_steps=600, batch_size=16)


@dataclass
class TeacherConfig:
    """Stage 1: the text teacher reads transcript + acoustic prompt and writes the caption."""

    base: str = SCRATCH_BASE  # "tiny": from-scratch Llama (architecture: `preset`); else a HF id/path
    preset: str = "tiny"  # architecture of the from-scratch base ("micro" is for tests)
    acoustic_prompt: bool = True  # teacher reads P_act after the transcript (False: transcript only)
    lora: LoraSettings = field(default_factory=LoraSettings)  # hub bases: the "teacher" adapter
    train: TrainConfig = field(default_factory=_teacher_train)
    copy_eval_clips: int = 64  # valid clips captioned at each evaluation for valid/copy_rate

    def __post_init__(self) -> None:
        if not self.base:
            raise ConfigError("teacher.base is empty: use 'tiny' or a Hugging Face model id/path")
        if self.base == SCRATCH_BASE:
            from aligncap_core.model.config import get_preset

            get_preset(self.preset)  # fail at load time, not after the data is tokenized
        if self.copy_eval_clips < 1:
            raise ConfigError(f"copy_eval_clips must be >= 1, got {self.copy_eval_clips}")
        if self.train.select_metric.startswith("valid/copy_rate") and not self.acoustic_prompt:
            raise ConfigError("teacher.train.select_metric is valid/copy_rate, but without the "
                              "acoustic prompt (acoustic_prompt: false) there is no prompt to copy; "
                              "set train.select_metric: valid/loss and train.select_mode: min")

    @property
    def from_scratch(self) -> bool:
        return self.base == SCRATCH_BASE


@dataclass
class StudentConfig:
    """Stage 2: the speech student (LoRA) reads audio tokens; KD from the frozen teacher."""

    lambda_kd: float = 1.0  # weight of KL(p_teacher || p_student); 0 = SFT-only baseline
    temperature: float = 1.0  # KD temperature T; token-level sequence KD works best near 1
    instruction: str = DEFAULT_INSTRUCTION  # text before the audio tokens
    keep_q: int | None = None  # read only the first keep_q codebooks (None: all the codec has)
    acoustic_prompt: bool = True  # the teacher's input during KD includes P_act
    # read a prosody token stream (quantised log-F0 and level, codec/prosody.py) after the codes:
    # false, true (ProsodySettings' defaults) or a mapping of its fields, e.g. {voice_bins: 16}
    # for the clip's formant-spacing token
    prosody: Any = False
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainConfig = field(default_factory=_student_train)

    @property
    def prosody_settings(self) -> Any:
        """The ProsodySettings of the stream the student reads, or None."""
        from aligncap_core.codec.prosody import ProsodySettings

        return ProsodySettings.coerce(self.prosody)

    def __post_init__(self) -> None:
        if self.lambda_kd < 0:
            raise ConfigError(f"lambda_kd must be >= 0, got {self.lambda_kd}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.keep_q is not None and self.keep_q < 1:
            raise ConfigError(f"keep_q must be >= 1 or null, got {self.keep_q}")
        if not isinstance(self.prosody, bool | dict):
            raise ConfigError(f"prosody must be true, false or a mapping of prosody settings, "
                              f"got {self.prosody!r}")
        self.prosody_settings  # noqa: B018 - a bad mapping raises ConfigError here, not mid-run


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
