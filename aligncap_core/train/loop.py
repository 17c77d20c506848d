"""One training loop for every stage: setup -> train -> cleanup.

A stage describes *what* to train as a `TrainTask` (model, examples, collate, loss, save); `fit`
does the rest the same way for the teacher and the student: AdamW over the trainable parameters,
warm-up + decay schedule, gradient accumulation, autocast, validation, early stopping, atomic
checkpoints with a full `trainer_state`, and resume from the newest checkpoint of the run dir.

Resume is exact (same weights as an uninterrupted run, to float rounding): the data order of
epoch e is a permutation seeded by (seed, e), the position inside it is saved, and the optimizer,
scheduler, grad scaler, trainable weights and RNG states are restored. So a killed run restarted
with the same command continues where its last checkpoint left off, and a finished run is a no-op.
A newest checkpoint that is damaged (files not as saved, an unreadable trainer state) is set
aside with a warning and the run resumes from the one before it. One run at a time holds the run
dir (`train.identity.locked_run_dir`): a second one waits for it instead of racing its saves.

Under `accelerate launch` (N processes, DDP) the same loop runs in every process through a
`train.runtime.Runtime`: each process trains its share of every step's micro-batches, rank 0
alone writes the run folder and the logs (and holds its lock), and resume restores every
process's RNG state. A run resumes only under the same number of processes (its global batch
depends on it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import re
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aligncap_core.errors import ConfigError
from aligncap_core.model.checkpoint import (
    capture_rng_state,
    checkpoint_name,
    checkpoints_newest_first,
    load_trainable_state,
    load_trainer_state,
    restore_rng_state,
    trainable_state,
    verify_checkpoint,
)
from aligncap_core.model.lora import set_lora_input_casting
from aligncap_core.train.config import TrainConfig
from aligncap_core.train.identity import RunIdentity, claim_run_dir, locked_run_dir
from aligncap_core.train.loggers import Logger
from aligncap_core.train.runtime import Runtime, resolve_autocast
from aligncap_core.train.threads import ThreadGovernor
from aligncap_core.utils import atomic_write, discard_dir, progress

STEP_DIR = re.compile(r"step-\d+")
log = logging.getLogger(__name__)


# ---- what a stage hands to the loop ------------------------------------------------------------
@dataclass
class StepOutput:
    """loss: scalar (with graph in training); metrics: detached floats (e.g. ce, kl) averaged
    like the loss; n_tokens: non-padding tokens forwarded (all passes), for tokens/s."""

    loss: torch.Tensor
    metrics: dict[str, float]
    n_tokens: int


@dataclass
class TrainTask:
    """name: stage name (progress bar, metrics). model: trained in place; its `requires_grad`
    parameters are the ones optimized. compute_loss(model, batch) runs under autocast; batch is
    `collate(examples)` moved to the device. save(path, step, metrics, trainer_state) writes a
    checkpoint directory (atomically) and returns its path. identity: what makes this run (config
    and input fingerprints); `fit` resumes a run dir only when it was made by the same identity."""

    name: str
    model: torch.nn.Module
    train_set: Sequence[Any]
    valid_set: Sequence[Any]
    collate: Callable[[list[Any]], Any]
    compute_loss: Callable[[Any, Any], StepOutput]
    save: Callable[[Path, int, dict[str, float], dict[str, Any]], Path]
    identity: RunIdentity | None = None
    # extra validation figures computed at each evaluation (e.g. {"valid/copy_rate": 0.97} from
    # generated captions); run under no_grad with the model in eval mode
    validate: Callable[[Any], dict[str, float]] | None = None


@dataclass
class LoopState:
    """Everything besides tensors that a resumed run needs (saved in trainer_state["loop"])."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_value: float | None = None  # best value of cfg.select_metric so far
    best_checkpoint: str | None = None  # directory name inside the run dir
    bad_evals: int = 0
    stopped_early: bool = False
    reached_target: bool = False  # cfg.stop_at was reached
    processes: int = 1  # processes the run trains on (its global batch depends on it)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoopState:
        d = dict(d)
        if "best_loss" in d:  # trainer states written before select_metric existed
            d["best_value"] = d.pop("best_loss")
        return cls(**d)


