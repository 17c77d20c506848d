"""How many intra-op threads CPU work should use right now: all usable CPUs on an idle machine,
one when other processes compete for them.

Why (docs/PERFORMANCE.md, measured on the shared 2-core dev machines): an OpenMP parallel region
ends at a barrier that waits for every thread of the team. When other jobs keep the cores busy,
one of our two threads is often descheduled, and every one of the hundreds of small ops in a
training step of the tiny model waits a scheduler time slice for it. Under a load of ~9 a KD step
took 25 s on 2 threads and 8 s on 1 (about 1 s on an idle machine with 2); the codec's LSTM ran
20x slower. On an idle machine 2 threads are faster. The signal is the kernel's CPU pressure
(`/proc/pressure/cpu`, "some avg10": share of the last 10 s in which a runnable task waited for a
CPU), with the 1-minute load average as the fallback.

Results do not depend on the choice: the tiny preset's loss and gradients were bit-identical on
1 and 2 threads (MKL splits GEMMs by rows/columns, not along the reduction), so switching
between steps keeps a run reproducible. The codec is different (oneDNN convs are not
bit-identical across thread counts): it always runs single-threaded ops (`codec.tokenizer`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

PSI = Path("/proc/pressure/cpu")
BUSY_PSI = 40.0  # % of time some task waited: other jobs are competing, drop to 1 thread
IDLE_PSI = 15.0  # below this, go back to every usable CPU (a gap between the two = hysteresis)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's core count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_pressure() -> float | None:
    """'some avg10' of /proc/pressure/cpu in percent, None where the kernel has no PSI."""
    try:
        first = PSI.read_text().split("\n", 1)[0]  # "some avg10=82.03 avg60=... total=..."
        return float(first.split()[1].split("=")[1])
    except (OSError, IndexError, ValueError):
        return None


def threads_for_load(n_max: int, current: int = 1) -> int:
    """`n_max` threads while the CPUs are idle, 1 while other jobs compete for them, `current`
    in between (hysteresis). `current`: the intra-op threads this process runs now (its own
    threads do not count as competition where the load average stands in for PSI)."""
    if n_max <= 1:
        return 1
    psi = cpu_pressure()
    if psi is None:  # no PSI: load beyond what our own threads add
        others = os.getloadavg()[0] - current if hasattr(os, "getloadavg") else 0.0
        return 1 if others > 1.0 else n_max
    if psi > BUSY_PSI:
        return 1
    if psi < IDLE_PSI:
        return n_max
    return current


class ThreadGovernor:
    """Sets torch's intra-op threads for the calling thread's next ops, re-checked at most every
    `every_s` seconds. `fixed` > 0 pins the count (config `num_threads`) and never adapts;
    `share`: processes of one launch that run on these CPUs (each gets its part).

        gov = ThreadGovernor()
        for step in ...:
            gov.update()  # cheap: a file read every few seconds
    """

    def __init__(self, fixed: int = 0, every_s: float = 5.0, share: int = 1):
        self.fixed = fixed
        self.every_s = every_s
        # `share` processes of one launch (train.runtime) split the CPUs between them
        self.n_max = max(1, usable_cpus() // max(1, share))
        self.threads = fixed or self.n_max
        self.switches = 0
        self._checked = float("-inf")
        torch.set_num_threads(self.threads)
        self.update(force=True)

    def choose(self) -> int:
        if self.fixed or self.n_max == 1:
            return self.fixed or 1
        return threads_for_load(self.n_max, self.threads)

    def update(self, force: bool = False) -> int:
        now = time.monotonic()
        if force or now - self._checked >= self.every_s:
            self._checked = now
            n = self.choose()
            if n != self.threads:
                self.threads, self.switches = n, self.switches + 1
            if torch.get_num_threads() != self.threads:
                torch.set_num_threads(self.threads)
        return self.threads
