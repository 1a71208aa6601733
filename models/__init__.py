"""LightningDiT network (models.lightningdit) and its checkpoint loader (models.checkpoint)."""
from models.lightningdit import LightningDiT, LightningDiT_models

__all__ = ["LightningDiT", "LightningDiT_models"]