@dataclass
class FitResult:
    best_checkpoint: Path
    last_checkpoint: Path
    step: int
    best_valid_loss: float | None  # the best valid/loss when that selects, else None
    stopped_early: bool
    metrics: dict[str, float] = field(default_factory=dict)
    select_metric: str = "valid/loss"
    best_value: float | None = None  # best value of select_metric
    reached_target: bool = False


# ---- small pieces ------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def batch_order(n: int, batch_size: int, seed: int, epoch: int,
                lengths: Sequence[int] | None = None, group: int = 50) -> list[list[int]]:
    """Batches of epoch `epoch`: a permutation that depends only on (seed, epoch), so a resumed
    run replays exactly the order the uninterrupted run would have used.

    With `lengths` (tokens per example), batches hold examples of similar length: the
    permutation is cut into groups of `group` batches, each group sorted by length and cut into
    batches, and the batches are shuffled (transformers' LengthGroupedSampler). Random batches
    of the demo's student examples (audio of 1-6 s: 50-500 tokens) forward 1.80x their real
    tokens as padding; grouped, 1.02x. Every example is still seen once per epoch, in an order
    that changes every epoch.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    if lengths is None:
        return [perm[i: i + batch_size] for i in range(0, n, batch_size)]
    batches = []
    for m in range(0, n, group * batch_size):
        chunk = sorted(perm[m: m + group * batch_size], key=lambda i: -lengths[i])
        batches += [chunk[i: i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]


def example_lengths(examples: Sequence[Any]) -> list[int] | None:
    """Tokens per training example (a sequence with `input_ids`, or a dict of them, e.g. the KD
    pair {"student", "teacher"}: their sum, the cost of the step), None when unknown."""
    def size(x: Any) -> int | None:
        if hasattr(x, "input_ids"):
            return len(x.input_ids)
        if isinstance(x, dict) and x:
            parts = [size(v) for v in x.values()]
            return None if None in parts else sum(parts)  # type: ignore[arg-type]
        return None

    out = []
    for e in examples:
        n = size(e)
        if n is None:
            return None
        out.append(n)
    return out


def to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices only: decaying norm gains and biases pulls them towards 0, not towards a
    sensible value (the usual GPT/Llama recipe)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise ConfigError("the model has no trainable parameters")
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


RESUME_MISMATCH = ("checkpoint parameters not in the model: {missing}; the run dir belongs to a "
                   "different model or config (use a new --out)")


# ---- the loop ----------------------------------------------------------------------------------
def resume_point(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """(the newest usable checkpoint, its trainer_state) of `run_dir`, None for a fresh run.

    A checkpoint whose files are not as saved (`verify_checkpoint`) or whose trainer_state will
    not load (truncated) is renamed to `.corrupt-<name>` (kept for inspection, never read again)
    with a warning, and the one before it is tried."""
    for ckpt in checkpoints_newest_first(run_dir):
        problem, state = verify_checkpoint(ckpt), None
        if problem is None:
            try:
                state = load_trainer_state(ckpt, restore_rng=False)
            except Exception as e:  # noqa: BLE001 - a damaged file fails in torch/zip/pickle alike
                problem = f"trainer_state.pt does not load ({type(e).__name__}: {e})"
        if problem is None:
            if state is None or "loop" not in state:
                raise ConfigError(f"{ckpt}: checkpoint has no trainer_state to resume from; "
                                  "use a new --out directory")
            return ckpt, state
        aside = ckpt.with_name(f".corrupt-{ckpt.name}-{int(time.time())}")
        log.warning("%s is damaged: %s; set aside as %s, resuming from the checkpoint before it",
                    ckpt, problem, aside.name)
        ckpt.rename(aside)
    return None


def fit(task: TrainTask, cfg: TrainConfig, run_dir: str | Path, logger: Logger | None = None,
        show_progress: bool = True) -> FitResult:
    """Train `task.model` in place per `cfg`, checkpointing into `run_dir`; resumes from the
    newest usable checkpoint there (`resume_point`). Returns the best (by `cfg.select_metric`:
    valid loss, or a figure `task.validate` computes) and last checkpoints; stops early at
    `cfg.stop_at`.

    With `task.identity`, a run dir made by another identity (other settings or inputs) is never
    resumed: `train.identity.RunMismatchError` says what differs and what to do. The run dir's
    lock is held throughout (a second run into it waits).

    Launched as N processes (`accelerate launch`), every process calls `fit` with the same
    arguments; `train.runtime` says how the work is shared."""
    with locked_run_dir(run_dir, task.name):
        return _fit(task, cfg, Path(run_dir), logger, show_progress)


def _fit(task: TrainTask, cfg: TrainConfig, run_dir: Path, logger: Logger | None,
         show_progress: bool) -> FitResult:
    if not task.train_set:
        raise ConfigError(f"{task.name}: no training examples")
    run = _setup(task, cfg, run_dir, logger)
    show_progress = show_progress and run.rt.is_main
    _resume(run)
    _train(run, show_progress)
    return _finish(run, show_progress)


@dataclass
class _Run:
    """What the steps of one `fit` share: built by `_setup`, restored by `_resume`, advanced by
    `_train`, summed up by `_finish`."""

    task: TrainTask
    cfg: TrainConfig
    run_dir: Path
    rt: Runtime
    device: torch.device
    logger: Logger | None  # None on every process but rank 0
    governor: ThreadGovernor | None  # CPU thread count; None on GPUs
    threads_before: int  # restored at the end
    amp_dtype: torch.dtype | None  # autocast dtype; None: no autocast
    model: torch.nn.Module
    trained: torch.nn.Module  # the model as trained: DDP-wrapped when launched
    params: list[torch.nn.Parameter]  # the trainable ones (gradient clipping)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    state: LoopState
    last_path: Path | None = None  # the newest checkpoint written or resumed from
    last_metrics: dict[str, float] = field(default_factory=dict)  # newest logged figures

    def done(self) -> bool:
        s = self.state
        return s.step >= self.cfg.max_steps or s.stopped_early or s.reached_target

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def save(self, metrics: dict[str, float]) -> Path:
        """Every process calls it (their RNG states are gathered); rank 0 writes."""
        rt, state = self.rt, self.state
        rngs = rt.gather(capture_rng_state())
        path = self.run_dir / checkpoint_name(state.step)
        if rt.is_main:
            trainer_state = {
                "model": trainable_state(self.model), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "loop": asdict(state),
                "rng": rngs[0],  # save_checkpoint captures the same; kept for any saver
            }
            if rt.distributed:
                trainer_state["rng_by_rank"] = rngs
            path = self.task.save(path, state.step, metrics, trainer_state)
            _prune(self.run_dir, self.cfg.keep_checkpoints, keep=state.best_checkpoint)
        rt.wait()  # nobody reads or prunes the folder while rank 0 writes it
        return path


def _setup(task: TrainTask, cfg: TrainConfig, run_dir: Path, logger: Logger | None) -> _Run:
    """Claim the run dir, set threads and seeds, wrap the model, build optimizer, schedule and
    grad scaler (in this order: it fixes the random numbers each draws)."""
    rt = Runtime(cfg.device)
    device = rt.device
    with rt.main_first():  # rank 0 claims the folder; the others then find it claimed
        run_dir.mkdir(parents=True, exist_ok=True)
        if task.identity is not None:
            claim_run_dir(run_dir, task.identity)
    if not rt.is_main:
        logger = None
    threads_before = torch.get_num_threads()
    # CPU: all cores when the machine is idle, 1 when other jobs compete for them (3x faster
    # then; see train.threads); num_threads > 0 pins the count. N processes share the cores.
    governor = ThreadGovernor(cfg.num_threads, share=rt.world) if device.type == "cpu" else None
    amp_dtype = resolve_autocast(cfg.dtype, device)
    # the same initial weights everywhere (built before fit, and DDP broadcasts rank 0's), but
    # each process its own dropout masks; one process: seed as before
    seed_everything(cfg.seed + rt.rank)
    model = task.model
    if amp_dtype is not None:  # every forward below runs under autocast (model.lora)
        set_lora_input_casting(model, False)
    trained = rt.prepare(model, cfg.gradient_checkpointing)  # DDP-wrapped when launched
    trained.train()
    params = [p for p in model.parameters() if p.requires_grad]
    fused = (cfg.fused_adamw if cfg.fused_adamw is not None
             else device.type == "cuda" or amp_dtype == torch.bfloat16)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, fused=fused)
    from transformers import get_scheduler

    scheduler = get_scheduler(
        "constant_with_warmup" if cfg.schedule == "constant" else cfg.schedule, optimizer,
        num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.max_steps)
    # fp16 needs loss scaling (its exponent range underflows small grads); bf16 and fp32 do not
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    return _Run(task=task, cfg=cfg, run_dir=run_dir, rt=rt, device=device, logger=logger,
                governor=governor, threads_before=threads_before, amp_dtype=amp_dtype,
                model=model, trained=trained, params=params, optimizer=optimizer,
                scheduler=scheduler, scaler=scaler, state=LoopState(processes=rt.world))


def _resume(run: _Run) -> None:
    """Continue from the newest usable checkpoint in the run dir, if any: loop state, trainable
    weights, optimizer, schedule, grad scaler and (last) every process's RNG state."""
    rt, cfg = run.rt, run.cfg
    # rank 0 clears what a killed run left, and sets a damaged newest checkpoint aside, before
    # anyone reads
    with rt.main_first():
        if rt.is_main:
            _clear_leftovers(run.run_dir)
        resumed = resume_point(run.run_dir)
    if resumed is None:
        return
    resume_from, ts = resumed
    state = run.state = LoopState.from_dict(ts["loop"])
    if state.processes != rt.world and not run.done():
        raise ConfigError(
            f"{resume_from}: this run trains on {state.processes} process(es) (global batch "
            f"{cfg.batch_size * cfg.grad_accum * state.processes}), this launch has {rt.world}: "
            f"resume it with {state.processes} (--num-processes), or train into a new --out")
    load_trainable_state(run.model, ts["model"], RESUME_MISMATCH)
    run.optimizer.load_state_dict(ts["optimizer"])
    run.scheduler.load_state_dict(ts["scheduler"])
    run.scaler.load_state_dict(ts["scaler"])
    run.last_path = resume_from
    # last: nothing after this may draw random numbers. Each process gets its own state
    # (rng_by_rank, written by launched runs); a single-process checkpoint has only "rng"
    restore_rng_state(ts.get("rng_by_rank", [ts["rng"]])[rt.rank])


