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


@pytest.fixture(scope="session")
def realdata_dir() -> Path:
    if not (REALDATA / "manifest.jsonl").exists():
        pytest.skip(f"real data not found at {REALDATA}")
    return REALDATA
