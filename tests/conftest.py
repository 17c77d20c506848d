"""Shared fixtures. Real data lives in ../shared/realdata (tests using it skip when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REALDATA = Path(os.environ.get("ALIGNCAP_REALDATA", REPO.parent / "shared" / "realdata"))

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")  # slow shared CI boxes
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# `dtype: auto` means bf16 on a CPU with fast bf16 units (aligncap_core.precision): the suite
# runs fp32 wherever it runs, so its figures do not depend on the machine; the bf16 paths are
# tested by name (tests/core/test_precision.py). Inherited by every subprocess a test starts.
os.environ.setdefault("ALIGNCAP_CPU_BF16", "0")


def pytest_collection_modifyitems(config, items):
    """The fast lane (`make test-fast`: -m "not integration and not slow") leaves out what starts
    servers: every test under tests/integration and tests/flows (the Prefect test server) is
    marked `integration` here, besides the modules that mark themselves."""
    for item in items:
        parts = Path(str(item.fspath)).relative_to(REPO).parts
        if parts[:2] in (("tests", "integration"), ("tests", "flows")):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def realdata_dir() -> Path:
    if not (REALDATA / "manifest.jsonl").exists():
        pytest.skip(f"real data not found at {REALDATA}")
    return REALDATA
