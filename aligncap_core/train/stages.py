"""The two AlignCap training stages (ARCHITECTURE.md, method steps 4-5) as recipes on `fit`.

train_teacher: text teacher, `transcript + P_act -> caption`, selected and stopped on its copy
    rate (the share of P_act's attribute values its greedy valid captions state, copy_rate.py).
    base "tiny": tokenizer trained on the corpus, a from-scratch Llama with the audio tokens
    already added (so the student inherits the vocabulary), every weight trained; saved as a
    full checkpoint. Hub base: a LoRA adapter named "teacher"; saved as an adapter checkpoint.
train_student: speech student, `instruction + <audio>...</audio> -> caption`, LoRA + audio-token
    rows on the frozen teacher weights, loss = CE + lambda_kd * KL(p_teacher || p_student).

Both return the best checkpoint directory inside `out_dir` (by `train.select_metric`: the
teacher's copy rate, the student's valid loss).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from aligncap_core.errors import ConfigError
from aligncap_core.model.caption_head import caption_logits, caption_targets
from aligncap_core.model.checkpoint import save_checkpoint
from aligncap_core.model.losses import aligned_ce_loss, kd_loss
from aligncap_core.train import data
from aligncap_core.train.config import (
    DEFAULT_INSTRUCTION,
    StudentConfig,
    TeacherConfig,
    dump_config,
    to_dict,
)
from aligncap_core.train.identity import (
    RunIdentity,
    checkpoint_fingerprint,
    claim_run_dir,
    identity_config,
    locked_run_dir,
)
from aligncap_core.train.loggers import JsonlLogger, Logger
from aligncap_core.train.loop import StepOutput, TrainTask, fit
from aligncap_core.train.runtime import (
    is_main_process,
    main_process_first,
    precision_line,
    precision_params,
    resolve_weights_dtype,
)

TEACHER_ADAPTER = "teacher"


def _start_run(out_dir: Path, ident: RunIdentity, cfg: Any, logger: Logger | None,
               params: dict[str, Any], weights: torch.dtype, show_progress: bool) -> Logger | None:
    """Claim the run folder (before anything is written into a folder of another run), write
    its config and log the params, with the precision the stage runs in (`precision.*`: what
    `train.dtype: auto` resolved to on this machine, and why; also printed when
    `show_progress`): rank 0 of a launch, the other processes after it (they find the folder
    theirs and log nothing). Returns the stage's logger (None off rank 0)."""
    with main_process_first():
        claim_run_dir(out_dir, ident)
    if not is_main_process():
        return None
    dump_config(cfg, out_dir / "config.yaml")
    precision = precision_params(cfg.train.dtype, weights, cfg.train.device)
    if show_progress:
        print(f"{params['stage']}: {precision_line(precision)}", file=sys.stderr)
    logger = logger or JsonlLogger(out_dir / "metrics.jsonl")
    logger.log_params({**params, **precision})
    return logger


def _weights_dtype(cfg: Any) -> torch.dtype:
    """Frozen base weights: `train.weights_dtype` (bf16 on a GPU by default; train.runtime)."""
    return resolve_weights_dtype(cfg.train.weights_dtype, cfg.train.dtype, cfg.train.device)


def _max_len(cfg_max_len: int, model: Any) -> int:
    # never longer than the positions the model has (the micro preset has 256)
    return min(cfg_max_len, int(getattr(model.config, "max_position_embeddings", cfg_max_len)))


