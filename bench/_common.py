"""Shared pieces of the benchmark scripts: JSON output, interleaved timing, matmul peak, a
tiny-preset model with the demo's vocabulary.

These machines are shared and noisy (ENVIRONMENT.md), so every figure a script reports is a
ratio of two things timed in the same process, interleaved (A B A B ...), and each side is the
median of its repetitions: a burst of load from a neighbour hits both sides alike.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

# the demo's vocabulary: ~4096 BPE text tokens + <audio>, </audio> + 2 x 1024 audio tokens
TEXT_VOCAB = 4096
AUDIO_VOCAB = 2 + 2 * 1024


def scratch_dir(prefix: str) -> Path:
    """A temporary work folder removed when the script exits (a bench leaves nothing in /tmp)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def parser(doc: str | None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes, a few seconds: only checks that the script still works (CI)")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions per side")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads for the whole "
                    "run (0: chosen once at start from the machine's load, see train.threads)")
    return ap


def setup_threads(n: int) -> int:
    """Fix the intra-op threads for the whole run, so both sides of every ratio use the same."""
    from aligncap_core.train.threads import ThreadGovernor

    n = n or ThreadGovernor().threads
    torch.set_num_threads(n)
    return n


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}


def emit(name: str, result: dict[str, Any], smoke: bool) -> dict[str, Any]:
    """Print one JSON object (the script's whole output on stdout) and return it."""
    out = {"bench": name, "smoke": smoke, **result, "machine": machine()}
    print(json.dumps(out), flush=True)
    return out


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def interleaved(fns: dict[str, Callable[[], Any]], reps: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each fn over `reps` rounds, run A B A B ... (after `warmup` rounds)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(warmup + reps):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            dt = time.perf_counter() - t
            if r >= warmup:
                times[k].append(dt)
    return {k: statistics.median(v) for k, v in times.items()}


def matmul_peak(shapes: list[tuple[int, int, int]], reps: int = 5) -> dict[str, Any]:
    """Measured fp32 matmul FLOP/s at the given (m, k, n) shapes in this process; the best shape
    is the machine's peak as far as this workload is concerned."""
    best, by_shape = 0.0, {}
    for m, k, n in shapes:
        a, b = torch.randn(m, k), torch.randn(k, n)
        out = torch.empty(m, n)
        torch.mm(a, b, out=out)
        t = interleaved({"mm": lambda a=a, b=b, out=out: torch.mm(a, b, out=out)}, reps)["mm"]
        flops = 2 * m * k * n / t
        by_shape[f"{m}x{k}x{n}"] = round(flops / 1e9, 1)
        best = max(best, flops)
    return {"peak_gflops": round(best / 1e9, 3), "gflops_by_shape": by_shape}


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs torch executes in fn() (matmuls, convs, attention; elementwise ops are not counted,
    as in every MFU figure)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def tiny_model(preset: str = "tiny", vocab: int = TEXT_VOCAB + AUDIO_VOCAB, seed: int = 0) -> Any:
    """A random-init Llama of `preset` with the demo's vocabulary size (speed does not depend on
    what the weights have learned)."""
    from transformers import LlamaForCausalLM

    from aligncap_core.model.config import get_preset

    torch.manual_seed(seed)
    cfg = get_preset(preset).hf_config(vocab, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlamaForCausalLM(cfg)


def tiny_student(preset: str = "tiny", vocab: int = TEXT_VOCAB + AUDIO_VOCAB) -> Any:
    """tiny_model + the student's LoRA adapter and trainable audio rows (`model.lora`)."""
    from aligncap_core.model.config import LoraSettings
    from aligncap_core.model.lora import make_student

    model = tiny_model(preset, vocab)
    audio_ids = list(range(vocab - AUDIO_VOCAB, vocab))
    return make_student(model, audio_ids, LoraSettings())


def caption_batch(batch: int, prompt_len: int, caption_len: int, vocab: int, audio: bool,
                  seed: int = 0, spread: float = 0.5) -> dict[str, torch.Tensor]:
    """A right-padded training batch like `model.batching.pad_examples` builds: prompt (audio
    tokens for the student, text for the teacher) + a caption of `caption_len` text tokens.
    Prompt lengths vary over `spread` x prompt_len (+-25% by default) so there is padding, as
    in real batches; length-grouped training batches (`train.loop.batch_order`) vary ~10%."""
    from aligncap_core.model.batching import CaptionExample, pad_examples

    g = torch.Generator().manual_seed(seed)
    lo, hi = (vocab - AUDIO_VOCAB, vocab) if audio else (3, TEXT_VOCAB)
    caption = torch.randint(3, TEXT_VOCAB, (caption_len,), generator=g).tolist()
    exs = []
    for i in range(batch):
        n = max(2, int(prompt_len * (1 - spread / 2 + spread * i / max(batch - 1, 1))))
        prompt = [1] + torch.randint(lo, hi, (n - 1,), generator=g).tolist()
        exs.append(CaptionExample(prompt + caption, [-100] * n + caption, n, caption_len))
    return pad_examples(exs, pad_id=0)
