"""PatchGAN discriminator (tokenizer/discriminator.py): layout, keys, shapes and init."""
import pytest
import torch
import torch.nn as nn

from tokenizer.discriminator import NLayerDiscriminator



def test_reference_layout_keys_and_shapes():
    with torch.device("meta"):
        d = NLayerDiscriminator()
    shapes = {k: tuple(v.shape) for k, v in d.state_dict().items()}
    assert shapes["main.0.weight"] == (64, 3, 4, 4) and shapes["main.0.bias"] == (64,)
    assert shapes["main.2.weight"] == (128, 64, 4, 4) and "main.2.bias" not in shapes
    assert shapes["main.5.weight"] == (256, 128, 4, 4)
    assert shapes["main.8.weight"] == (512, 256, 4, 4)
    assert shapes["main.11.weight"] == (1, 512, 4, 4) and shapes["main.11.bias"] == (1,)
    for i in (3, 6, 9):
        assert isinstance(d.main[i], nn.BatchNorm2d)
    convs = [m for m in d.main if isinstance(m, nn.Conv2d)]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 1, 1]
    prefixes = sorted({k.split(".")[1] for k in shapes}, key=int)
    assert prefixes == ["0", "2", "3", "5", "6", "8", "9", "11"]


def test_logits_shape_256_and_init():
    torch.manual_seed(0)
    d = NLayerDiscriminator(ndf=8)
    assert d(torch.randn(1, 3, 256, 256)).shape == (1, 1, 30, 30)
    torch.manual_seed(0)
    big = NLayerDiscriminator()
    w = big.main[8].weight                      # 512*256*16 samples of N(0, 0.02)
    assert w.std().item() == pytest.approx(0.02, rel=0.01) and abs(w.mean().item()) < 1e-3
    bn = big.main[9]
    assert bn.weight.std().item() == pytest.approx(0.02, rel=0.2)
    assert bn.weight.mean().item() == pytest.approx(1.0, abs=0.005) and torch.all(bn.bias == 0)


def test_rejects_actnorm():
    with pytest.raises(ValueError, match="use_actnorm"):
        NLayerDiscriminator(use_actnorm=True)
