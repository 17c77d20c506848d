"""Which dtype CPU work runs in: bf16 where the CPU has bf16 matrix units and they are measured
faster, fp32 everywhere else.

Many server CPUs have bf16 matrix units: Intel AMX (`amx_bf16`, 4th-gen Xeon and later) and
AVX512-BF16 (`avx512_bf16`: Cooper Lake, AMD Zen 4). On a 2-core Xeon with AMX a bf16 matmul
ran 6-8x faster than fp32; a CPU without them (AVX2 only) emulates bf16 and is slower than
fp32. So `dtype: auto` on a CPU means: bf16 when the CPU flags name a bf16 unit *and* a small
bf16 matmul, timed against the same fp32 matmul on one thread, runs at least
`MIN_MATMUL_SPEEDUP` times faster; else fp32. The verdict is measured once per machine (CPU
model, flags, torch version) and cached on disk (`cache_path`), so a process pays the ~0.2 s
measurement only the first time.

    >>> report = cpu_bf16()
    >>> report.use_bf16, report.reason
    (True, 'amx_bf16, avx512_bf16: bf16 matmul 7.3x fp32 (1 thread, 512x256x688)')

`ALIGNCAP_CPU_BF16=0` forces fp32 and `=1` bf16 wherever `auto` is asked (the test suite sets
0, so its figures do not depend on the machine it runs on); an explicit `dtype: fp32` or
`bf16` in a config always wins.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from aligncap_core.errors import ConfigError

ENV_OVERRIDE = "ALIGNCAP_CPU_BF16"  # "0": never bf16 on a CPU, "1": always, unset/"auto": measure
BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo names of the bf16 matrix / dot units
# A whole training step of the tiny model gains far less than its matmuls do (most of a step is
# elementwise work and attention, docs/PERFORMANCE.md): with AMX the matmul is 6-8x faster and
# the KD step ~2x. 2x on the matmul is where the step still comes out ahead.
MIN_MATMUL_SPEEDUP = 2.0
# (m, k, n) of the probe: a third of a tiny-model batch through its MLP's up projection
PROBE_SHAPE = (512, 256, 688)
CACHE_VERSION = 1


@dataclass
class CpuBf16:
    """What `cpu_bf16` found. units: the bf16 unit flags of this CPU ([] = none); the GFLOP/s
    figures are None when nothing was timed (no units, or forced by ALIGNCAP_CPU_BF16)."""

    use_bf16: bool
    reason: str
    cpu: str
    units: list[str] = field(default_factory=list)
    fp32_gflops: float | None = None
    bf16_gflops: float | None = None
    torch: str = torch.__version__

    @property
    def speedup(self) -> float | None:
        if not self.fp32_gflops or not self.bf16_gflops:
            return None
        return self.bf16_gflops / self.fp32_gflops

    def params(self) -> dict[str, Any]:
        """Flat figures for logs and MLflow params."""
        sp = self.speedup
        return {"cpu_bf16.units": ",".join(self.units) or "none", "cpu_bf16.use": self.use_bf16,
                "cpu_bf16.matmul_speedup": round(sp, 2) if sp else None, "cpu_bf16.reason": self.reason}


def cpu_model() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The feature flags of the first CPU in /proc/cpuinfo (empty where there is none)."""
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def bf16_units(flags: set[str] | None = None) -> list[str]:
    flags = cpu_flags() if flags is None else flags
    return [f for f in BF16_FLAGS if f in flags]


def time_matmuls(shape: tuple[int, int, int] = PROBE_SHAPE, reps: int = 7) -> tuple[float, float]:
    """(fp32, bf16) GFLOP/s of one `shape` matmul on one intra-op thread, each the best of
    `reps` rounds timed alternately (a neighbour's load burst hits both alike)."""
    m, k, n = shape
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
    pairs = {torch.float32: (a, b), torch.bfloat16: (a.bfloat16(), b.bfloat16())}
    best = {dt: float("inf") for dt in pairs}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for x, y in pairs.values():  # warm-up: the first call packs / JITs kernels
            torch.mm(x, y)
        for _ in range(reps):
            for dt, (x, y) in pairs.items():
                t = time.perf_counter()
                for _ in range(3):
                    torch.mm(x, y)
                best[dt] = min(best[dt], (time.perf_counter() - t) / 3)
    finally:
        torch.set_num_threads(threads)
    flops = 2 * m * k * n
    return flops / best[torch.float32] / 1e9, flops / best[torch.bfloat16] / 1e9


