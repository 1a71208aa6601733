"""Behaviour pinned by tools/golden.py: every LightningDiT, DDPM and VA-VAE path (training with
bf16/fp32, accumulation and validation, the ODE/SDE/DDPM samplers with each guidance setting, the
tokenizer trainer) gives what it gave when tests/golden/golden.pt was recorded. The exact
(bit-for-bit) check is `python tools/golden.py check --exact` on the recording machine; here the
comparison tolerates another CPU's rounding (sums to 1e-4 relative, images within 1 level)."""
from pathlib import Path

import torch

from tools import golden


def test_golden_outputs_unchanged(tmp_path):
    recorded = torch.load(golden.GOLDEN, weights_only=True)
    new = golden.summarise(golden.produce(Path(tmp_path)))
    assert golden.compare(recorded, new, exact=False) == []


def test_compare_catches_a_change():
    a = {"s": {"sha256": {"w": "x"}, "sum": {"w": 1.0}, "sumsq": {"w": 1.0}, "tensors": {}}}
    b = {"s": {"sha256": {"w": "y"}, "sum": {"w": 1.01}, "sumsq": {"w": 1.0}, "tensors": {}}}
    assert golden.compare(a, b, exact=True) and golden.compare(a, b, exact=False)
    assert golden.compare(a, a, exact=True) == []