@dataclass
class _EpochBatches:
    """The batches of the current epoch (`batch_order`), computed once per epoch."""

    n: int
    batch_size: int
    seed: int
    lengths: list[int] | None  # length-grouped batches when known (far less padding)
    epoch: int = -1
    batches: list[list[int]] = field(default_factory=list)

    def of(self, epoch: int) -> list[list[int]]:
        if epoch != self.epoch:
            self.epoch = epoch
            self.batches = batch_order(self.n, self.batch_size, self.seed, epoch, self.lengths)
        return self.batches


@dataclass
class _Window:
    """Sums over the steps since the last log line."""

    sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    steps: int = 0
    seconds: float = 0.0  # spent in train steps (not evaluating or saving)
    tokens: int = 0  # this process's

    def reset(self) -> None:
        self.sums.clear()
        self.steps, self.seconds, self.tokens = 0, 0.0, 0


def _train(run: _Run, show_progress: bool) -> None:
    """Optimizer steps until max_steps, an early stop or the target; logs every `log_every`,
    validates every `eval_every`, saves when the selection figure improves, every
    `checkpoint_every` and at the end."""
    task, cfg, state = run.task, run.cfg, run.state
    epochs = _EpochBatches(len(task.train_set), cfg.batch_size, cfg.seed,
                           example_lengths(task.train_set))
    window = _Window()
    done = run.done()
    with progress(disable=not show_progress or done) as bar:
        bar_task = bar.add_task(task.name, total=cfg.max_steps, completed=state.step)
        while not done:
            if run.governor:
                run.governor.update()
            t_step = time.perf_counter()
            _train_step(run, epochs, window)
            window.steps += 1
            window.seconds += time.perf_counter() - t_step  # eval and saving are not training time
            if state.step % cfg.log_every == 0 or state.step == cfg.max_steps:
                _log_window(run, window, bar, bar_task)
                window.reset()
            bar.update(bar_task, completed=state.step)
            improved = False
            if cfg.eval_every and task.valid_set and state.step % cfg.eval_every == 0:
                improved = _validate(run)
            done = run.done()
            due = cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0
            if improved or due or done:
                run.last_path = run.save(run.last_metrics)


