"""Training-step benchmark of LightningDiT (models/lightningdit.py) against a plain baseline.

Times forward + backward + AdamW steps in fp32 and under bf16 autocast, for our model and for a
baseline whose blocks are written the way the reference writes them (einops rearrange + stack
RoPE, RMSNorm written out with a float cast, transposed token layout from the patch embedding).
Both start from the same weights; their first-step outputs are compared as a sanity check.
Runs alternate between ours and the baseline and the medians are reported, since the machine may
be shared. FLOPs count per-token matmuls only (qkv, QK^T, AV, proj, MLP, final linear; x3 for
fwd + bwd; the patch embedding x2); MFU divides by the 2048^2 matmul rate measured in the same run
(best of 5 before each round, median over rounds). It also times the block's matmuls alone at
the model's shapes: flops / that time / peak is the MFU the step would reach if every other op
were free, and 1 - (that time / step time) is the step's non-matmul share. Prints one JSON line last.

    python tools/bench/bench_model.py                      # hidden 384, depth 6, 6 heads, p 1, 16x16x32, batch 8
    python tools/bench/bench_model.py --model LightningDiT-B/1 --batch 2 --dtypes bf16
"""
import argparse
import copy
import json
import logging
import resource
import statistics
import time
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange


from models.attention import cpu_attention
from models.kernels import select_kernels, use_plain_modules
from models.lightningdit import LightningDiT, LightningDiT_models
from tools.bench.common import best_time, randomize_zero_init, sync
from utils.runtime import tune_cpu_allocator

logger = logging.getLogger("bench_model")


# ----------------------------------------------------------------------------------------------
# Baseline: the block as the reference writes it (same parameter names, so weights load as is)
# ----------------------------------------------------------------------------------------------

class PlainRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def plain_rotate_half(x):
    x = rearrange(x, "... (d r) -> ... d r", r=2)
    x1, x2 = x.unbind(dim=-1)
    x = torch.stack((-x2, x1), dim=-1)
    return rearrange(x, "... d r -> ... (d r)")


class PlainRope(nn.Module):
    def __init__(self, freqs_cos, freqs_sin):
        super().__init__()
        self.register_buffer("freqs_cos", freqs_cos.clone())
        self.register_buffer("freqs_sin", freqs_sin.clone())

    def forward(self, t):
        return t * self.freqs_cos + plain_rotate_half(t) * self.freqs_sin


class PlainAttention(nn.Module):
    def __init__(self, dim, num_heads, qk_norm, norm_layer):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.q_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, rope=None):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q = rope(q)
            k = rope(k)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class PlainSwiGLU(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x):
        x12 = self.w12(x)
        x1, x2 = x12.chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


