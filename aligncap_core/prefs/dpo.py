"""One PO-Regularization round: DPO (TRL) on the speech student with the KD term kept
(ARCHITECTURE.md step 6; AlignCap "PO-Regularization", SpeechAlign-style rounds).

    L = L_DPO(chosen, rejected | policy, reference) + lambda_kd * L_KD(chosen)

L_DPO: TRL's DPO loss (Rafailov et al. 2023, eq. 7) on summed caption log-probs.
L_KD:  `model.losses.kd_loss` = T^2 * KL(p_teacher || p_student) over the chosen caption's
       tokens; the teacher reads the text input (transcript + P_act) under `no_grad` on the same
       base (adapters disabled, or the "teacher" adapter); lambda_kd=0 skips the teacher pass.

Reference = the round-k policy, not the base. TRL's peft default (`ref_model=None`) would score
the reference with the adapters disabled, i.e. the bare base: wrong here, because the student
adapter *is* the policy. (TRL's other peft path, copying the adapter into a frozen "ref"
adapter, assumes the adapter is named "default"; ours is "student".) With
`precompute_ref_log_probs=True` every pair is scored once, before the first update, and at that
moment the policy *is* the round-k policy: so the trainer scores the reference with the policy
itself, adapter on (`compute_ref_log_probs`), and no copy of the model is ever made (a 7B base
used to cost a second 28 GB fp32 copy here). Round k+1's reference log-probs therefore equal the
round-k policy's (tests/core/test_dpo.py checks it).

Precision and processes: the frozen base loads in `weights_dtype` (bf16 on a GPU, and on a CPU
whose bf16 units are measured faster: `aligncap_core.precision`) with the adapter in fp32 and
the forward under bf16 autocast (`dtype`); the round logs and saves which (`precision.*`);
launched as N processes
(`train.launch`, `accelerate launch`) TRL's Trainer runs DDP by itself: `batch_size` is per
process, rank 0 writes the checkpoints (`_save_checkpoint`) and the round's result, and every
process its RNG state. 2 processes with grad_accum 1 train what 1 process with grad_accum 2
does (tests/core/test_distributed.py).
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from aligncap_core.errors import ConfigError
from aligncap_core.model.caption_head import caption_logits
from aligncap_core.model.checkpoint import (
    load_checkpoint,
    load_trainable_state,
    save_checkpoint,
    trainable_state,
)
from aligncap_core.model.lora import set_lora_input_casting, teacher_pass
from aligncap_core.model.losses import kd_loss
from aligncap_core.prefs.dpo_data import (
    TEACHER_COLUMN,
    TEACHER_KEYS,
    POCollator,
    TeacherInfo,
    pair_dataset,
)
from aligncap_core.prefs.pairs import read_pairs
from aligncap_core.utils import atomic_dir, discard_dir, sha256_bytes, sha256_file, stable_json

log = logging.getLogger(__name__)
RESUME_WEIGHTS = "trainable.pt"  # trainable parameters in a resumable DPO checkpoint


@dataclass
class DPORoundConfig:
    """One preference round.

    beta: DPO temperature on the log-ratio (TRL default 0.1; smaller = further from reference).
    lambda_kd: weight of the KD regulariser on the chosen caption (0: plain DPO, the ablation;
        no teacher pass is run). kd_temperature: T of the KD term (as in distillation).
    learning_rate: LoRA DPO usually wants ~10x less than SFT; 5e-5 for the small adapters here.
    epochs / max_steps: passes over the pairs (max_steps > 0 overrides epochs).
    batch_size: pairs per step (each step runs 2x batch_size policy rows: chosen + rejected).
    grad_accum: steps accumulated per update. max_length: prompt + caption tokens (prompts are
        cut from the left, captions kept whole). loss_type: TRL DPO loss ("sigmoid" = DPO).
    round: round number written to the checkpoint (None: the policy checkpoint's round + 1).
    seed: TRL/transformers seed. logging_steps: metrics cadence. show_progress: tqdm bars.
    save_steps: write a resumable checkpoint (trainable weights, optimizer, scheduler, RNG,
        trainer state) every this many updates into a work folder beside out_dir, so a killed
        round re-run with the same inputs resumes instead of restarting (0: never).
    dtype: autocast (auto: bf16 on a GPU that has it and on a CPU with bf16 units measured
        faster, `aligncap_core.precision`; else fp32). weights_dtype: the frozen
        base's weights (auto: bf16 where autocast is bf16). gradient_checkpointing: recompute
        activations in backward (less memory). fused_adamw: torch's fused AdamW (None: TRL's
        default optimizer, the fused one). As `train.*` of the training stages.
    """

    beta: float = 0.1
    lambda_kd: float = 0.5
    kd_temperature: float = 1.0
    learning_rate: float = 5e-5
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int | None = 1024
    loss_type: str = "sigmoid"
    round: int | None = None
    seed: int = 0
    logging_steps: int = 10
    show_progress: bool = False
    save_steps: int = 25
    dtype: str = "auto"
    weights_dtype: str = "auto"
    gradient_checkpointing: bool = False
    fused_adamw: bool | None = None

    def __post_init__(self) -> None:
        from aligncap_core.train.config import DTYPES, WEIGHT_DTYPES

        for f in fields(self):  # .nan / .inf from YAML would pass every range check below
            v = getattr(self, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"dpo.{f.name} must be a finite number, got {v!r}")

        if self.dtype not in DTYPES or self.weights_dtype not in WEIGHT_DTYPES:
            raise ConfigError(f"dpo.dtype must be one of {', '.join(DTYPES)} and dpo.weights_dtype "
                              f"one of {', '.join(WEIGHT_DTYPES)}; got {self.dtype!r}, "
                              f"{self.weights_dtype!r}")
        if self.beta <= 0:
            raise ConfigError(f"dpo.beta must be > 0, got {self.beta}")
        if self.lambda_kd < 0:
            raise ConfigError(f"dpo.lambda_kd must be >= 0, got {self.lambda_kd}")
        if self.kd_temperature <= 0:
            raise ConfigError(f"dpo.kd_temperature must be > 0, got {self.kd_temperature}")
        if self.learning_rate <= 0 or self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("dpo: learning_rate must be > 0, batch_size and grad_accum >= 1")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise ConfigError("dpo: set epochs > 0 or max_steps > 0")
        if self.max_length is not None and self.max_length < 8:
            raise ConfigError(f"dpo.max_length too small: {self.max_length}")
        if self.save_steps < 0:
            raise ConfigError(f"dpo.save_steps must be >= 0, got {self.save_steps}")

    @classmethod
    def from_dict(cls, d: dict | None, path: str = "dpo.") -> DPORoundConfig:
        """From a (YAML) mapping with the one config loader (`aligncap_core.config`): unknown
        keys and values of the wrong type are ConfigErrors naming `<path><key>`."""
        from aligncap_core.config import from_dict

        return from_dict(cls, dict(d or {}), path)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_completions_only() -> bool:
    """Make TRL's fused log-prob head score only the completion (caption) positions on CPU.

    TRL's `_fused_forward` (trl/trainer/utils.py) projects through the LM head and log-softmaxes
    either just the positions with a label ("compact", plain torch: a boolean-mask gather, then
    `masked_scatter`) or every position, and picks compact only where Triton runs, to keep tile
    shapes fixed for compiling backends. On CPU nothing is compiled, and a DPO row is ~250 prompt
    positions for ~25 caption ones, so the full path scores ~10x the tokens the loss reads (the
    same waste `model.caption_head` removes from distillation). The per-token log-probs are
    the same either way (tested). Patches the name that one call site reads (`_use_triton` in
    `trl.trainer.utils`; TRL's kernel choice reads its own module's); returns whether it is in
    place (False when a TRL version has no such name: the full path then still runs, correct)."""
    import trl.trainer.utils as tu

    orig = getattr(tu, "_use_triton", None)
    if orig is None:
        return False
    if not getattr(orig, "_aligncap_compact_on_cpu", False):
        def _use_compact(device: torch.device) -> bool:
            return device.type == "cpu" or orig(device)

        _use_compact._aligncap_compact_on_cpu = True
        tu._use_triton = _use_compact
    return True


def _dpo_trainer_class() -> type:
    # TRL imports in ~10 s: build the subclass on first use, not when aligncap imports
    from trl import DPOTrainer

    score_completions_only()

    class PORegularizedDPOTrainer(DPOTrainer):
        """DPOTrainer + lambda_kd * KD(teacher || student) on the chosen caption."""

        def __init__(self, *args: Any, lambda_kd: float = 0.0, kd_temperature: float = 1.0,
                     teacher_adapter: str | None = None, **kwargs: Any):
            self.lambda_kd = lambda_kd
            self.kd_temperature = kd_temperature
            self.teacher_adapter = teacher_adapter
            self.teacher_passes = 0  # counted, so the ablation can prove it ran none
            super().__init__(*args, **kwargs)
            if self.args.precompute_ref_log_probs:
                # the reference log-probs now travel with the dataset rows; the stand-in
                # reference (PolicyReference) is never read again
                self.ref_model = None

        def _save_checkpoint(self, model, trial):
            """A resumable checkpoint `checkpoint-<step>` in the work folder, written under a
            temporary name and renamed (a kill never leaves a half one); older ones are removed.
            Only the trainable weights are saved (the frozen base and the reference come from
            the round's inputs), with HF's optimizer, scheduler, RNG and trainer state files.
            Launched: rank 0 makes the folder and writes all but the RNG states, which every
            process writes (`rng_state_<rank>.pth`), then rank 0 renames it into place."""
            from accelerate.utils import broadcast_object_list

            acc = self.accelerator
            final = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
            with atomic_dir(final) if acc.is_main_process else contextlib.nullcontext() as tmp:
                tmp = Path(broadcast_object_list([str(tmp) if tmp else None], from_process=0)[0])
                if acc.is_main_process:
                    torch.save(trainable_state(acc.unwrap_model(self.model)), tmp / RESUME_WEIGHTS)
                    self._save_optimizer_and_scheduler(str(tmp))
                    self._save_scaler(str(tmp))
                    self.state.save_to_json(str(tmp / "trainer_state.json"))
                self._save_rng_state(str(tmp))
                acc.wait_for_everyone()  # every process's files are in before the rename
            if acc.is_main_process:
                for old in Path(self.args.output_dir).glob("checkpoint-*"):
                    if old != final:  # hidden first: never a half-deleted checkpoint in view
                        discard_dir(old)
            acc.wait_for_everyone()

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            state = torch.load(Path(resume_from_checkpoint) / RESUME_WEIGHTS, map_location="cpu")
            load_trainable_state(self.accelerator.unwrap_model(model or self.model), state,
                                 f"{resume_from_checkpoint}: weights {{missing}} are not in the "
                                 "policy; delete this work folder to restart the round")

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            # rows arrive tokenized by dpo_data.pair_dataset (see its module doc for why)
            missing = {"prompt_ids", "chosen_ids", "rejected_ids"} - set(dataset.column_names)
            if missing:
                raise ConfigError(f"dpo {dataset_name} dataset lacks {sorted(missing)}; build it "
                                  "with prefs.dpo_data.pair_dataset")
            return dataset

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            if TEACHER_COLUMN not in self._signature_columns:
                # keep the teacher inputs through remove_unused_columns
                self._signature_columns = [*self._signature_columns, TEACHER_COLUMN]

        def compute_ref_log_probs(self, model, inputs):
            """The reference log-probs, computed before the first update: by the policy itself,
            adapter on (module doc). `model` is the `PolicyReference` stand-in; while it is set,
            TRL leaves the policy's adapters enabled."""
            return super().compute_ref_log_probs(self.model, _without_teacher(inputs))

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, _without_teacher(inputs), return_outputs,
                                       num_items_in_batch)
            if self.lambda_kd == 0:
                return out
            dpo = out[0] if return_outputs else out
            kd = self._kd_term(model, inputs)
            mode = "train" if self.model.training else "eval"
            # the mean over processes, as TRL logs its own figures (every process is here)
            both = self.accelerator.gather(torch.stack([dpo.detach(), kd.detach()])[None])
            self._metrics[mode]["dpo_loss"].append(float(both[:, 0].mean()))
            self._metrics[mode]["kd_loss"].append(float(both[:, 1].mean()))
            loss = dpo + self.lambda_kd * kd
            return (loss, out[1]) if return_outputs else loss

        def _kd_term(self, model, inputs) -> torch.Tensor:
            """kd_loss(student logits on the chosen caption, teacher logits on the same caption
            ids read after the teacher's text input). TRL's policy forward uses a fused LM head
            that never builds the logits, so the student's chosen rows run once more here."""
            if "teacher_input_ids" not in inputs:
                raise ConfigError("lambda_kd > 0 but the batch has no teacher inputs; build the "
                                  "dataset with a TeacherInfo")
            n = inputs["input_ids"].shape[0] // 2  # batch is [chosen; rejected]
            cmask = inputs["completion_mask"][:n]
            cap_len = cmask.sum(1)
            cap_start = cmask.argmax(1)  # right padding: first completion position
            # the module itself, not a DDP wrapper: DDP allows one forward per backward, and the
            # DPO forward was that one (the gradients of both meet in the same parameters)
            unwrapped = self.accelerator.unwrap_model(model)
            s_cap, mask = caption_logits(unwrapped, inputs["input_ids"][:n],
                                         inputs["attention_mask"][:n], cap_start, cap_len,
                                         use_cache=False)
            if not torch.equal(inputs["teacher_caption_len"].to(cap_len), cap_len):
                raise ConfigError("KD: teacher and student chosen captions differ in length")
            with teacher_pass(unwrapped, self.teacher_adapter) as teacher:
                t_cap, _ = caption_logits(teacher, inputs["teacher_input_ids"],
                                          inputs["teacher_attention_mask"],
                                          inputs["teacher_caption_start"],
                                          inputs["teacher_caption_len"], use_cache=False)
            self.teacher_passes += 1
            return kd_loss(s_cap, t_cap, mask, self.kd_temperature)

    return PORegularizedDPOTrainer


