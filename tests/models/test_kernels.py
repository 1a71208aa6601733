"""The kernel switch of models/kernels.py: the plain formulation on CUDA, the hand-written CPU
kernels only on CPU, and both paths computing the same numbers."""
import copy

import pytest
import torch

import models.attention as attention
import models.lightningdit as lightningdit
from models.attention import ShiftedBF16Attention
from models.fused_ops import RMSNormModulate, SiLUGate
from models.kernels import CPU, PLAIN, forced_kernel_path, kernel_path, use_cpu_kernels
from models.lightningdit import LightningDiT

RELEASED = dict(use_swiglu=True, use_rope=True, use_rmsnorm=True)
CPU_KERNELS = ((RMSNormModulate, "apply"), (SiLUGate, "apply"), (ShiftedBF16Attention, "apply"),
               (attention, "rotate_pairs"), (lightningdit, "rotate_pairs"))


def test_selection_by_device():
    assert kernel_path("cuda") == PLAIN
    assert kernel_path(torch.device("cuda", 3)) == PLAIN
    assert kernel_path("meta") == PLAIN
    assert kernel_path("cpu") == CPU
    assert use_cpu_kernels(torch.zeros(2, dtype=torch.bfloat16))
    assert not use_cpu_kernels(torch.zeros(2, device="meta"))
    with forced_kernel_path(PLAIN):
        assert kernel_path("cpu") == PLAIN and not use_cpu_kernels(torch.zeros(2))
        with forced_kernel_path(None):
            assert kernel_path("cpu") == CPU
    assert kernel_path("cpu") == CPU
    with pytest.raises(ValueError, match="unknown kernel path"):
        with forced_kernel_path("triton"):
            pass


def tiny_model(dtype=torch.float32, **flags):
    torch.manual_seed(0)
    m = LightningDiT(input_size=8, patch_size=1, in_channels=4, hidden_size=64, depth=2, num_heads=4,
                     num_classes=10, **flags)
    with torch.no_grad():  # adaLN and the output layer start at zero: give them values
        for name, p in m.named_parameters():
            if name != "pos_embed":
                p.add_(0.05 * torch.randn_like(p))
    return m.to(dtype)


def run(model, bf16, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 8, 8, generator=g, dtype=dtype)
    t, y = torch.rand(3, generator=g, dtype=dtype), torch.randint(0, 10, (3,), generator=g)
    model.train()
    torch.manual_seed(2)  # label dropout
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(x, t, y)
    out.float().square().mean().backward()
    return out.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def _count_calls(monkeypatch, calls, fail):
    for owner, name in CPU_KERNELS:
        original = getattr(owner, name)
        label = f"{getattr(owner, '__name__', owner)}.{name}"

        def wrapper(*args, _original=original, _label=label):
            if fail:
                raise AssertionError(f"CPU kernel {_label} called on the plain path")
            calls[_label] = calls.get(_label, 0) + 1
            return _original(*args)
        monkeypatch.setattr(owner, name, wrapper)


@pytest.mark.parametrize("bf16", [False, True])
def test_plain_path_never_calls_cpu_kernels(monkeypatch, bf16):
    """The CUDA selection, forced on CPU, runs none of the hand-written kernels (they raise), and
    trains like the CPU kernels (which the unforced CPU run does call)."""
    model = tiny_model(**RELEASED, use_qknorm=True)
    calls = {}
    with monkeypatch.context() as mp:
        _count_calls(mp, calls, fail=False)
        out_cpu, grads_cpu = run(copy.deepcopy(model), bf16)
    used = {k.split(".")[0] for k in calls}
    assert {"RMSNormModulate", "SiLUGate"} <= used if not bf16 else {"SiLUGate", "ShiftedBF16Attention"} <= used
    _count_calls(monkeypatch, {}, fail=True)
    with forced_kernel_path(PLAIN):
        out_plain, grads_plain = run(copy.deepcopy(model), bf16)
    with pytest.raises(AssertionError, match="CPU kernel"):
        run(copy.deepcopy(model), bf16)  # unforced on CPU: the CPU kernels run
    tol = 3e-2 if bf16 else 1e-5
    torch.testing.assert_close(out_plain.float(), out_cpu.float(), rtol=0,
                               atol=tol * out_cpu.abs().max().item())
    assert grads_plain.keys() == grads_cpu.keys()
    for name, g in grads_cpu.items():
        torch.testing.assert_close(grads_plain[name], g, rtol=0, atol=tol * max(g.abs().max().item(), 1e-6),
                                   msg=name)


def test_paths_agree_in_float64():
    """In float64 the blocks and final layer of both formulations are exact up to float64
    rounding (a formula mistake in either path would show at ~1e-3)."""
    model = tiny_model(torch.float64, **RELEASED)
    g = torch.Generator().manual_seed(3)
    x, c = torch.randn(3, 64, 64, generator=g, dtype=torch.float64), torch.randn(3, 64, generator=g, dtype=torch.float64)

    def blocks(m):
        h = x
        for block in m.blocks:
            h = block(h, c, m.feat_rope)
        out = m.final_layer(h, c)
        out.square().mean().backward()
        return out.detach(), {n: p.grad for n, p in m.named_parameters() if p.grad is not None}

    out_cpu, grads_cpu = blocks(copy.deepcopy(model))
    with forced_kernel_path(PLAIN):
        out_plain, grads_plain = blocks(copy.deepcopy(model))
    torch.testing.assert_close(out_plain, out_cpu, rtol=1e-10, atol=1e-12)
    assert grads_plain.keys() == grads_cpu.keys() and len(grads_cpu) > 10
    for name, g in grads_cpu.items():
        torch.testing.assert_close(grads_plain[name], g, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("setting, device, expected", [
    ("auto", "cuda", True), ("auto", "cpu", False), ("auto", torch.device("cuda", 1), True),
    (True, "cpu", True), (False, "cuda", False)])
def test_should_compile(setting, device, expected):
    from configs.schema import load_config
    from models.build import should_compile

    value = {True: "true", False: "false"}.get(setting, setting)
    cfg = load_config(None, [f"model.compile={value}"])
    assert should_compile(cfg, device) is expected


def test_compile_defaults_to_auto_and_rejects_other_values():
    from configs.schema import load_config

    assert load_config(None).model.compile == "auto"
    with pytest.raises(ValueError, match="model.compile"):
        load_config(None, ["model.compile=sometimes"])