def _step_batches(run: _Run, epochs: _EpochBatches) -> list[list[int]]:
    """The next step's micro-batches of every process, advancing the position in the epoch."""
    state = run.state
    step_batches = []
    for _ in range(run.cfg.grad_accum * run.rt.world):
        batches = epochs.of(state.epoch)
        step_batches.append(batches[state.batch_in_epoch])
        state.batch_in_epoch += 1
        if state.batch_in_epoch == len(batches):
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    return step_batches


def _train_step(run: _Run, epochs: _EpochBatches, window: _Window) -> None:
    """One optimizer step over this process's share of the step's micro-batches; adds the
    losses, metrics and tokens to `window`."""
    task, cfg, rt = run.task, run.cfg, run.rt
    run.optimizer.zero_grad(set_to_none=True)
    mine = rt.my_batches(_step_batches(run, epochs))
    for j, idx in enumerate(mine):
        batch = to_device(task.collate([task.train_set[i] for i in idx]), run.device)
        with rt.sync_gradients(run.trained, last=j == len(mine) - 1):
            with run.autocast():
                out = task.compute_loss(run.trained, batch)
            # mean of micro-batch means (DDP then averages over processes): each micro-batch
            # weighs the same, as one big batch would if the micro-batches hold equally many
            # caption tokens
            run.scaler.scale(out.loss / cfg.grad_accum).backward()
        window.sums["loss"] += out.loss.item() / cfg.grad_accum
        for k, v in out.metrics.items():
            window.sums[k] += v / cfg.grad_accum
        window.tokens += out.n_tokens
        del out, batch
    run.scaler.unscale_(run.optimizer)
    if cfg.max_grad_norm > 0:
        window.sums["grad_norm"] += float(torch.nn.utils.clip_grad_norm_(run.params, cfg.max_grad_norm))
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    run.state.step += 1


