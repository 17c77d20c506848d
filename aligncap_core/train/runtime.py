"""Where a training loop runs: one process, or one of N started by `accelerate launch` (DDP).

`fit` does everything device- and process-related through a `Runtime`, so the loop reads the
same on a 2-core CPU and on 8 GPUs:

    rt = Runtime(cfg)                 # Hugging Face Accelerate: the process group, if launched
    model = rt.prepare(model)         # to the device; DistributedDataParallel when N > 1
    for micro in rt.my_batches(...):  # this process's share of the step's micro-batches
        with rt.sync_gradients(model, last):  # DDP averages gradients on the last one only
            loss.backward()
    rt.mean({...}) / rt.gather(obj) / rt.wait()   # logged figures, RNG states, barriers

Single process (the default path, `make demo`): Accelerate creates no process group and
wraps nothing; the loop computes exactly what it did before this module existed.

**Batches.** `train.batch_size` is per process and per micro-batch (the Hugging Face
convention); one optimizer step consumes `grad_accum * N` consecutive micro-batches of the
seeded global order (`loop.batch_order`), and process r runs those at positions r, r + N, ...
DDP averages the gradients over processes, the loop over micro-batches, so a step's gradient is
the mean over all `grad_accum * N` micro-batch losses: 2 processes with grad_accum 1 train what
1 process with grad_accum 2 trains (to float rounding; tests/core/test_distributed.py). The
global batch is `batch_size * grad_accum * N`: a run resumes only under the same N.

**Precision.** `train.weights_dtype` sets the dtype the frozen base is loaded in (bf16 on a GPU
by default: a 7B base takes 14 GB instead of 28); trainable parameters are kept in fp32 whatever
it is (`prepare`), since Adam updates of LoRA and token rows round away in bf16; the forward
runs under autocast (`train.dtype`). `auto` means bf16 on a GPU that has it and on a CPU with
bf16 matrix units that are measured faster (`aligncap_core.precision`: AMX, AVX512-BF16), fp32
on any other CPU.

**Rank 0 only**: claiming and clearing the run folder, checkpoints, metric logs (JSONL, MLflow),
the progress bar. Every process computes the loop's decisions (best checkpoint, early stop)
from the same reduced figures, so they never diverge.

FSDP is not offered: sharded parameters would need gathering for the adapter checkpoints
(`model.checkpoint`), which is not written yet; DDP with bf16 base weights fits a 7B base on
one 80 GB GPU per process.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

from aligncap_core.errors import ConfigError

# Environment variables a launcher (torchrun / accelerate launch) sets in every process.
LAUNCH_ENV = ("LOCAL_RANK", "WORLD_SIZE")


def launched() -> bool:
    """True inside a process started by `accelerate launch` / torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "LOCAL_RANK" in os.environ


def _state() -> Any:
    """Accelerate's process state (creates the process group when launched; cheap otherwise)."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def is_main_process() -> bool:
    return not launched() or _state().is_main_process


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first (claims a run folder, builds a base), the others after it,
    when what it wrote is there. A no-op in a single process."""
    if not launched():
        yield
        return
    with _state().main_process_first():
        yield


def wait_for_everyone() -> None:
    if launched():
        _state().wait_for_everyone()


def resolve_device(name: str) -> torch.device:
    """`train.device` -> the device this process trains on (a launched process: its own GPU)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is available; use auto or cpu")
    if name == "cpu" or not torch.cuda.is_available():
        if name == "cpu" and torch.cuda.is_available() and launched():
            raise ConfigError("train.device=cpu in a multi-process launch on a GPU machine: the "
                              "processes talk over NCCL, which needs GPUs; use device auto")
        return torch.device("cpu")
    return _state().device if launched() else torch.device("cuda")


def resolve_autocast(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `train.dtype`; None = plain fp32. auto: bf16 on a GPU that
    supports it and on a CPU whose bf16 matrix units are measured faster (`precision.cpu_bf16`:
    AMX, AVX512-BF16), else fp32."""
    if name == "auto":
        if device.type == "cuda":
            ok = torch.cuda.is_bf16_supported()
        else:
            from aligncap_core.precision import cpu_bf16

            ok = cpu_bf16().use_bf16
        return torch.bfloat16 if ok else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def precision_params(autocast: str, weights: torch.dtype, device_name: str = "auto") -> dict[str, Any]:
    """What a stage runs in, for its logs and MLflow params: `precision.autocast` (the dtype the
    forward runs in), `precision.weights` (the frozen base's), and on a CPU what the bf16 probe
    found (`precision.cpu_bf16.*`: units, measured matmul speedup, the reason of the choice)."""
    from aligncap_core.precision import cpu_bf16, dtype_name

    device = resolve_device(device_name)
    out: dict[str, Any] = {"precision.dtype": autocast,
                           "precision.autocast": dtype_name(resolve_autocast(autocast, device)),
                           "precision.weights": dtype_name(weights), "precision.device": device.type}
    if device.type == "cpu":
        out.update({f"precision.{k}": v for k, v in cpu_bf16().params().items()})
    return out


