"""The oneDNN primitive cache cap (aligncap_core/__init__.py; docs/PERFORMANCE.md item 6d) is set
for every process that imports the library, before any matmul, and a user's value is kept."""

from __future__ import annotations

import os
import subprocess
import sys


def _capacity(env: dict[str, str]) -> str:
    code = "import aligncap_core, os; print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


def test_the_cache_is_capped_and_a_users_value_is_kept():
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    assert _capacity(env) == "16"
    assert _capacity({**env, "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "256"}) == "256"
