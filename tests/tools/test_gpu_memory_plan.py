"""tools/bench/gpu_memory_plan.py: the saved-activation count is linear in batch and depth (the
basis of its 1-/2-block extrapolation) and counts what the plain path really saves."""
import torch

from models.lightningdit import LightningDiT
from tools.bench.gpu_memory_plan import saved_activation_bytes


def tiny(depth):
    torch.manual_seed(0)
    return LightningDiT(input_size=4, patch_size=1, in_channels=4, hidden_size=32, depth=depth, num_heads=2,
                        num_classes=10, use_swiglu=True, use_rope=True, use_rmsnorm=True).train()


def count(depth, batch):
    x, t, y = torch.randn(batch, 4, 4, 4), torch.rand(batch), torch.randint(0, 10, (batch,))
    return saved_activation_bytes(tiny(depth), x, t, y)


def test_linear_in_depth_and_batch():
    one, two, three = count(1, 2), count(2, 2), count(3, 2)
    assert two > one > 0
    assert three - two == two - one  # identical blocks save identical bytes
    assert count(2, 4) == 2 * two


def test_block_saves_at_least_its_residual_and_qkv():
    """Lower bound from the formulas: per token a block keeps its fp32 input (4 D bytes) and the
    bf16 qkv projection (6 D bytes) among others."""
    D, tokens, batch = 32, 16, 2
    per_block = count(2, batch) - count(1, batch)
    assert per_block >= batch * tokens * D * (4 + 6)
