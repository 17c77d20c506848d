"""Small shared helpers: memory release between pipeline stages."""

from __future__ import annotations

import platform

import numpy as np
import pytest

from aligncap_core.utils import release_memory


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="malloc_trim is glibc's")
def test_release_memory_returns_freed_heap_pages():
    # 64 KB blocks sit below glibc's mmap threshold, so they live in the heap; the block
    # allocated last pins the heap's top, so free() alone cannot give the rest back
    blocks = [np.ones(8192) for _ in range(3000)]  # ~190 MB
    pin = np.ones(8192)
    del blocks
    m = release_memory()
    assert m["rss_before"] - m["rss_after"] > 100 * 2**20, m
    assert pin.sum() == 8192


def test_release_memory_without_anything_to_free():
    m = release_memory()
    assert set(m) == {"rss_before", "rss_after"} and m["rss_after"] <= m["rss_before"] + 16 * 2**20
