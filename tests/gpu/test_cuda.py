"""The GPU path (marker `gpu`; skipped without CUDA): `bash run_tests.sh -m gpu tests/gpu`.

On CUDA the model runs the plain modules (models/kernels.py); these tests check them against
the CPU float64 formulation, check that the hand-written CPU kernels never run, that compiled
equals eager, that training resumes exactly, that FID images do not depend on the batch size,
and that the ADM evaluator's Inception features on CUDA equal the CPU ones."""
import copy
from pathlib import Path

import numpy as np
import pytest
import torch

import models.attention as attention
from configs.schema import load_config
from models.attention import ShiftedBF16Attention
from models.fused_ops import RMSNormModulate, SiLUGate
from models.kernels import select_kernels, use_cpu_kernels, uses_cpu_kernels
from models.lightningdit import LightningDiT

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs/tiny/lightningdit_tiny.yaml")
RELEASED = dict(use_swiglu=True, use_rope=True, use_rmsnorm=True)
CPU_KERNELS = ((RMSNormModulate, "apply"), (SiLUGate, "apply"), (ShiftedBF16Attention, "apply"),
               (attention, "rotate_pairs"))


@pytest.fixture(autouse=True)
def _no_tf32():
    """Full fp32 matmuls for the comparisons (training itself runs with TF32 on)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.fixture
def no_cpu_kernels(monkeypatch):
    def make(label):
        def fail(*args, **kwargs):
            raise AssertionError(f"CPU kernel {label} called on CUDA")
        return fail
    for owner, name in CPU_KERNELS:
        monkeypatch.setattr(owner, name, make(f"{getattr(owner, '__name__', owner)}.{name}"))


def tiny_model(**flags):
    torch.manual_seed(0)
    m = LightningDiT(input_size=16, patch_size=1, in_channels=32, hidden_size=128, depth=3, num_heads=2,
                     num_classes=10, **flags)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name != "pos_embed":
                p.add_(0.05 * torch.randn_like(p))
    return m


def block_stack(m, x, c):
    h = x
    for block in m.blocks:
        h = block(h, c, m.feat_rope)
    return m.final_layer(h, c)


@pytest.mark.parametrize("bf16", [False, True])
def test_blocks_match_cpu_float64(no_cpu_kernels, bf16):
    """Blocks + final layer on CUDA (fp32, or bf16 autocast) against the CPU float64 forward and
    parameter gradients (head_dim 64, 256 tokens: the released shapes per head)."""
    ref = tiny_model(**RELEASED, use_qknorm=True).double()
    gpu = select_kernels(use_cpu_kernels(copy.deepcopy(ref)).float().cuda())
    assert not uses_cpu_kernels(gpu)
    g = torch.Generator().manual_seed(1)
    x, c = torch.randn(4, 256, 128, generator=g, dtype=torch.float64), torch.randn(4, 128, generator=g, dtype=torch.float64)
    out_ref = block_stack_cpu_reference(ref, x, c)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        out = block_stack(gpu, x.float().cuda(), c.float().cuda())
    out.float().square().mean().backward()
    tol = 4e-2 if bf16 else 1e-4
    scale = out_ref[0].abs().max().item()
    torch.testing.assert_close(out.double().cpu(), out_ref[0], rtol=0, atol=tol * scale)
    for name, p in gpu.named_parameters():
        if p.grad is None:
            continue
        g_ref = out_ref[1][name]
        torch.testing.assert_close(p.grad.double().cpu(), g_ref, rtol=0,
                                   atol=tol * max(g_ref.abs().max().item(), 1e-8), msg=name)


def block_stack_cpu_reference(ref, x, c):
    """float64 on CPU through the plain modules (the CPU kernels are patched to raise)."""
    out = block_stack(ref, x, c)
    out.square().mean().backward()
    return out.detach(), {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("bf16", [False, True])
def test_full_model_never_calls_cpu_kernels(no_cpu_kernels, bf16):
    """Even with the CPU variants left in (no select_kernels after .cuda()), they defer to the
    plain forward on CUDA tensors."""
    m = use_cpu_kernels(tiny_model(**RELEASED, use_qknorm=True)).cuda().train()
    x, t, y = torch.randn(4, 32, 16, 16, device="cuda"), torch.rand(4, device="cuda"), torch.arange(4, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        out = m(x, t, y)
    out.float().square().mean().backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)


@pytest.mark.parametrize("bf16", [False, True])
def test_compiled_equals_eager(no_cpu_kernels, bf16):
    m = tiny_model(**RELEASED).cuda()
    compiled = copy.deepcopy(m).compile_blocks()
    x, t, y = torch.randn(4, 32, 16, 16, device="cuda"), torch.rand(4, device="cuda"), torch.arange(4, device="cuda")
    outs = []
    for model in (m, compiled):
        model.train()
        torch.manual_seed(5)  # the same label dropout
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            out = model(x, t, y)
        out.float().square().mean().backward()
        outs.append(out.float())
    tol = 2e-2 if bf16 else 1e-4
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=tol * outs[0].abs().max().item())
    for (name, p1), (_, p2) in zip(m.named_parameters(), compiled.named_parameters()):
        if p1.grad is not None:
            torch.testing.assert_close(p2.grad, p1.grad, rtol=0, atol=tol * max(p1.grad.abs().max().item(), 1e-8),
                                       msg=name)


def test_training_resumes_exactly(tmp_path):
    """6 steps straight vs 3 + resume 3 on CUDA (the tiny config, eager)."""
    import train
    from datasets.tiny_latents import write_tiny_latents

    data = write_tiny_latents(str(tmp_path / "latents"), num_items=64, shape=(4, 4, 4), num_classes=10)
    common = [TINY, f"data.data_path={data}", f"train.output_dir={tmp_path / 'out'}", "train.global_batch_size=8",
              "train.log_every=3", "train.ckpt_every=3", "model.compile=false"]
    train.main(common + ["train.exp_name=straight", "train.max_steps=6"])
    train.main(common + ["train.exp_name=resumed", "train.max_steps=3"])
    train.main(common + ["train.exp_name=resumed", "train.max_steps=6", "train.resume=true"])
    a = torch.load(tmp_path / "out/straight/checkpoints/0000006.pt", map_location="cpu", weights_only=True)
    b = torch.load(tmp_path / "out/resumed/checkpoints/0000006.pt", map_location="cpu", weights_only=True)
    for key in ("model", "ema"):
        for name, value in a[key].items():
            # bit-exact where the CUDA kernels are deterministic; a hair of atomics-order noise allowed
            torch.testing.assert_close(b[key][name], value, rtol=1e-5, atol=1e-6, msg=f"{key}.{name}")


def test_fid_images_do_not_depend_on_batch_size():
    from datasets.order import sample_labels, sample_noise
    from models.build import build_model, latent_size
    from sampling import Decoder, LatentSampler

    overrides = ["sample.num_sampling_steps=20", "sample.cfg_scale=4.0", "sample.cfg_interval_start=0.3",
                 "data.latent_norm=false"]
    cfg = load_config(TINY, overrides)
    torch.manual_seed(0)
    model = build_model(cfg, training=False)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model = select_kernels(model.cuda().eval())
    assert not uses_cpu_kernels(model)
    decoder = Decoder(cfg, torch.device("cuda"), random_init=True)
    c, h = cfg.model.in_chans, latent_size(cfg)
    images = {}
    with torch.no_grad():
        for batch in (2, 8):
            sampler = LatentSampler(cfg, model)
            out = []
            for lo in range(0, 8, batch):
                ids = list(range(lo, lo + batch))
                z = sample_noise(ids, (c, h, h), 0).cuda()
                y = sample_labels(ids, cfg.data.num_classes, 0, "uniform", 8).cuda()
                out.append(decoder(sampler(z, y)))
            images[batch] = np.concatenate(out).astype(np.int16)
    assert np.abs(images[2] - images[8]).max() <= 1


def test_adm_inception_features_cuda_equal_cpu():
    from evaluation.inception import InceptionFeatureExtractor

    images = np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    feats = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        extractor = InceptionFeatureExtractor(None, device=device, random_init=True)
        with torch.no_grad():
            feats[device] = {k: v.cpu() for k, v in extractor(images).items()}
    for key, ref in feats["cpu"].items():
        torch.testing.assert_close(feats["cuda"][key], ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item(), msg=key)