def _log_window(run: _Run, window: _Window, bar: Any, bar_task: Any) -> None:
    """Log the window's means (over processes), learning rate and speed; show them on the bar."""
    rt = run.rt
    dt = max(window.seconds, 1e-9)
    logged = rt.mean({f"train/{k}": v / window.steps for k, v in window.sums.items()})
    logged.update({"lr": run.scheduler.get_last_lr()[0], "steps_per_s": window.steps / dt,
                   "tokens_per_s": rt.total(window.tokens) / dt})
    if run.device.type == "cuda":
        logged["peak_mem_gb"] = torch.cuda.max_memory_allocated(run.device) / 2**30
    if run.logger:
        run.logger.log_metrics(logged, run.state.step)
    run.last_metrics.update(logged)
    kl = logged.get("train/kl")
    bar.update(bar_task, description=(
        f"{run.task.name} loss {logged['train/loss']:.3f}"
        + (f" kl {kl:.3f}" if kl is not None else "")
        + f" {logged['tokens_per_s']:.0f} tok/s"))


def _validate(run: _Run) -> bool:
    """Evaluate, log, and track the selection figure: the best value and checkpoint, early
    stopping and the target. True when the figure improved (the caller saves)."""
    task, cfg, state, rt = run.task, run.cfg, run.state, run.rt
    val = evaluate(task, run.model, cfg, run.device, run.autocast, rt)
    if task.validate is not None:
        # generated captions: rank 0 computes them, every process gets the figures
        extra = _extra_validation(task, run.model, run.autocast) if rt.is_main else None
        val.update(rt.broadcast(extra))
    if run.logger:
        run.logger.log_metrics(val, state.step)
    run.last_metrics.update(val)
    value = _selection_value(cfg, val)
    better = (state.best_value is None
              or (value > state.best_value if cfg.select_mode == "max" else value < state.best_value))
    improved = False
    if better:
        state.best_value, state.bad_evals, improved = value, 0, True
        state.best_checkpoint = checkpoint_name(state.step)
    else:
        state.bad_evals += 1
        patience = cfg.early_stopping_patience
        state.stopped_early = bool(patience) and state.bad_evals >= patience
    if cfg.stop_at is not None:
        state.reached_target = (value >= cfg.stop_at if cfg.select_mode == "max"
                                else value <= cfg.stop_at)
    return improved