class PolicyReference(torch.nn.Module):
    """What the DPO trainer is given as its reference model: no weights, only a key of the
    policy (its trainable weights and base), because TRL needs a reference object, and with none
    it would copy a peft adapter named "default" (ours is "student") and score with the
    adapters off. The reference log-probs are computed by the policy itself
    (`compute_ref_log_probs`); TRL caches them under a hash of this module's state_dict, so the
    key makes a cache of another policy never match."""

    def __init__(self, policy: Any):
        super().__init__()
        self.config = policy.config  # TRL reads it when it patches the (unused) forward
        h = sha256_bytes(stable_json([str(getattr(policy.config, "_name_or_path", "")),
                                      sorted(n for n, _ in policy.named_parameters())]).encode())
        digest = bytearray.fromhex(h)
        for _, p in sorted(policy.named_parameters(), key=lambda kv: kv[0]):
            if p.requires_grad:
                digest += sha256_bytes(p.detach().float().cpu().numpy().tobytes()).encode()
        self.register_buffer("policy_key", torch.frombuffer(bytearray.fromhex(
            sha256_bytes(bytes(digest))), dtype=torch.uint8).clone())

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("PolicyReference is a stand-in; the policy scores the reference")


def _without_teacher(inputs: dict) -> dict:
    # TRL passes every non-DPO key to the model's forward: the teacher tensors must not reach it
    return {k: v for k, v in inputs.items() if k not in TEACHER_KEYS}


