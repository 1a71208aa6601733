"""The block's fused elementwise Functions (models/fused_ops.py) against autograd of the
reference formulas."""
import pytest
import torch
import torch.nn.functional as F

from models.fused_ops import RMSNormModulate, SiLUGate, rms_norm_modulate


def reference_norm_modulate(x, weight, shift, scale, eps=1e-6):
    """RMSNorm as docs/reference_behaviour.md writes it, then the DiT modulate."""
    xf = x.float()
    h = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * weight
    h = h * (1 + scale.unsqueeze(1))
    return h if shift is None else h + shift.unsqueeze(1)


def leaves(dtype_mod, with_shift, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (3 * torch.randn(2, 5, 16, generator=g)).requires_grad_()
    w = (1 + 0.3 * torch.randn(16, generator=g)).requires_grad_()
    scale = (0.5 * torch.randn(2, 16, generator=g)).to(dtype_mod).requires_grad_()
    shift = (0.5 * torch.randn(2, 16, generator=g)).to(dtype_mod).requires_grad_() if with_shift else None
    return x, w, shift, scale


@pytest.mark.parametrize("with_shift", [True, False])
def test_rms_norm_modulate_backward_float64_gradcheck(with_shift):
    x, w, shift, scale = (t.double().detach().requires_grad_() if t is not None else None
                          for t in leaves(torch.float32, with_shift))
    fn = lambda x, w, shift, scale: RMSNormModulate.apply(x, w, shift, scale, 1e-6, None)
    assert torch.autograd.gradcheck(fn, (x, w, shift, scale))


@pytest.mark.parametrize("with_shift", [True, False])
@pytest.mark.parametrize("autocast", [False, True])
def test_rms_norm_modulate_equals_reference(with_shift, autocast):
    """Forward bit-identical to the reference formula (float32, or rounded once to bf16 under
    autocast, as the next Linear would); gradients equal autograd's to float rounding."""
    dtype_mod = torch.bfloat16 if autocast else torch.float32  # adaLN output dtype under autocast
    ours_in, ref_in = leaves(dtype_mod, with_shift), leaves(dtype_mod, with_shift)
    grad = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(5))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        ours = rms_norm_modulate(ours_in[0], ours_in[1], 1e-6, ours_in[2], ours_in[3])
        ref = reference_norm_modulate(*ref_in)
        ref = ref.to(torch.bfloat16) if autocast else ref
    assert ours.dtype == ref.dtype
    assert torch.equal(ours, ref)
    ours.backward(grad.to(ours.dtype))
    ref.backward(grad.to(ref.dtype))
    for a, b, name in zip(ours_in, ref_in, ("x", "weight", "shift", "scale")):
        if a is None:
            continue
        assert a.grad.dtype == b.grad.dtype, name
        tol = dict(rtol=1e-5, atol=1e-5) if a.grad.dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(a.grad, b.grad, **tol, msg=lambda m: f"{name}: {m}")


def test_silu_gate_matches_autograd():
    torch.manual_seed(0)
    h64 = torch.randn(3, 4, 10, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(SiLUGate.apply, (h64,))
    for dtype in (torch.float32, torch.bfloat16):  # the same ops: bit-identical values and grads
        h = torch.randn(3, 4, 10).to(dtype).requires_grad_()
        h_ref = h.detach().clone().requires_grad_()
        grad = torch.randn(3, 4, 5).to(dtype)
        out = SiLUGate.apply(h)
        gate, value = h_ref.chunk(2, dim=-1)
        ref = F.silu(gate) * value
        assert torch.equal(out, ref)
        out.backward(grad)
        ref.backward(grad)
        assert torch.equal(h.grad, h_ref.grad), dtype