def plain_modulate(x, shift, scale):
    if shift is None:
        return x * (1 + scale.unsqueeze(1))
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class PlainBlock(nn.Module):
    def __init__(self, ref_block):
        super().__init__()
        D = ref_block.adaLN_modulation[1].in_features
        rms = getattr(ref_block.norm1, "weight", None) is not None  # RMSNorm; the LayerNorm has no affine
        self.norm1 = PlainRMSNorm(D) if rms else nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.norm2 = PlainRMSNorm(D) if rms else nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        attn = ref_block.attn
        self.attn = PlainAttention(D, attn.num_heads, not isinstance(attn.q_norm, nn.Identity),
                                   PlainRMSNorm if rms else nn.LayerNorm)
        if hasattr(ref_block.mlp, "w12"):
            self.mlp = PlainSwiGLU(D, ref_block.mlp.w3.in_features)
        else:
            self.mlp = copy.deepcopy(ref_block.mlp)
        self.wo_shift = ref_block.wo_shift
        self.adaLN_modulation = copy.deepcopy(ref_block.adaLN_modulation)
        self.load_state_dict(ref_block.state_dict(), strict=True)

    def forward(self, x, c, feat_rope=None):
        if self.wo_shift:
            scale_msa, gate_msa, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(4, dim=1)
            shift_msa = shift_mlp = None
        else:
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(plain_modulate(self.norm1(x), shift_msa, scale_msa), rope=feat_rope)
        x = x + gate_mlp.unsqueeze(1) * self.mlp(plain_modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class PlainLightningDiT(nn.Module):
    """The reference forward (transposed token layout, plain blocks) around our embedders."""

    def __init__(self, model: LightningDiT):
        super().__init__()
        self.m = use_plain_modules(copy.deepcopy(model))
        self.m.blocks = nn.ModuleList([PlainBlock(b) for b in model.blocks])
        if model.feat_rope is not None:
            self.m.feat_rope = PlainRope(model.feat_rope.freqs_cos, model.feat_rope.freqs_sin)
        if getattr(model.final_layer.norm_final, "weight", None) is not None:
            norm = PlainRMSNorm(model.final_layer.norm_final.weight.numel())
            norm.load_state_dict(model.final_layer.norm_final.state_dict())
            self.m.final_layer.norm_final = norm
        self.m.load_state_dict(model.state_dict(), strict=True)

    def forward(self, x, t, y):
        m = self.m
        x = m.x_embedder(x) + m.pos_embed
        c = m.t_embedder(t) + m.y_embedder(y, self.training)
        for block in m.blocks:
            x = block(x, c, m.feat_rope)
        x = m.unpatchify(m.final_layer(x, c))
        if m.learn_sigma:
            x, _ = x.chunk(2, dim=1)
        return x


# ----------------------------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------------------------

def matmul_flops_per_step(model: LightningDiT, batch: int, n_tokens: int) -> float:
    """Per-token matmul FLOPs of one training step: the blocks (qkv, QK^T, AV, proj, MLP) and the
    final linear x3 for fwd + bwd, the patch embedding x2 (its input needs no gradient)."""
    blk = model.blocks[0]
    D = blk.attn.qkv.in_features
    per_token = 2 * D * 3 * D + 2 * D * D + 2 * 2 * n_tokens * D  # qkv, proj, QK^T + AV
    per_token += sum(2 * m.in_features * m.out_features for m in blk.mlp.modules() if isinstance(m, nn.Linear))
    per_token *= 3 * len(model.blocks)
    per_token += 3 * 2 * model.final_layer.linear.in_features * model.final_layer.linear.out_features
    per_token += 2 * 2 * model.x_embedder.proj.weight.numel()  # (D, C, p, p): C p^2 -> D per token
    return float(per_token * n_tokens * batch)


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 2048, iters: int = 5) -> float:
    """Best FLOP/s of an n x n matmul over `iters` timed runs."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 / best_time(lambda: a @ b, device, iters)


def matmul_only_step_time(model: LightningDiT, batch: int, n_tokens: int, bf16: bool, device: torch.device,
                          iters: int = 3) -> float:
    """Seconds per step that the per-token matmuls alone take: each Linear of a block (fwd + bwd
    at the model's shapes) and its attention (fwd + bwd through the CPU kernels' dispatch, RoPE
    left out), times depth, plus the final linear; each the best of `iters`. The step time if every
    other op (elementwise, optimizer, Python) were free, so flops / this / peak bounds the MFU."""
    ctx = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    blk = model.blocks[0]
    linears = [m for name, m in blk.named_modules() if isinstance(m, nn.Linear) and "adaLN" not in name]

    def linear_step(lin: nn.Linear):
        lin = copy.deepcopy(lin).to(device)
        x = torch.randn(batch * n_tokens, lin.in_features, device=device, requires_grad=True)

        def run():
            with ctx:
                y = lin(x)
            y.backward(torch.ones_like(y))
        return run

    heads = model.num_heads
    head_dim = blk.attn.qkv.in_features // heads
    q, k, v = (torch.randn(batch, heads, n_tokens, head_dim, device=device, requires_grad=True) for _ in range(3))

    def attention_step():
        with ctx:
            out = cpu_attention(q, k, v)
        out.backward(torch.ones_like(out))

    per_block = sum(best_time(linear_step(lin), device, iters) for lin in linears)
    per_block += best_time(attention_step, device, iters)
    return per_block * len(model.blocks) + best_time(linear_step(model.final_layer.linear), device, iters)


def make_loss_fn() -> (Callable, str):
    """The real training loss from transport/ (velocity MSE + cosine, logit-normal t), else MSE."""
    try:
        import transport
        tr = transport.create_transport("Linear", "velocity", None, None, None,
                                        use_cosine_loss=True, use_lognorm=True)

        def loss_fn(model, x, y):
            terms = tr.training_losses(model, x, dict(y=y))
            loss = terms["loss"].mean()
            if "cos_loss" in terms:
                loss = loss + terms["cos_loss"].mean()
            return loss
        return loss_fn, "transport(Linear, velocity, cosine, lognorm)"
    except (ImportError, AttributeError, TypeError) as e:
        logger.warning("transport unavailable (%s); using plain MSE", e)

        def loss_fn(model, x, y):
            t = torch.rand(x.shape[0], device=x.device)
            return F.mse_loss(model(x, t, y), torch.randn_like(x))
        return loss_fn, "mse"


class Runner:
    def __init__(self, model: nn.Module, loss_fn, x, y, bf16: bool, device, optimizer: str = "fused"):
        self.model, self.loss_fn, self.x, self.y, self.device = model, loss_fn, x, y, device
        # The recipe's AdamW (lr 2e-4, betas (0.9, 0.95), no weight decay, docs/reference_behaviour.md §3.3). On CPU
        # torch defaults to the per-tensor loop; the fused kernel gives the same update far faster.
        impl = {"fused": dict(fused=True), "foreach": dict(foreach=True), "loop": dict(foreach=False)}[optimizer]
        self.opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4,
                                     betas=(0.9, 0.95), weight_decay=0, **impl)
        self.ctx = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else \
            (lambda: torch.autocast(device.type, enabled=False))
        self.times: List[float] = []

    def step(self, record: bool = True) -> None:
        sync(self.device)
        t0 = time.perf_counter()
        with self.ctx():
            loss = self.loss_fn(self.model, self.x, self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        sync(self.device)
        if record:
            self.times.append(time.perf_counter() - t0)


def main(argv: Optional[List[str]] = None) -> Dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="registry name (e.g. LightningDiT-B/1); overrides the sizes below")
    p.add_argument("--hidden", type=int, default=384)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--patch", type=int, default=1)
    p.add_argument("--input-size", type=int, default=16, help="latent side")
    p.add_argument("--in-channels", type=int, default=32)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--flags", default="use_swiglu,use_rope,use_rmsnorm",
                   help="comma-separated LightningDiT flags to switch on (default: the released ones)")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--rounds", type=int, default=5, help="alternating ours/baseline rounds")
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--optimizer", default="fused", choices=["fused", "foreach", "loop"],
                   help="AdamW implementation, the same for every variant")
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--compile", action="store_true", help="also time ours with compile_blocks()")
    p.add_argument("--no-allocator-tuning", action="store_true",
                   help="leave glibc malloc at its defaults (entry scripts tune it on CPU: utils/runtime.py)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    allocator_tuned = device.type == "cpu" and not args.no_allocator_tuning and tune_cpu_allocator()

    flags = {f: True for f in args.flags.split(",") if f}
    torch.manual_seed(args.seed)
    if args.model:
        model = LightningDiT_models[args.model](input_size=args.input_size, in_channels=args.in_channels, **flags)
    else:
        model = LightningDiT(input_size=args.input_size, patch_size=args.patch, in_channels=args.in_channels,
                             hidden_size=args.hidden, depth=args.depth, num_heads=args.heads, **flags)
    select_kernels(randomize_zero_init(model).to(device).train())  # CPU kernels on the CPU, as training runs
    n_tokens = model.x_embedder.num_patches
    flops = matmul_flops_per_step(model, args.batch, n_tokens)
    loss_fn, loss_name = make_loss_fn()
    x = torch.randn(args.batch, args.in_channels, args.input_size, args.input_size, device=device)
    y = torch.randint(0, 1000, (args.batch,), device=device)

    # Sanity: the baseline is the same function.
    baseline = None if args.no_baseline else PlainLightningDiT(model).to(device).train()
    check = {}
    if baseline is not None:
        model.eval(); baseline.eval()
        t = torch.rand(args.batch, device=device)
        with torch.no_grad():
            check["max_abs_diff_fp32"] = (model(x, t, y) - baseline(x, t, y)).abs().max().item()
        model.train(); baseline.train()

    results = {}
    for dt in args.dtypes.split(","):
        bf16 = dt == "bf16"
        variants = {"ours": Runner(copy.deepcopy(model), loss_fn, x, y, bf16, device, args.optimizer)}
        if baseline is not None:
            variants["baseline"] = Runner(copy.deepcopy(baseline), loss_fn, x, y, bf16, device, args.optimizer)
        if args.compile:
            compiled = select_kernels(copy.deepcopy(model).compile_blocks())
            variants["ours_compiled"] = Runner(compiled, loss_fn, x, y, bf16, device, args.optimizer)
        for r in variants.values():
            for _ in range(args.warmup):
                r.step(record=False)
        peaks = []
        names = list(variants)
        for rnd in range(args.rounds):
            peaks.append(matmul_peak(torch.bfloat16 if bf16 else torch.float32, device))
            for name in (names if rnd % 2 == 0 else names[::-1]):
                for _ in range(args.steps):
                    variants[name].step()
        peak = statistics.median(peaks)
        matmul_s = matmul_only_step_time(model, args.batch, n_tokens, bf16, device)
        res = {"matmul_peak_flops": peak, "matmul_peak_flops_best": max(peaks), "matmul_only_step_s": matmul_s,
               "mfu_bound_matmul_only": flops / matmul_s / peak}
        logger.info("%-5s matmuls alone  %.3f s/step  (MFU bound %.2f)", dt, matmul_s, flops / matmul_s / peak)
        for name, r in variants.items():
            med = statistics.median(r.times)
            res[name] = {"step_s": med, "step_s_min": min(r.times), "images_per_s": args.batch / med,
                         "flops_per_s": flops / med, "mfu": flops / med / peak,
                         "non_matmul_share": 1 - matmul_s / med}
            logger.info("%-5s %-13s step %.3f s (min %.3f)  %.1f img/s  %.1f GFLOP/s  MFU %.2f (peak %.0f GFLOP/s)",
                        dt, name, med, min(r.times), args.batch / med, flops / med / 1e9, flops / med / peak, peak / 1e9)
        if baseline is not None:
            res["ratio_ours_over_baseline"] = res["ours"]["step_s"] / res["baseline"]["step_s"]
            res["ratio_min_ours_over_baseline"] = res["ours"]["step_s_min"] / res["baseline"]["step_s_min"]
            logger.info("%-5s ours / baseline step time: %.3f (median), %.3f (min)", dt,
                        res["ratio_ours_over_baseline"], res["ratio_min_ours_over_baseline"])
        results[dt] = res

    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {
        "bench": "lightningdit_train_step", "device": str(device), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "loss": loss_name, "allocator_tuned": allocator_tuned,
        "config": {"model": args.model, "hidden": model.blocks[0].attn.qkv.in_features, "depth": len(model.blocks),
                   "heads": model.num_heads, "patch": model.patch_size, "input_size": args.input_size,
                   "in_channels": args.in_channels, "batch": args.batch, "flags": sorted(flags)},
        "optimizer": f"AdamW[{args.optimizer}]", "matmul_flops_per_step": flops, "rounds": args.rounds, "steps_per_round": args.steps,
        "results": results, "check": check, "peak_rss_mb": peak_rss_mb,
    }
    if device.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