def forward_caption(model: Any, b: dict[str, torch.Tensor]
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(aligned logits (batch, L_cap, vocab), mask, caption CE) of a padded batch; the LM head
    runs at the caption positions only (`model.caption_head`)."""
    aligned, mask = caption_logits(model, b["input_ids"], b["attention_mask"],
                                   b["caption_start"], b["caption_len"])
    targets = caption_targets(b["labels"], b["caption_start"], b["caption_len"])
    return aligned, mask, aligned_ce_loss(aligned, targets)


# ---- run identities: what makes each stage's model ---------------------------------------------
def teacher_identity(data_dir: str | Path, cfg: TeacherConfig) -> RunIdentity:
    """The teacher run `cfg` trains on `data_dir` (its key names the run folder in the flows)."""
    return RunIdentity("teacher", identity_config(to_dict(cfg)),
                       {"data": data.data_fingerprint(data_dir)})


def student_identity(data_dir: str | Path, teacher_ckpt: str | Path,
                     cfg: StudentConfig) -> RunIdentity:
    """The student run `cfg` distils from `teacher_ckpt` (local or s3://) on `data_dir`."""
    from aligncap_core.model.checkpoint import fetch_to_local

    teacher = checkpoint_fingerprint(fetch_to_local(teacher_ckpt))
    if teacher is None:
        raise ConfigError(f"{teacher_ckpt}: not a checkpoint (no meta.json); pass the teacher "
                          "checkpoint folder `train teacher` wrote (OUT/step-*)")
    return RunIdentity("student", identity_config(to_dict(cfg)),
                       {"data": data.data_fingerprint(data_dir), "teacher": teacher})


# ---- stage 1: teacher --------------------------------------------------------------------------
def build_teacher_model(data_dir: Path, out_dir: Path, cfg: TeacherConfig) -> tuple[Any, Any, str]:
    """(model, tokenizer, base_model) ready to train: audio tokens added, trainable set chosen."""
    from aligncap_core.codec import audio_token_vocab
    from aligncap_core.codec.prosody import prosody_vocab
    from aligncap_core.model.base import BASE_INFO, add_audio_tokens, build_tiny_base, load_base

    rows = data.read_rows(data_dir)
    # the prosody tokens are in every vocabulary, so any student of this teacher may read them
    vocab = audio_token_vocab(*data.codec_layout(data_dir, rows)) + prosody_vocab()
    if cfg.from_scratch:
        base_dir = out_dir / "base"
        with main_process_first():  # rank 0 builds it; launched, the others then load it
            if not (base_dir / BASE_INFO).is_file():  # a resumed run reuses its base
                texts = data.corpus_texts([r for r in rows if r.get("split") == "train"],
                                          DEFAULT_INSTRUCTION)
                build_tiny_base(cfg.preset, texts, base_dir, seed=cfg.train.seed)
        base_model = str(base_dir)
    else:
        base_model = cfg.base
    # every weight of a from-scratch teacher trains (fp32); a hub base under a LoRA teacher is
    # frozen, so it may load in bf16
    model, tok = load_base(base_model, dtype=torch.float32 if cfg.from_scratch else _weights_dtype(cfg))
    torch.manual_seed(cfg.train.seed)  # mean_resizing samples the new rows
    add_audio_tokens(model, tok, vocab)
    if not cfg.from_scratch:
        from peft import get_peft_model

        from aligncap_core.model.lora import lora_config

        # text-only adapter: the teacher never reads audio, so no trainable audio rows
        model = get_peft_model(model, lora_config(cfg.lora), adapter_name=TEACHER_ADAPTER)
    return model, tok, base_model


def train_teacher(data_dir: str | Path, out_dir: str | Path, cfg: TeacherConfig | None = None,
                  logger: Logger | None = None, show_progress: bool = True) -> Path:
    """Train the text teacher on every (train clip, caption); returns the best checkpoint dir.

    Re-running with the same `out_dir` and the same settings and data resumes from its newest
    checkpoint (a finished run returns at once); a folder made with other settings or data is
    refused (`train.identity.RunMismatchError`), never resumed. A second run into the same
    folder at the same time waits for the first (the folder's lock).
    """
    with locked_run_dir(out_dir, "teacher"):
        return _train_teacher(Path(data_dir), Path(out_dir), cfg or TeacherConfig(), logger,
                              show_progress)


def _train_teacher(data_dir: Path, out_dir: Path, cfg: TeacherConfig, logger: Logger | None,
                   show_progress: bool) -> Path:
    ident = teacher_identity(data_dir, cfg)
    # every weight of a from-scratch teacher trains, in fp32 (build_teacher_model)
    weights = torch.float32 if cfg.from_scratch else _weights_dtype(cfg)
    logger = _start_run(out_dir, ident, cfg, logger, {"stage": "teacher", **to_dict(cfg)},
                        weights, show_progress)

    model, tok, base_model = build_teacher_model(data_dir, out_dir, cfg)
    max_len = _max_len(cfg.train.max_len, model)
    train_set = data.teacher_examples(tok, data.read_rows(data_dir, "train"),
                                      cfg.acoustic_prompt, max_len)
    valid_set = data.teacher_examples(tok, data.read_rows(data_dir, "valid"),
                                      cfg.acoustic_prompt, max_len)
    fp = data.data_fingerprint(data_dir)

    def compute_loss(m: Any, batch: dict[str, torch.Tensor]) -> StepOutput:
        ce = forward_caption(m, batch)[2]
        return StepOutput(ce, {"ce": ce.item()}, int(batch["attention_mask"].sum()))

    def save(path: Path, step: int, metrics: dict[str, float], state: dict[str, Any]) -> Path:
        return save_checkpoint(path, model, tok, stage="teacher", step=step,
                               base_model=base_model, run_config=to_dict(cfg),
                               data_fingerprint=fp, metrics=metrics, trainer_state=state,
                               full_weights=cfg.from_scratch, run_key=ident.key)

    validate = None
    if cfg.acoustic_prompt:
        from aligncap_core.clues import EmotionClueParser
        from aligncap_core.train.copy_rate import teacher_copy_rate

        copy_rows = [r for r in data.read_rows(data_dir, "valid") if r.get("p_act")]
        copy_rows = copy_rows[:cfg.copy_eval_clips]
        parser = EmotionClueParser()

        def validate(m: Any) -> dict[str, float]:
            rates = teacher_copy_rate(m, tok, copy_rows, acoustic_prompt=True, parser=parser)
            return {f"valid/{k}": v for k, v in rates.items() if k != "copy_pairs"}

    task = TrainTask("teacher", model, train_set, valid_set, data.teacher_collator(tok.pad_token_id),
                     compute_loss, save, identity=ident, validate=validate)
    return fit(task, cfg.train, out_dir, logger, show_progress).best_checkpoint


# ---- stage 2: student --------------------------------------------------------------------------
def build_student_model(data_dir: Path, teacher_ckpt: str | Path,
                        cfg: StudentConfig) -> tuple[Any, Any, str, str | None]:
    """(student PeftModel, tokenizer, base_model for its checkpoints, teacher adapter or None)."""
    from aligncap_core.codec import audio_token_vocab
    from aligncap_core.model.base import add_audio_tokens
    from aligncap_core.model.checkpoint import load_checkpoint
    from aligncap_core.model.lora import make_student

    # the teacher's weights are the student's frozen base: bf16 on a GPU (train.weights_dtype)
    model, tok, meta = load_checkpoint(teacher_ckpt, dtype=_weights_dtype(cfg))
    if meta["kind"] == "full":
        # the from-scratch teacher *is* the base: its pass runs with the student adapter off
        teacher_adapter, base_model = None, str(teacher_ckpt)
    else:
        if TEACHER_ADAPTER not in meta.get("adapters", []):
            raise ConfigError(f"{teacher_ckpt}: adapter checkpoint without a "
                              f"{TEACHER_ADAPTER!r} adapter is not a teacher")
        # student checkpoints hold both adapters on the hub base (not on the teacher checkpoint,
        # which load_checkpoint would merge into the base weights)
        teacher_adapter, base_model = TEACHER_ADAPTER, meta["base_model"]
    from aligncap_core.codec.prosody import prosody_vocab

    # + the configured stream's tokens, for settings other than the defaults
    vocab = list(dict.fromkeys(audio_token_vocab(*data.codec_layout(data_dir, data.read_rows(data_dir)))
                               + prosody_vocab() + prosody_vocab(cfg.prosody_settings)))
    # already in the teacher's vocabulary (added in the teacher stage): this just returns ids
    audio_ids = add_audio_tokens(model, tok, vocab)
    torch.manual_seed(cfg.train.seed)  # LoRA A init
    return make_student(model, audio_ids, cfg.lora), tok, base_model, teacher_adapter


def train_student(data_dir: str | Path, teacher_ckpt: str | Path, out_dir: str | Path,
                  cfg: StudentConfig | None = None, logger: Logger | None = None,
                  show_progress: bool = True) -> Path:
    """Distil the teacher into the speech student; returns the best checkpoint dir.

    lambda_kd=0 is the SFT-only baseline: the teacher pass is skipped entirely (no teacher
    inputs are even built). Re-running with the same `out_dir`, settings, data and teacher
    resumes; a folder made otherwise is refused (`train.identity.RunMismatchError`); a second
    run into the same folder at the same time waits for the first.
    """
    with locked_run_dir(out_dir, "student"):
        return _train_student(Path(data_dir), teacher_ckpt, Path(out_dir), cfg or StudentConfig(),
                              logger, show_progress)


def _train_student(data_dir: Path, teacher_ckpt: str | Path, out_dir: Path, cfg: StudentConfig,
                   logger: Logger | None, show_progress: bool) -> Path:
    ident = student_identity(data_dir, teacher_ckpt, cfg)
    logger = _start_run(out_dir, ident, cfg, logger, {
        "stage": "student", "teacher_checkpoint": str(teacher_ckpt), **to_dict(cfg)},
        _weights_dtype(cfg), show_progress)

    model, tok, base_model, teacher_adapter = build_student_model(data_dir, teacher_ckpt, cfg)
    use_kd = cfg.lambda_kd > 0
    max_len = _max_len(cfg.train.max_len, model)

    def examples(split: str) -> list[dict]:
        return data.student_examples(
            tok, data_dir, data.read_rows(data_dir, split), instruction=cfg.instruction,
            keep_q=cfg.keep_q, max_len=max_len, acoustic_prompt=cfg.acoustic_prompt,
            with_teacher=use_kd, prosody=cfg.prosody_settings)

    train_set, valid_set = examples("train"), examples("valid")
    fp = data.data_fingerprint(data_dir)
    from aligncap_core.inference.speech import attach_codec, find_codec

    codec = find_codec(data_dir)  # copied into every checkpoint: they caption raw audio alone
    from aligncap_core.inference.domain import training_ranges, training_voice_boundary

    # what the student has heard: decoding does not read volume or emotion far outside it, and
    # (with the voice check on) does not state a gender the clip's vocal tract contradicts
    train_rows = data.read_rows(data_dir, "train")
    levels, bands = training_ranges(data_dir, train_rows)
    voices = training_voice_boundary(data_dir, train_rows, cfg.prosody_settings)

    def compute_loss(m: Any, batch: dict[str, dict[str, torch.Tensor]]) -> StepOutput:
        s = batch["student"]
        n_tokens = int(s["attention_mask"].sum())
        if use_kd:
            t_cap, n_teacher = teacher_caption_logits(m, batch["teacher"], teacher_adapter)
            n_tokens += n_teacher
        s_cap, mask, ce = forward_caption(m, s)
        if not use_kd:
            return StepOutput(ce, {"ce": ce.item()}, n_tokens)
        kl = kd_loss(s_cap, t_cap, mask, cfg.temperature)
        loss = ce + cfg.lambda_kd * kl
        return StepOutput(loss, {"ce": ce.item(), "kl": kl.item()}, n_tokens)

    def save(path: Path, step: int, metrics: dict[str, float], state: dict[str, Any]) -> Path:
        saved = save_checkpoint(path, model, tok, stage="student", step=step,
                                base_model=base_model, run_config=to_dict(cfg),
                                data_fingerprint=fp, metrics=metrics, trainer_state=state,
                                run_key=ident.key)
        return attach_codec(saved, codec, instruction=cfg.instruction, keep_q=cfg.keep_q,
                            prosody=cfg.prosody_settings, level_range=levels, voice_boundary=voices,
                            band_range=bands)

    collate = data.student_collator(tok.pad_token_id, with_teacher=use_kd)
    task = TrainTask("student", model, train_set, valid_set, collate, compute_loss, save,
                     identity=ident)
    return fit(task, cfg.train, out_dir, logger, show_progress).best_checkpoint


def teacher_caption_logits(model: Any, t: dict[str, torch.Tensor],
                           teacher_adapter: str | None) -> tuple[torch.Tensor, int]:
    """The frozen teacher's logits over the caption tokens, (batch, L_cap, vocab), no graph.

    Runs before the student's forward, and only the caption positions go through the LM head
    (`model.caption_head`): a full (batch, seq, vocab) teacher logits tensor never exists, so
    none coexists with the student's activations or stays alive through backward (150k-wide
    for a hub vocabulary).
    """
    was_training = model.training
    model.eval()  # a teacher adapter's LoRA dropout must not make the targets noisy
    try:
        from aligncap_core.model.lora import teacher_pass

        with teacher_pass(model, teacher_adapter) as teacher:
            t_cap, _ = caption_logits(teacher, t["input_ids"], t["attention_mask"],
                                      t["caption_start"], t["caption_len"])
    finally:
        model.train(was_training)
    return t_cap, int(t["attention_mask"].sum())
