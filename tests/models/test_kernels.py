"""The kernel switch of models/kernels.py: CPU-kernel variants swapped in as modules (same
state_dict), only for eager models on the CPU, and both formulations computing the same numbers."""
import copy

import pytest
import torch

import models.attention as attention
import models.kernels as kernels
from models.attention import ShiftedBF16Attention
from models.fused_ops import RMSNormModulate, SiLUGate
from models.kernels import (CPU_VARIANTS, CPURotaryEmbedding, select_kernels, use_cpu_kernels,
                            use_plain_modules, uses_cpu_kernels)
from models.lightningdit import LightningDiT, VisionRotaryEmbedding, rotate_half

RELEASED = dict(use_swiglu=True, use_rope=True, use_rmsnorm=True)
CPU_KERNELS = ((RMSNormModulate, "apply"), (SiLUGate, "apply"), (ShiftedBF16Attention, "apply"),
               (attention, "rotate_pairs"))


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


def test_swap_keeps_state_dict_and_round_trips():
    model = tiny_model(**RELEASED, use_qknorm=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain_types = [type(m) for m in model.modules()]
    assert not uses_cpu_kernels(model)
    use_cpu_kernels(model)
    swapped = [type(m) for m in model.modules()]
    assert {CPU_VARIANTS[t] for t in plain_types if t in CPU_VARIANTS} <= set(swapped)
    assert len([t for t in swapped if t in CPU_VARIANTS]) == 0  # every plain module has its variant
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], v) for k, v in before.items())
    assert uses_cpu_kernels(copy.deepcopy(model))  # the EMA copy keeps them
    use_plain_modules(model)
    assert [type(m) for m in model.modules()] == plain_types


def test_select_kernels_by_device_and_compilation():
    model = tiny_model(**RELEASED)
    assert uses_cpu_kernels(select_kernels(model))  # eager, on the CPU
    with torch.device("meta"):
        meta = LightningDiT(input_size=8, patch_size=1, in_channels=4, hidden_size=64, depth=2, num_heads=4,
                            **RELEASED)
    assert not uses_cpu_kernels(select_kernels(use_cpu_kernels(meta)))  # any other device: plain
    model.compile_blocks()  # lazy: nothing is compiled until the first call
    assert not uses_cpu_kernels(select_kernels(model))  # compiled: plain, inductor fuses them


@pytest.mark.parametrize("bf16", [False, True])
def test_plain_modules_never_call_cpu_kernels(monkeypatch, bf16):
    """The plain modules (what CUDA runs) call none of the hand-written kernels (they raise), and
    train like the CPU variants (which do call them)."""
    model = tiny_model(**RELEASED, use_qknorm=True)
    calls = {}
    with monkeypatch.context() as mp:
        _count_calls(mp, calls, fail=False)
        out_cpu, grads_cpu = run(use_cpu_kernels(copy.deepcopy(model)), bf16)
    used = {k.split(".")[0] for k in calls}
    assert {"RMSNormModulate", "SiLUGate"} <= used if not bf16 else {"SiLUGate", "ShiftedBF16Attention"} <= used
    _count_calls(monkeypatch, {}, fail=True)
    out_plain, grads_plain = run(copy.deepcopy(model), bf16)
    with pytest.raises(AssertionError, match="CPU kernel"):
        run(use_cpu_kernels(copy.deepcopy(model)), bf16)
    tol = 3e-2 if bf16 else 1e-5
    torch.testing.assert_close(out_plain.float(), out_cpu.float(), rtol=0,
                               atol=tol * out_cpu.abs().max().item())
    assert grads_plain.keys() == grads_cpu.keys()
    for name, g in grads_cpu.items():
        torch.testing.assert_close(grads_plain[name], g, rtol=0, atol=tol * max(g.abs().max().item(), 1e-6),
                                   msg=name)


def test_variants_defer_to_plain_off_cpu(monkeypatch):
    """A CPU variant that sees a non-CPU tensor runs the plain forward (here on the meta device,
    with the kernels patched to raise)."""
    _count_calls(monkeypatch, {}, fail=True)
    with torch.device("meta"):
        m = LightningDiT(input_size=8, patch_size=1, in_channels=4, hidden_size=64, depth=2, num_heads=4,
                         num_classes=10, **RELEASED)
        use_cpu_kernels(m)
        out = m(torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([1, 2]))
    assert out.shape == (2, 4, 8, 8) and out.is_meta


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

    out_cpu, grads_cpu = blocks(use_cpu_kernels(copy.deepcopy(model)))
    out_plain, grads_plain = blocks(copy.deepcopy(model))
    torch.testing.assert_close(out_plain, out_cpu, rtol=1e-10, atol=1e-12)
    assert grads_plain.keys() == grads_cpu.keys() and len(grads_cpu) > 10
    for name, g in grads_cpu.items():
        torch.testing.assert_close(grads_plain[name], g, rtol=1e-9, atol=1e-12, msg=name)


def test_complex_rope_equals_formula():
    torch.manual_seed(0)
    rope = use_cpu_kernels(VisionRotaryEmbedding(dim=8, pt_seq_len=4))
    x = torch.randn(2, 3, 16, 16)
    rotation = rope.rotation(x)
    assert rotation is not None and rotation.dtype == torch.complex64
    torch.testing.assert_close(attention.rotate_pairs(x, rotation), x * rope.freqs_cos + rotate_half(x) * rope.freqs_sin,
                               rtol=0, atol=1e-6)
    assert rope.rotation(x.bfloat16()) is not None  # bf16 x promotes with the float32 tables
    assert rope.rotation(x[..., :15]) is None  # odd head dim


def test_rope_unpaired_tables_fall_back(caplog):
    """Tables without the pair structure (checked again whenever the buffers change) keep the
    formula; a model loading them computes what the plain model computes."""
    plain = tiny_model(**RELEASED)
    sd = plain.state_dict()
    sd["feat_rope.freqs_sin"] = torch.randn_like(sd["feat_rope.freqs_sin"])
    plain.load_state_dict(sd)
    fast = use_cpu_kernels(tiny_model(**RELEASED))
    q = torch.randn(1, 4, 64, 16)
    assert fast.feat_rope.rotation(q) is not None
    fast.load_state_dict(sd)
    assert isinstance(fast.feat_rope, CPURotaryEmbedding) and fast.feat_rope.rotation(q) is None
    assert "not pair-interleaved" in caplog.text
    x, t, y = torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([1, 2])
    plain.eval(), fast.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(x, t, y), plain(x, t, y), rtol=0, atol=1e-5)
    fast.load_state_dict(tiny_model(**RELEASED).state_dict())
    assert fast.feat_rope.rotation(q) is not None


def test_norm_modulate_fuses_only_float32_rmsnorm(monkeypatch):
    calls = []
    monkeypatch.setattr(kernels, "rms_norm_modulate", lambda *a: calls.append(a) or a[0])
    model = use_cpu_kernels(tiny_model(**RELEASED))
    x, scale = torch.randn(2, 5, 64), torch.randn(2, 64)
    kernels.norm_modulate(model.blocks[0].norm1, x, None, scale)
    kernels.norm_modulate(model.blocks[0].norm1, x.bfloat16(), None, scale)
    kernels.norm_modulate(torch.nn.LayerNorm(64), x, None, scale)
    assert len(calls) == 1


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
