"""What the integration tests share: the `aligncap` CLI in a clean environment, and a whole
local stack (`aligncap up --s3` on free 127.0.0.1 ports) that is always taken down."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from aligncap_ops import procs

REPO = Path(__file__).resolve().parents[2]
ALIGNCAP = [sys.executable, "-m", "aligncap_core.cli"]


def clean_env() -> dict[str, str]:
    # the test's own shell must not point the CLI at another server or store
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("PREFECT_API", "MLFLOW_TRACKING", "PREFECT_RESULTS", "AWS_ENDPOINT"))}


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*ALIGNCAP, *args], capture_output=True, text=True, timeout=timeout,
                          env=clean_env(), cwd=REPO)


@contextlib.contextmanager
def running_stack(home: Path, *, deploy: bool) -> Iterator[tuple[dict, subprocess.CompletedProcess]]:
    """`aligncap up --s3` into `home` (with or without deploying prefect.yaml); yields (the
    stack.json state, the `up` result); `aligncap down` afterwards, whatever happened."""
    for exe in ("prefect", "mlflow", "moto_server"):
        if not (Path(sys.executable).parent / exe).exists():
            pytest.skip(f"{exe} not installed next to {sys.executable}")
    ports = [str(procs.free_port()) for _ in range(3)]
    try:
        r = cli("up", "--s3", "--home", str(home), "--prefect-port", ports[0], "--mlflow-port",
                ports[1], "--s3-port", ports[2], *([] if deploy else ["--no-deploy"]))
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        yield json.loads((home / "stack.json").read_text()), r
    finally:
        down = cli("down", "--home", str(home))
        print(f"stack down: {down.stderr.strip()}")
