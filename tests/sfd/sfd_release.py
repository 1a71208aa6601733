"""What the SFD tests share: SFD's file layout, the tiny size overrides and tiny networks
(conftest.py builds the released tree from them). A module of its own, because `from conftest
import ...` resolves to whichever conftest pytest imported first (tests/reliability has one too)."""
from pathlib import Path

import torch

from configs.schema import load_config
from models.build import build_model

REPO = Path(__file__).resolve().parents[2]
SFD_CONFIGS = REPO / "configs" / "sfd"
GUIDE_YAML = SFD_CONFIGS / "autoguidance_b" / "inference.yaml"
TINY = ["model.hidden_size=64", "model.depth=2", "model.num_heads=2", "data.image_size=64"]
LATENTS = "outputs/dataset/imagenet1k-latents/sdvae_f16d32_semvaebasech16_repadinov2_vitb14_reg/imagenet_train_256"
# The checkpoints SFD's inference YAMLs name (ckpt_path), and which tiny network each holds.
CHECKPOINTS = {
    "outputs/train/sfd_xl/checkpoints/0400000.pt": "main",
    "outputs/train/sfd_xl/checkpoints/4000000.pt": "main",
    "outputs/train/sfd_xl_80ep/checkpoints/0400000.pt": "main",
    "outputs/train/sfd_1p0/checkpoints/0400000.pt": "main",
    "outputs/train/sfd_1p0/checkpoints/4000000.pt": "main",
    "outputs/train/sfd_autoguidance_b/checkpoints/0060000.pt": "early",
    "outputs/train/sfd_autoguidance_b/checkpoints/0070000.pt": "guide",
    "outputs/train/sfd_autoguidance_b/checkpoints/0120000.pt": "late",
    "outputs/train/sfd_autoguidance_b_retrain/checkpoints/0060000.pt": "guide",
}


def tiny_network(config: Path, seed: int, *overrides: str) -> torch.nn.Module:
    """The network of an SFD YAML at the tiny size, with random non-trivial weights (the zero-init
    output layers would make every output 0)."""
    cfg = load_config(str(config), TINY + list(overrides))
    torch.manual_seed(seed)
    model = build_model(cfg, training=False)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def save_ema(model: torch.nn.Module, path: Path) -> Path:
    """An SFD training checkpoint holding the EMA weights ({'ema': ...}, what inference loads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"ema": model.state_dict()}, path)
    return path
