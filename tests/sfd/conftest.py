"""Tiny SFD runs on CPU in SFD's released file layout.

`released` builds, in a temporary folder, the tree SFD's README downloads into (outputs/train/
sfd_*/checkpoints/*.pt, outputs/dataset/imagenet1k-latents/.../latents_stats.pt and
latents_sv_stats.pt beside SFD-format shards with REPA targets), holding tiny random networks
built from SFD's own YAMLs: 2 blocks of width 64 at 64 px, i.e. a 4 x 4 grid of 32 texture + 16
semantic channels (`TINY`). Run from that folder, SFD's YAMLs load unchanged and need only the
size overrides: every path they name exists, relative to the working directory as in SFD's repo,
and their guide YAML `configs/sfd/autoguidance_b/inference.yaml` is found from the repository root.
The texture tokenizer is the real sdvae_f16d32 architecture with random weights (--vae-random-init).
"""
import os
from pathlib import Path

import pytest
import torch

from datasets.tiny_latents import write_tiny_latents

from sfd_release import CHECKPOINTS, GUIDE_YAML, LATENTS, SFD_CONFIGS, save_ema, tiny_network


@pytest.fixture(scope="session")
def released(tmp_path_factory):
    """The released layout in a temporary folder (module docstring); returns its root and the
    networks by role."""
    root = tmp_path_factory.mktemp("sfd_released")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        write_tiny_latents(str(root / LATENTS), num_items=32, shape=(32, 4, 4), num_classes=10,
                           semantic_chans=16, repa_dim=768)
        nets = {"main": tiny_network(SFD_CONFIGS / "lightningdit_xl/inference_4m.yaml", 0),
                "guide": tiny_network(GUIDE_YAML, 1), "early": tiny_network(GUIDE_YAML, 2),
                "late": tiny_network(GUIDE_YAML, 3)}
        stored = {}
        for rel, role in CHECKPOINTS.items():
            if role in stored:
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                os.symlink(stored[role], root / rel)
            else:
                stored[role] = save_ema(nets[role], root / rel)
    finally:
        torch.set_num_threads(old)
    return {"root": root, "nets": nets, "latents": root / LATENTS}


@pytest.fixture
def in_released(released, monkeypatch):
    """Run the test from the released layout's root (SFD's relative paths resolve there)."""
    monkeypatch.chdir(released["root"])
    return released