def build_dpo_trainer(policy: Any, tokenizer: Any, pairs: list[dict],
                      teacher_info: TeacherInfo | dict | None, cfg: DPORoundConfig,
                      work_dir: str | Path, logger: Any = None) -> Any:
    """The PO-Regularized DPO trainer for `policy` (a PeftModel whose active adapter is the
    trainable student) on `pairs` (rows of `prefs.pairs.read_pairs`). Building it precomputes
    the reference log-probs with `policy` itself (module doc). logger: a
    `train.loggers.Logger` that receives TRL's step metrics as `dpo/<name>` (loss,
    rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies, ...); rank 0's only.

    The encoded pairs are saved under `work_dir` (`pairs-<content hash>`), where TRL caches the
    reference log-probs beside them: every process of a launch reads the one cache (an
    in-memory dataset would cache into each process's own temporary folder), and a resumed
    round reuses it."""
    from trl import DPOConfig

    from aligncap_core.train.runtime import (
        main_process_first,
        resolve_autocast,
        resolve_device,
    )

    teacher = TeacherInfo.coerce(teacher_info)
    _expose_lm_head_bias(policy)
    with main_process_first():
        dataset = _dataset_on_disk(pair_dataset(tokenizer, pairs, teacher if cfg.lambda_kd > 0
                                                else None, cfg.max_length), Path(work_dir))
    device = resolve_device("auto")
    amp = resolve_autocast(cfg.dtype, device)
    optim = {} if cfg.fused_adamw is None else {
        "optim": "adamw_torch_fused" if cfg.fused_adamw else "adamw_torch"}
    args = DPOConfig(
        output_dir=str(work_dir), beta=cfg.beta, loss_type=[cfg.loss_type],
        learning_rate=cfg.learning_rate, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        precompute_ref_log_probs=True, max_length=None,  # lengths are handled in pair_dataset
        # TRL defaults bf16=True (fails on CPU) and gradient_checkpointing=True (slow on CPU,
        # pointless for small LoRA runs): both follow this round's config instead
        bf16=amp == torch.bfloat16, fp16=amp == torch.float16, use_cpu=device.type == "cpu",
        activation_checkpointing=cfg.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        # every trainable parameter is in the DPO forward: DDP need not search for unused ones
        ddp_find_unused_parameters=False,
        report_to=[], save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 500, push_to_hub=False, logging_steps=cfg.logging_steps,
        seed=cfg.seed, data_seed=cfg.seed, dataloader_num_workers=0,
        disable_tqdm=not cfg.show_progress, **optim,
    )
    if amp is not None:  # TRL runs every forward of the round under autocast (model.lora)
        set_lora_input_casting(policy, False)
    trainer_cls = _dpo_trainer_class()
    trainer = trainer_cls(
        model=policy, ref_model=PolicyReference(policy), args=args, train_dataset=dataset,
        processing_class=tokenizer, data_collator=POCollator(tokenizer.pad_token_id),
        lambda_kd=cfg.lambda_kd, kd_temperature=cfg.kd_temperature,
        teacher_adapter=teacher.adapter,
    )
    # transformers prints every metrics dict to stdout (PrinterCallback, or ProgressCallback's
    # tqdm.write); stdout carries the CLI's JSON summaries, and the metrics are in
    # state.log_history (the round's summary) and the logger anyway
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    if not cfg.show_progress:
        trainer.remove_callback(ProgressCallback)
    if logger is not None and trainer.accelerator.is_main_process:
        trainer.add_callback(_metrics_callback(logger))
    return trainer


