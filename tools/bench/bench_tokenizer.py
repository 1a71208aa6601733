"""Encode / decode throughput of the VA-VAE autoencoder, SDPA attention vs the reference's bmm.

Builds the autoencoder of a tokenizer YAML (default: the released f16d32 architecture) with random
weights, times `encode` (+ posterior sample) and `decode` at the given resolution, and reruns the
same with `AttnBlock` swapped for the reference's bmm/softmax/bmm formulation as the baseline.
Prints one JSON line. Example: python tools/bench/bench_tokenizer.py --batch-size 1 --repeats 3
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import resource
import statistics
import time

import torch
from omegaconf import OmegaConf


from tokenizer.autoencoder import AttnBlock, AutoencoderKL
from utils.safe_yaml import load_yaml
from tools.bench.common import sync as sync_device


def bmm_attention_forward(self: AttnBlock, x: torch.Tensor) -> torch.Tensor:
    """The reference (LDM) AttnBlock forward: explicit (HW x HW) weights."""
    b, c, h, w = x.shape
    y = self.norm(x)
    q = self.q(y).reshape(b, c, h * w).permute(0, 2, 1)
    k = self.k(y).reshape(b, c, h * w)
    attn = torch.softmax(torch.bmm(q, k) * (int(c) ** -0.5), dim=2)
    v = self.v(y).reshape(b, c, h * w)
    out = torch.bmm(v, attn.permute(0, 2, 1)).reshape(b, c, h, w)
    return x + self.proj_out(out)


def timeit_pair(fn, baseline, repeats: int, sync) -> tuple[float, float]:
    """Median seconds of `fn` and `baseline`, interleaved so machine-load drift hits both alike."""
    fn(), baseline()  # warm-up
    sync()
    t_fn, t_base = [], []
    for _ in range(repeats):
        for f, times in ((fn, t_fn), (baseline, t_base)):
            t0 = time.perf_counter()
            f()
            sync()
            times.append(time.perf_counter() - t0)
    return statistics.median(t_fn), statistics.median(t_base)


@contextlib.contextmanager
def bmm_attention():
    """Temporarily run every AttnBlock with the reference formulation."""
    sdpa_forward = AttnBlock.forward
    AttnBlock.forward = bmm_attention_forward
    try:
        yield
    finally:
        AttnBlock.forward = sdpa_forward


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/tokenizer/vavae_f16d32.yaml")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="autocast dtype (fp16 only on CUDA; bf16 works on CPU)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()

    device = torch.device(args.device)
    cfg = load_yaml(args.config).model.params
    torch.manual_seed(0)
    model = AutoencoderKL(OmegaConf.to_container(cfg.ddconfig), int(cfg.embed_dim)).to(device).eval()
    x = torch.rand(args.batch_size, 3, args.image_size, args.image_size, device=device) * 2 - 1
    sync = functools.partial(sync_device, device)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
    with torch.no_grad(), autocast():
        z = model.encode(x).sample()

    def with_bmm(fn):
        def run():
            with bmm_attention():
                return fn()
        return run

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad(), autocast():
        encode = lambda: model.encode(x).sample(gen)  # noqa: E731
        decode = lambda: model.decode(z)              # noqa: E731
        t_enc, t_enc_bmm = timeit_pair(encode, with_bmm(encode), args.repeats, sync)
        t_dec, t_dec_bmm = timeit_pair(decode, with_bmm(decode), args.repeats, sync)
        out, out_bmm = decode().float(), with_bmm(decode)().float()
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    result = {
        "bench": "tokenizer", "device": str(device), "config": args.config, "precision": args.precision,
        "batch_size": args.batch_size, "image_size": args.image_size,
        "latent_shape": list(z.shape[1:]),
        "encode_img_per_s": round(args.batch_size / t_enc, 4),
        "decode_img_per_s": round(args.batch_size / t_dec, 4),
        "bmm_encode_img_per_s": round(args.batch_size / t_enc_bmm, 4),
        "bmm_decode_img_per_s": round(args.batch_size / t_dec_bmm, 4),
        "encode_speedup_vs_bmm": round(t_enc_bmm / t_enc, 3),
        "decode_speedup_vs_bmm": round(t_dec_bmm / t_dec, 3),
        "max_abs_diff_vs_bmm": float((out - out_bmm).abs().max()),
        "peak_memory_mib": round(peak, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
