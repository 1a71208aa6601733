"""tools/bench/bench_model.py: its FLOP count and a tiny end-to-end run (the numbers it reports
are only as good as these)."""
import torch
from torch.utils.flop_counter import FlopCounterMode

from models.lightningdit import LightningDiT
from tools.bench.bench_model import PlainLightningDiT, main, matmul_flops_per_step


def test_matmul_flops_match_torch_flop_counter():
    """Linears, patch embedding and final layer counted by torch's FlopCounterMode over a real
    forward + backward, plus the closed form 3 * 4 N D per token for QK^T and AV (torch's CPU flash
    kernel has no FLOP formula), equal our count."""
    depth, batch, n_tokens, dim = 2, 3, 16, 64
    m = LightningDiT(input_size=8, patch_size=2, in_channels=4, hidden_size=dim, depth=depth, num_heads=2,
                     use_swiglu=True, use_rope=True, use_rmsnorm=True)
    x, t, y = torch.randn(batch, 4, 8, 8), torch.rand(batch), torch.randint(0, 1000, (batch,))
    counter = FlopCounterMode(display=False)
    with counter:
        m(x, t, y).square().mean().backward()
    counts = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    per_token_modules = [f"LightningDiT.blocks.{i}.{part}" for i in range(depth) for part in ("attn", "mlp")]
    per_token_modules += ["LightningDiT.final_layer.linear", "LightningDiT.x_embedder"]
    attention = 3 * 4 * n_tokens * dim * n_tokens * batch * depth
    assert matmul_flops_per_step(m, batch, n_tokens) == sum(counts[n] for n in per_token_modules) + attention


def test_baseline_is_the_same_function():
    torch.manual_seed(0)
    m = LightningDiT(input_size=4, patch_size=1, in_channels=4, hidden_size=32, depth=2, num_heads=2,
                     use_swiglu=True, use_rope=True, use_rmsnorm=True)
    with torch.no_grad():
        for prm in m.parameters():
            prm.add_(0.05 * torch.randn_like(prm))
    x, t, y = torch.randn(2, 4, 4, 4), torch.rand(2), torch.tensor([1, 2])
    m.eval()
    base = PlainLightningDiT(m).eval()
    torch.testing.assert_close(base(x, t, y), m(x, t, y), rtol=0, atol=1e-5)


def test_tiny_run_reports_every_figure():
    out = main(["--hidden", "32", "--depth", "1", "--heads", "2", "--input-size", "4", "--in-channels", "4",
                "--batch", "2", "--rounds", "1", "--steps", "1", "--warmup", "1"])
    assert out["check"]["max_abs_diff_fp32"] < 1e-5
    for dt in ("fp32", "bf16"):
        res = out["results"][dt]
        assert res["matmul_peak_flops"] > 0
        for name in ("ours", "baseline"):
            r = res[name]
            assert r["step_s"] > 0 and r["mfu"] == r["flops_per_s"] / res["matmul_peak_flops"]
            assert abs(r["flops_per_s"] * r["step_s"] - out["matmul_flops_per_step"]) < 1e-6 * out["matmul_flops_per_step"]
        assert res["ratio_ours_over_baseline"] == res["ours"]["step_s"] / res["baseline"]["step_s"]
        assert 0 < res["matmul_only_step_s"]
        assert res["mfu_bound_matmul_only"] == out["matmul_flops_per_step"] / res["matmul_only_step_s"] / res["matmul_peak_flops"]
