"""Seeds and RNG states: the keyed seed every seeded draw in this repo derives from, the per-rank
seed rule, and capture/restore of a process's RNG states for exact resume.
"""
from __future__ import annotations

import random
from typing import Any, Dict, List

import numpy as np
import torch


def derive_seed(*keys: int) -> int:
    """A 63-bit seed that is a hash of the non-negative integers `keys` (numpy SeedSequence)."""
    lo, hi = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return (int(hi) << 32 | int(lo)) & (2**63 - 1)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rank_seed(global_seed: int, rank: int, world_size: int) -> int:
    """The per-rank seed (DiT's rule): different on every rank, reproducible for a world size."""
    return global_seed * world_size + rank


def capture_rng_state() -> Dict[str, Any]:
    """This process's python / numpy / torch (+ CUDA) RNG states, as tensors and plain types
    (loadable with `torch.load(weights_only=True)`)."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of `capture_rng_state` (CUDA states only where CUDA is available)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng_states(world_size: int) -> List[Dict[str, Any]]:
    """Every rank's RNG state in rank order (a collective when world_size > 1)."""
    state = capture_rng_state()
    if world_size == 1:
        return [state]
    out: List[Any] = [None] * world_size
    torch.distributed.all_gather_object(out, state)
    return out