def precision_line(params: dict[str, Any]) -> str:
    """`precision_params` as one line: "bf16 autocast, base weights in bf16 on cpu (dtype auto;
    CPU bf16 probe: amx_bf16, ...)"."""
    amp = params["precision.autocast"]
    why = params.get("precision.cpu_bf16.reason")
    return (f"{amp + ' autocast' if amp != 'fp32' else 'fp32'}, base weights in "
            f"{params['precision.weights']} on {params['precision.device']} "
            f"(dtype {params['precision.dtype']}" + (f"; CPU bf16 probe: {why})" if why else ")"))


def resolve_weights_dtype(weights: str, autocast: str, device_name: str = "auto") -> torch.dtype:
    """The dtype frozen base weights are loaded in: `weights` ("auto": bf16 where autocast runs
    in bf16, i.e. a GPU that supports it or a CPU with bf16 units measured faster; else fp32).
    In bf16 a frozen weight is not cast again at every op, and the activations between the
    layers stay bf16 (half the memory traffic of the elementwise ops that dominate a CPU step of
    the tiny model). Low-precision weights need autocast in a low precision too (fp32
    activations into a bf16 linear layer are a dtype error)."""
    device = resolve_device(device_name)
    amp = resolve_autocast(autocast, device)
    if weights == "auto":
        return torch.bfloat16 if amp == torch.bfloat16 else torch.float32
    want = {"fp32": torch.float32, "bf16": torch.bfloat16}[weights]
    if want != torch.float32 and amp is None:
        raise ConfigError(f"train.weights_dtype={weights} needs autocast (train.dtype bf16 or auto "
                          "on a GPU); with train.dtype fp32 use weights_dtype fp32")
    return want


def upcast_trainable(model: torch.nn.Module) -> int:
    """Trainable parameters to fp32 (a bf16 base leaves LoRA / token rows in bf16 otherwise);
    returns how many were cast."""
    n = 0
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
            n += 1
    return n


class Runtime:
    """The process this loop runs in (see the module doc). One per `fit` call."""

    def __init__(self, device: str = "auto"):
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState
        from accelerate.utils import DistributedDataParallelKwargs

        self.device = resolve_device(device)
        # A DPO round (transformers' Trainer) may have configured Accelerate with its own mixed
        # precision in this process; this loop does its own autocast, so it starts afresh (the
        # process group, held by PartialState, is kept)
        AcceleratorState._reset_state()
        # find_unused_parameters=False: every trainable parameter takes part in each forward
        # (LoRA on every adapted projection, the token rows); checking would cost a graph walk
        ddp = DistributedDataParallelKwargs(find_unused_parameters=False)
        self.acc = Accelerator(cpu=self.device.type == "cpu" and not torch.cuda.is_available(),
                               mixed_precision="no", kwargs_handlers=[ddp])
        self.world = self.acc.num_processes
        self.rank = self.acc.process_index
        self.is_main = self.acc.is_main_process

    @property
    def distributed(self) -> bool:
        return self.world > 1

    # ---- model ---------------------------------------------------------------------------------
    def prepare(self, model: torch.nn.Module, gradient_checkpointing: bool = False) -> torch.nn.Module:
        """`model` on this process's device, trainable parameters in fp32, DDP-wrapped when
        launched. Returns the module to train through; `model` itself stays the unwrapped one
        (checkpoints, evaluation and the teacher pass use it)."""
        upcast_trainable(model)
        if gradient_checkpointing:
            # non-reentrant: works with frozen inputs (LoRA) and DDP without extra hooks
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            if getattr(model, "config", None) is not None:
                model.config.use_cache = False
        model.to(self.device)
        if not self.distributed:
            return model
        return self.acc.prepare_model(model, device_placement=False)

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return self.acc.unwrap_model(model)

    def sync_gradients(self, model: torch.nn.Module, last: bool) -> contextlib.AbstractContextManager:
        """Around a micro-batch's backward: DDP all-reduces gradients only on the step's last."""
        if not self.distributed or last:
            return contextlib.nullcontext()
        return self.acc.no_sync(model)

    # ---- data ----------------------------------------------------------------------------------
    def my_batches(self, step_batches: list[list[int]]) -> list[list[int]]:
        """This process's micro-batches of one step (`grad_accum * world` of them, in order)."""
        if len(step_batches) % self.world:
            raise ValueError(f"{len(step_batches)} micro-batches for {self.world} processes")
        return step_batches[self.rank::self.world]

    # ---- collectives ---------------------------------------------------------------------------
    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """The mean over processes of each figure (every process passes the same keys)."""
        if not self.distributed or not values:
            return dict(values)
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        t = self.acc.reduce(t, reduction="mean")
        return dict(zip(keys, t.tolist(), strict=True))

    def total(self, value: float) -> float:
        if not self.distributed:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        return float(self.acc.reduce(t, reduction="sum").item())

    def gather(self, obj: Any) -> list[Any]:
        """`[obj of rank 0, obj of rank 1, ...]` on every process (picklable objects)."""
        if not self.distributed:
            return [obj]
        from accelerate.utils import gather_object

        return gather_object([obj])

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every process."""
        if not self.distributed:
            return obj
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([obj], from_process=0)[0]

    def wait(self) -> None:
        if self.distributed:
            self.acc.wait_for_everyone()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        if not self.distributed:
            yield
            return
        with self.acc.main_process_first():
            yield