def _dataset_on_disk(dataset: Any, work_dir: Path) -> Any:
    """`dataset` saved under `work_dir` by its content (once; rank 0 first) and loaded back."""
    from datasets import load_from_disk

    from aligncap_core.train.runtime import is_main_process

    path = work_dir / f"pairs-{sha256_bytes(stable_json(dataset.to_list()).encode())[:16]}"
    if is_main_process() and not (path / "dataset_info.json").is_file():
        with atomic_dir(path) as tmp:
            dataset.save_to_disk(str(tmp))
    return load_from_disk(str(path))


def _metrics_callback(logger: Any) -> Any:
    """A TrainerCallback forwarding every logged step's numbers to `logger` as `dpo/<name>`,
    plus, as the training loop logs them, `dpo/step_s` (the wall time of the last optimizer
    step) and on a GPU `dpo/peak_mem_gb` (this process's peak allocated memory)."""
    import time

    from transformers import TrainerCallback

    class ForwardMetrics(TrainerCallback):
        t_step, last_step_s = 0.0, None

        def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            self.t_step = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            self.last_step_s = time.perf_counter() - self.t_step

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            metrics = {f"dpo/{k}": float(v) for k, v in (logs or {}).items()
                       if isinstance(v, int | float) and not isinstance(v, bool) and k != "epoch"}
            if metrics and self.last_step_s is not None and "dpo/loss" in metrics:
                metrics["dpo/step_s"] = self.last_step_s
                if torch.cuda.is_available():
                    metrics["dpo/peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
            if metrics:
                logger.log_metrics(metrics, int(state.global_step))

    return ForwardMetrics()


def _expose_lm_head_bias(model: Any) -> None:
    """TRL's fused log-prob head reads `lm_head.bias`; peft's TrainableTokensWrapper (the tied
    lm_head when the audio-token rows are trainable) forwards `.weight` (base + trained rows)
    but not `.bias` (AttributeError). Expose the wrapped layer's bias (None for Llama)."""
    head = model.get_output_embeddings()
    if head is None or hasattr(head, "bias"):
        return
    base = head
    while hasattr(base, "token_adapter") or hasattr(base, "base_layer"):
        base = base.token_adapter.base_layer if hasattr(base, "token_adapter") else base.base_layer
    head.bias = getattr(base, "bias", None)


def _summary(log_history: list[dict]) -> dict[str, float]:
    """Last logged value of each numeric training metric (the final state of the round)."""
    out: dict[str, float] = {}
    for entry in log_history:
        for k, v in entry.items():
            if isinstance(v, int | float) and k not in ("epoch", "step"):
                out[k] = float(v)
    return out


def _norm_uri(uri: Any) -> str:
    s = str(uri)
    return s if s.startswith("s3://") else str(Path(s).resolve())


def run_dpo_round(policy_ckpt: str | Path, pairs_path: str | Path,
                  teacher_info: TeacherInfo | dict | None, out_dir: str | Path,
                  cfg: DPORoundConfig | dict | None = None, logger: Any = None) -> Path:
    """Train one DPO round from the round-k policy checkpoint on the pairs file; save the new
    policy (stage "dpo", round k+1 unless cfg.round) to `out_dir` and return its path. logger:
    receives the round's step metrics (`build_dpo_trainer`), e.g. the round's MLflow run."""
    cfg = cfg if isinstance(cfg, DPORoundConfig) else DPORoundConfig.from_dict(cfg)
    pairs = read_pairs(pairs_path)
    if not pairs:
        raise ConfigError(f"{pairs_path}: no preference pairs")
    from aligncap_core.train.runtime import (
        is_main_process,
        main_process_first,
        precision_params,
        resolve_weights_dtype,
        upcast_trainable,
        wait_for_everyone,
    )

    # the frozen base in bf16 on a GPU (and on a CPU with fast bf16 units), the adapter trained
    # in fp32 (Trainer moves it to the process's device)
    weights = resolve_weights_dtype(cfg.weights_dtype, cfg.dtype)
    precision = precision_params(cfg.dtype, weights)
    if logger is not None and is_main_process():
        logger.log_params({"stage": "dpo", **precision})
    policy, tokenizer, meta = load_checkpoint(policy_ckpt, dtype=weights, trainable=True)
    if not any(p.requires_grad for p in policy.parameters()):
        raise ConfigError(f"{policy_ckpt}: no trainable adapter (kind={meta['kind']}); DPO "
                          "trains the student adapter of a distill/dpo checkpoint")
    upcast_trainable(policy)
    round_k = cfg.round if cfg.round is not None else int(meta.get("round", 0)) + 1
    built_from = {_norm_uri(p.get("provenance", {}).get("policy")) for p in pairs}
    if _norm_uri(policy_ckpt) not in built_from and is_main_process():
        log.warning("dpo: pairs in %s were sampled from %s, not from the policy %s",
                    pairs_path, sorted(built_from), policy_ckpt)
    with main_process_first():  # rank 0 clears a stale work folder before anyone reads it
        work, resume = _work_dir(out_dir, policy_ckpt, pairs_path, teacher_info, cfg)
    trainer = build_dpo_trainer(policy, tokenizer, pairs, teacher_info, cfg, work, logger)
    if resume is not None:
        log.info("dpo: resuming round %d from %s", round_k, resume)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    model = trainer.accelerator.unwrap_model(trainer.model)
    metrics = _summary(trainer.state.log_history)
    run_config = {"dpo": cfg.to_dict(), "policy": str(policy_ckpt), "pairs": str(pairs_path),
                  "teacher_adapter": TeacherInfo.coerce(teacher_info).adapter,
                  "n_pairs": len(trainer.train_dataset), "precision": precision}
    if is_main_process():
        save_checkpoint(out_dir, model, tokenizer, stage="dpo", round=round_k,
                        step=trainer.state.global_step, base_model=meta["base_model"],
                        run_config=run_config, data_fingerprint=sha256_file(pairs_path)[:16],
                        metrics=metrics)
        shutil.rmtree(work, ignore_errors=True)  # the round is saved: its resume state is not needed
    wait_for_everyone()
    return Path(out_dir)


def _work_dir(out_dir: str | Path, policy_ckpt: Any, pairs_path: Any, teacher_info: Any,
              cfg: DPORoundConfig) -> tuple[Path, Path | None]:
    """(the round's work folder `.<out name>.dpo-work` beside out_dir, its newest complete
    checkpoint or None). A folder left by a run with other inputs or settings is cleared: its
    state belongs to another round. Launched, only rank 0 clears or stamps it."""
    from aligncap_core.train.runtime import is_main_process

    out = Path(out_dir)
    work = out.parent / f".{out.name}.dpo-work"
    teacher = TeacherInfo.coerce(teacher_info)
    key = sha256_bytes(stable_json({
        "policy": _norm_uri(policy_ckpt), "pairs": sha256_file(pairs_path), "cfg": cfg.to_dict(),
        "teacher_adapter": teacher.adapter, "teacher_texts": teacher.texts}).encode())
    stamp = work / "inputs.sha256"
    if is_main_process():
        if work.exists() and (not stamp.is_file() or stamp.read_text().strip() != key):
            log.warning("dpo: %s holds the state of a round with other inputs; starting afresh", work)
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
        stamp.write_text(key)
    done = [(int(p.name.split("-")[1]), p) for p in work.glob("checkpoint-*")
            if p.is_dir() and p.name.split("-")[1].isdigit() and (p / "trainer_state.json").is_file()]
    return work, max(done)[1] if done else None