def decide(units: list[str], fp32_gflops: float | None, bf16_gflops: float | None,
           cpu: str = "") -> CpuBf16:
    """The verdict for measured figures (pure: what `cpu_bf16` applies)."""
    if not units:
        return CpuBf16(False, "no bf16 units (CPU flags have neither amx_bf16 nor avx512_bf16)", cpu)
    assert fp32_gflops and bf16_gflops
    sp = bf16_gflops / fp32_gflops
    m, k, n = PROBE_SHAPE
    what = f"{', '.join(units)}: bf16 matmul {sp:.1f}x fp32 (1 thread, {m}x{k}x{n})"
    ok = sp >= MIN_MATMUL_SPEEDUP
    return CpuBf16(ok, what + ("" if ok else f", below {MIN_MATMUL_SPEEDUP}x: fp32"), cpu,
                   list(units), round(fp32_gflops, 1), round(bf16_gflops, 1))


def cache_path() -> Path:
    """Where the verdict is kept: cpu_bf16.json in aligncap's cache folder ($ALIGNCAP_CACHE,
    else ~/.cache/aligncap; `store.cache_root`)."""
    from aligncap_core.store import cache_root

    return cache_root() / "cpu_bf16.json"


_MEMO: dict[str, CpuBf16] = {}


def cpu_bf16(refresh: bool = False) -> CpuBf16:
    """Whether CPU work should run in bf16 on this machine (module doc). Cached per process and
    on disk per (CPU model, flags, torch version); `refresh` measures again."""
    forced = os.environ.get(ENV_OVERRIDE, "auto").strip().lower()
    if forced not in ("0", "1", "auto", ""):
        raise ConfigError(f"{ENV_OVERRIDE}={forced!r}: use 0 (fp32), 1 (bf16) or auto")
    cpu, flags = cpu_model(), cpu_flags()
    units = bf16_units(flags)
    if forced in ("0", "1"):
        return CpuBf16(forced == "1", f"{ENV_OVERRIDE}={forced}", cpu, units)
    key = json.dumps([CACHE_VERSION, cpu, sorted(units), torch.__version__])
    if not refresh and key in _MEMO:
        return _MEMO[key]
    path = cache_path()
    if not refresh and units:
        try:
            saved = json.loads(path.read_text())
            if saved.get("key") == key:
                _MEMO[key] = CpuBf16(**saved["report"])
                return _MEMO[key]
        except (OSError, ValueError, TypeError, KeyError):
            pass  # no cache yet, or an unreadable one: measure
    report = decide(units, *(time_matmuls() if units else (None, None)), cpu=cpu)
    _MEMO[key] = report
    if units:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_text(json.dumps({"key": key, "report": asdict(report)}, indent=2))
            tmp.replace(path)
        except OSError:
            pass  # a read-only home: measure again next time
    return report


def slow_cpu_note() -> str | None:
    """A warning for a run that will train on a CPU without bf16 matrix units (None on a GPU
    machine or a CPU with them): the demo's time budget is measured with them, and without
    them a user would otherwise find out an hour in (README, "How long the demo takes")."""
    if torch.cuda.is_available():
        return None
    r = cpu_bf16()
    if r.use_bf16:
        return None
    return (f"no GPU and no bf16 CPU work on this machine ({r.cpu}: {r.reason}): training and "
            "captioning run in fp32, several times slower than on a CPU with bf16 matrix units "
            "(Intel AMX, AVX512-BF16), where the demo's ~15-minute figure is measured; on a "
            "2-core AVX2-only CPU the demo took 46 minutes (README: \"How long the demo takes\")")


def cpu_dtype(name: str = "auto") -> torch.dtype:
    """The dtype CPU inference runs in for `name` (auto / fp32 / bf16)."""
    if name == "auto":
        return torch.bfloat16 if cpu_bf16().use_bf16 else torch.float32
    try:
        return {"fp32": torch.float32, "bf16": torch.bfloat16}[name]
    except KeyError:
        raise ConfigError(f"dtype must be auto, fp32 or bf16; got {name!r}") from None


def inference_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype a model is loaded in for generation / scoring on `device` (auto / fp32 /
    bf16): auto means bf16 on a GPU that supports it, `cpu_dtype("auto")` on a CPU."""
    if name == "auto" and device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return cpu_dtype(name)


def dtype_name(dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def for_generation(model: Any, dtype: torch.dtype) -> Any:
    """`model` (just loaded with base weights in `dtype`) wholly in `dtype`, in eval mode. peft
    loads adapters and token rows in fp32 beside a bf16 base (what training wants); when
    generating, every adapted op would then cast its input back and forth."""
    if dtype != torch.float32:
        model.to(dtype)
    return model.eval()
