"""utils/runtime.py helpers that need no launcher."""
import ctypes
import ctypes.util

import pytest

import utils.runtime as runtime


def test_rank_seed_distinct_and_reproducible():
    seeds = [runtime.rank_seed(7, r, 4) for r in range(4)]
    assert seeds == [28, 29, 30, 31]  # DiT: global_seed * world_size + rank


def test_tune_cpu_allocator(monkeypatch):
    monkeypatch.setattr(runtime, "_allocator_tuned", False)
    monkeypatch.setenv("LIGHTNINGDIT_KEEP_MALLOC", "1")
    assert runtime.tune_cpu_allocator() is False  # the opt-out leaves malloc alone
    monkeypatch.delenv("LIGHTNINGDIT_KEEP_MALLOC")
    libc_name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        has_mallopt = hasattr(ctypes.CDLL(libc_name), "mallopt")
    except OSError:
        has_mallopt = False
    if not has_mallopt:
        pytest.skip("no glibc mallopt here")
    assert runtime.tune_cpu_allocator() is True
    assert runtime.tune_cpu_allocator() is True  # idempotent