def _finish(run: _Run, show_progress: bool) -> FitResult:
    """Restore threads and activation checkpointing, write train_summary.json (rank 0), say why
    training stopped early; the best and last checkpoints."""
    cfg, state = run.cfg, run.state
    if run.governor:
        torch.set_num_threads(run.threads_before)
    if run.amp_dtype is not None:
        set_lora_input_casting(run.model, True)
    if cfg.gradient_checkpointing:
        run.model.activation_checkpointing_disable()  # the caller may generate with it next
    last_path = run.last_path
    assert last_path is not None  # the loop ran at least once or resumed from a checkpoint
    best = run.run_dir / state.best_checkpoint if state.best_checkpoint else last_path
    result = FitResult(
        best_checkpoint=best, last_checkpoint=last_path, step=state.step,
        best_valid_loss=state.best_value if cfg.select_metric == "valid/loss" else None,
        stopped_early=state.stopped_early, metrics=run.last_metrics, select_metric=cfg.select_metric,
        best_value=state.best_value, reached_target=state.reached_target)
    if run.rt.is_main:
        with atomic_write(run.run_dir / "train_summary.json") as f:
            json.dump({**asdict(result), "best_checkpoint": str(best),
                       "last_checkpoint": str(last_path)}, f, indent=2)
    if state.stopped_early and show_progress:
        print(f"{run.task.name}: early stop at step {state.step} (no {cfg.select_metric} improvement "
              f"in {state.bad_evals} evals)", file=sys.stderr)
    if state.reached_target and show_progress:
        print(f"{run.task.name}: {cfg.select_metric} reached {cfg.stop_at} at step {state.step}",
              file=sys.stderr)
    return result


def _extra_validation(task: TrainTask, model: torch.nn.Module,
                      autocast: Callable[[], contextlib.AbstractContextManager]) -> dict[str, float]:
    model.eval()
    try:
        with torch.no_grad(), autocast():
            return {k: v for k, v in task.validate(model).items() if v is not None}
    finally:
        model.train()


def _selection_value(cfg: TrainConfig, val: dict[str, float]) -> float:
    if cfg.select_metric not in val:
        raise ConfigError(f"train.select_metric {cfg.select_metric!r} is not among this stage's "
                          f"validation figures ({', '.join(sorted(val))}); pick one of them")
    return float(val[cfg.select_metric])


@torch.no_grad()
def evaluate(task: TrainTask, model: torch.nn.Module, cfg: TrainConfig, device: torch.device,
             autocast: Callable[[], contextlib.AbstractContextManager],
             rt: Runtime | None = None) -> dict[str, float]:
    """Mean loss (and the task's metrics) over the first `eval_batches` valid batches, in file
    order: the same examples at every evaluation, so values are comparable across steps.
    Launched, each process evaluates every N-th batch and the sums are combined."""
    model.eval()
    sums: dict[str, float] = defaultdict(float)
    n = 0
    try:
        starts = range(0, len(task.valid_set), cfg.batch_size)
        if cfg.eval_batches:
            starts = starts[: cfg.eval_batches]
        if rt is not None and rt.distributed:
            starts = starts[rt.rank::rt.world]
        for s in starts:
            chunk = list(task.valid_set[s: s + cfg.batch_size])
            with autocast():
                out = task.compute_loss(model, to_device(task.collate(chunk), device))
            sums["loss"] += out.loss.item() * len(chunk)  # weighted: the last batch may be short
            for k, v in out.metrics.items():
                sums[k] += v * len(chunk)
            n += len(chunk)
    finally:
        model.train()
    if rt is not None and rt.distributed:
        parts = rt.gather((dict(sums), n))
        sums, n = defaultdict(float), 0
        for part, count in parts:
            for k, v in part.items():
                sums[k] += v
            n += count
    return {f"valid/{k}": v / n for k, v in sums.items()}


def _prune(run_dir: Path, keep_last: int, keep: str | None) -> None:
    """Delete all but the newest `keep_last` step checkpoints, never `keep` (the best).

    A checkpoint is renamed to a hidden `.del-*` name before it is deleted, so a kill during the
    deletion never leaves a half-deleted `step-*` directory where a checkpoint is expected."""
    steps = sorted(p for p in run_dir.iterdir() if p.is_dir() and STEP_DIR.fullmatch(p.name))
    for p in steps[:-keep_last]:
        if p.name != keep:
            with contextlib.suppress(OSError):
                discard_dir(p)


def _clear_leftovers(run_dir: Path) -> None:
    """Remove what a killed run left behind: `.tmp-step-*` (a save that never finished),
    `.old-step-*` / `.del-step-*` (a replace or prune that never finished). None is a usable
    checkpoint (latest_checkpoint never reads dot-directories); the caller holds the run dir's
    lock, so none of them belongs to a run still working."""
    for p in run_dir.iterdir():
        if p.is_dir() and p.name.startswith((".tmp-step-", ".old-step-", ".del-step-")):
            shutil.rmtree(p, ignore_errors=True)
