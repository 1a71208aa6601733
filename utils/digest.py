"""Content hashes of weights: two files with the same tensors hash equal, whatever their format
(.pt, .safetensors, key prefixes) or byte size; any changed value changes the hash.

Used by inference.py's `protocol.json` to bind a sample folder to the weights and latent stats it
was made with (a file's size or mtime does not: a retrained checkpoint often has the same size).
"""
from __future__ import annotations

import hashlib
from typing import Mapping, Optional

import torch


def tensors_digest(tensors: Mapping[str, Optional[torch.Tensor]]) -> str:
    """sha256 over (name, dtype, shape, raw bytes) of every tensor, in sorted name order; None
    entries are hashed as absent. Streams tensor by tensor (no concatenated copy); GPU tensors are
    copied to the host one at a time."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        if t is None:
            h.update(f"{name}:none;".encode())
            continue
        t = t.detach()
        h.update(f"{name}:{str(t.dtype).removeprefix('torch.')}:{tuple(t.shape)};".encode())
        if t.numel():
            flat = t.reshape(-1).contiguous().cpu()
            h.update(flat.view(torch.uint8).numpy())
    return h.hexdigest()


def module_digest(module: torch.nn.Module) -> str:
    """`tensors_digest` of a module's state dict (parameters and buffers, as loaded)."""
    return tensors_digest(module.state_dict())
