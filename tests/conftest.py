"""Suite-wide fixtures: one intra-op thread per test, and no global torch state leaking out.

The tests run thousands of tiny tensor ops, for which a second OpenMP thread costs barrier waits
rather than saving time (25x slower on a loaded 2-core machine); tests that compare against
subprocesses bit for bit also need the same thread count as those (1 under the launcher).
"""
import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _one_thread_for_shared_fixtures():
    """Module- and session-scoped fixtures are set up before the per-test fixture below, so they
    would otherwise compute at the machine's thread count while their tests recompute at 1 (CI has
    2 cores and no OMP_NUM_THREADS: bit-for-bit comparisons then differ)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _one_thread_and_no_global_state_leak():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    grad, dtype = torch.is_grad_enabled(), torch.get_default_dtype()
    yield
    leaked = []
    if torch.is_grad_enabled() != grad:
        leaked.append(f"grad mode {grad} -> {torch.is_grad_enabled()}")
        torch.set_grad_enabled(grad)
    if torch.get_default_dtype() != dtype:
        leaked.append(f"default dtype {dtype} -> {torch.get_default_dtype()}")
        torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)
    assert not leaked, "test leaked global torch state: " + ", ".join(leaked)
