"""SFD's shards from extract_features.py (tokenizer YAML with a `semvae:` block, tokenizer/composite.py).

Tiny random encoders: the f2 VA-VAE of tests/datasets/tiny_vavae.yaml, a DINOv2-B/14-reg of width
32 (2 blocks), a Semantic VAE of ch16.yaml's layout at width 32 (configs/tokenizer/semvae_train/
tiny_cpu.yaml, named by SFD's path `tokenizer/configs/...`). 16 px images -> 8 x 8 latents, the
encoder sees the whole image at 8 x 14 = 112 px.

- every stored part equals a direct encoding of the same image and of its flip (texture sample,
  Semantic VAE sample mean + std * eps from the moments, fp16 patch tokens laid out h-major);
- both statistics files equal a direct computation over the shards' rows;
- 2 processes write the same bytes as 1; an interrupted run resumes to the same bytes;
- --no-repa leaves the REPA targets out; the disk the run needs is printed and a run the disk
  cannot hold is refused before anything is encoded (ImageNet's SFD shards: > 1 TB);
- SFD's positional command line; the semvae block's keys, path mapping and errors; SFD's tiling.
"""
import json
import os
import socket
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from safetensors import safe_open

import extract_features as ef
from datasets.img_latent_dataset import ImgLatentDataset, load_latent_stats, load_semantic_stats
from datasets.transforms import adm_transform
from tokenizer import composite

REPO = Path(__file__).resolve().parents[1]
TINY_YAML = REPO / "tests" / "datasets" / "tiny_vavae.yaml"
SEMVAE_YAML = "tokenizer/configs/semvae_train/tiny_cpu.yaml"      # SFD's path: found under configs/tokenizer
SIZE, GRID, SHARD, SEED = 16, 8, 5, 42
KWARGS = {"embed_dim": 32, "depth": 2, "num_heads": 2}
ENCODER = "dinov2_vitb14_reg"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sfd_extract")
    images = root / "images"
    rng = np.random.default_rng(0)
    for c, n in enumerate([5, 3, 4]):
        (images / f"class{c}").mkdir(parents=True)
        for i in range(n):
            h, w = rng.integers(14, 40, 2)
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / f"class{c}" / f"{i}.png")
    # a Semantic VAE in SFD's checkpoint layout
    from tokenizer.semvae import SFD_CHECKPOINT_KEYS, build_semantic_vae
    text = (REPO / "configs/tokenizer/semvae_train/tiny_cpu.yaml").read_text()
    model_cfg = OmegaConf.to_container(OmegaConf.create(text), resolve=True)["model"]
    torch.manual_seed(7)
    semvae = build_semantic_vae(model_cfg, input_dim=KWARGS["embed_dim"])
    with torch.no_grad():
        for p in semvae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ckpt = dict.fromkeys(SFD_CHECKPOINT_KEYS)
    ckpt.update(iteration=40, model_state_dict=semvae.state_dict(), config=text, input_dim=KWARGS["embed_dim"],
                bottleneck_dim=model_cfg["bottleneck_dim"])
    torch.save(ckpt, root / "semantic_ae_final.pt")
    yaml = OmegaConf.load(TINY_YAML)
    yaml.semvae = {"dino_model_name": ENCODER, "semvae_config": SEMVAE_YAML,
                   "semvae_ckpt_path": str(root / "semantic_ae_final.pt")}
    OmegaConf.save(yaml, root / "tiny_semvae.yaml")
    return {"root": root, "images": images, "yaml": root / "tiny_semvae.yaml"}


def _args(setup, out, *more):
    return ["--data-path", str(setup["images"]), "--output-path", str(out), "--tokenizer-config", str(setup["yaml"]),
            "--image-size", str(SIZE), "--batch-size", "3", "--shard-size", str(SHARD), "--seed", str(SEED),
            "--random-init-tokenizer", "--semantic-feat-type", "semvae", "--repa-model", ENCODER,
            "--encoder-model-kwargs", json.dumps(KWARGS), "--num-workers", "0", *more]


def _run(cmd, expect=0, **env):
    full = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **env)
    res = subprocess.run(cmd, cwd=REPO, env=full, capture_output=True, text=True, timeout=600)
    assert res.returncode == expect, res.stdout[-3000:] + res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def single(setup):
    out = setup["root"] / "single"
    res = _run([sys.executable, "extract_features.py", *_args(setup, out)])
    return out, res.stdout + res.stderr


def shards(out):
    return sorted(Path(out).glob("*.safetensors"))


def read_all(out):
    """{key: rows of every shard, concatenated in shard order}."""
    parts = {}
    for path in shards(out):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                parts.setdefault(key, []).append(f.get_tensor(key))
    return {k: torch.cat(v) for k, v in parts.items()}


def direct_encoding(setup):
    """Each image and its flip through the three encoders one at a time, written from the
    definitions (not through tokenizer/composite.py)."""
    from datasets.image_folder import ADMImageFolder
    from tokenizer.foundation import FoundationModel, semantic_latent_view
    from tokenizer.semvae import load_semantic_vae
    from tokenizer.vavae import VA_VAE

    torch.manual_seed(SEED)   # the script's order: tokenizer, then the encoder
    vae = VA_VAE(str(setup["yaml"]), img_size=SIZE, fp16=False, device="cpu", random_init=True)
    encoder = FoundationModel(ENCODER, model_kwargs=KWARGS, random_init=True)
    semvae = load_semantic_vae(str(setup["root"] / "semantic_ae_final.pt"))
    ds = ADMImageFolder(str(setup["images"]), image_size=SIZE)
    out = {k: [] for k in ("latents", "latents_flip", "latents_sv", "latents_sv_flip", "feats_dino",
                           "feats_dino_flip", "labels")}
    with torch.no_grad():
        for i, (path, label) in enumerate(ds.samples):
            x = adm_transform(SIZE)(Image.open(path).convert("RGB"))[None]
            both = torch.cat([x, x.flip(-1)])
            post = vae.model.encode(both)
            z = post.mean + post.std * ef.posterior_noise(SEED, [i], tuple(post.mean.shape[1:]))[:, 0]
            tokens = encoder.tokens(semantic_latent_view(both, size=GRID * 14))[1]      # (2, 64, 32)
            mean, logvar = semvae.moments(tokens)                                        # (2, b, 64)
            eps = ef.semantic_noise(SEED, [i], (semvae.bottleneck_dim, GRID, GRID))[:, 0]
            sv = (mean + torch.exp(0.5 * logvar) * eps.flatten(2)).reshape(2, -1, GRID, GRID)
            feats = tokens.transpose(1, 2).reshape(2, -1, GRID, GRID).half()
            for key, value in (("latents", z), ("latents_sv", sv), ("feats_dino", feats)):
                out[key].append(value[0])
                out[key + "_flip"].append(value[1])
            out["labels"].append(torch.tensor(label))
    return {k: torch.stack(v) for k, v in out.items()}


def test_shards_equal_direct_encoding(setup, single):
    out, log = single
    assert [p.name for p in shards(out)] == [f"latents_rank00_shard{k:03d}.safetensors" for k in range(3)]
    with safe_open(str(shards(out)[0]), framework="pt") as f:
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
        assert f.metadata() == {"total_size": "5", "dtype": "torch.float32", "device": "cpu"}
    assert dtypes == {"latents": "F32", "latents_flip": "F32", "labels": "I64", "latents_sv": "F32",
                      "latents_sv_flip": "F32", "feats_dino": "F16", "feats_dino_flip": "F16"}
    got, want = read_all(out), direct_encoding(setup)
    assert got.keys() == want.keys()
    assert got["latents_sv"].shape == (12, 4, GRID, GRID) and got["feats_dino"].shape == (12, 32, GRID, GRID)
    assert torch.equal(got["labels"], want["labels"])
    for key in ("latents", "latents_flip", "latents_sv", "latents_sv_flip"):
        torch.testing.assert_close(got[key], want[key], atol=1e-4, rtol=1e-4, msg=key)
    for key in ("feats_dino", "feats_dino_flip"):      # fp16 of nearly equal floats: one ulp at most
        torch.testing.assert_close(got[key].float(), want[key].float(), atol=2e-3, rtol=1e-3, msg=key)
    # each flip really is the flipped image's (not a second sample of the same view)
    assert (got["latents_sv_flip"] - got["latents_sv"]).abs().max() > 1e-2
    assert "the 12 image(s) left need" in log and "free in" in log


def test_statistics_equal_a_direct_computation(single):
    out, _ = single
    got = read_all(out)
    for key, (mean, std) in (("latents", load_latent_stats(out)), ("latents_sv", load_semantic_stats(out))):
        rows = got[key].double()                    # 12 rows < 10,000: every row is drawn
        want_mean = rows.mean(dim=(0, 2, 3))
        want_std = rows.permute(1, 0, 2, 3).flatten(1).std(dim=1)   # unbiased
        torch.testing.assert_close(mean.flatten().double(), want_mean, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(std.flatten().double(), want_std, atol=1e-6, rtol=1e-6)
    # the dataset reads the composite with one flip for all parts
    ds = ImgLatentDataset(out, latent_norm=True, latent_sv_norm=True, semantic_chans=4, repa=True)
    x, y, extras = ds[0]
    assert x.shape == (8, GRID, GRID) and extras["repa_target"].shape == (32, GRID, GRID)
    flipped = torch.allclose(extras["repa_target"], got["feats_dino_flip"][0].float())
    sv = got["latents_sv_flip" if flipped else "latents_sv"][0]
    sv_mean, sv_std = load_semantic_stats(out)
    torch.testing.assert_close(x[4:], (sv - sv_mean[0]) / sv_std[0])


def test_two_processes_and_resume_write_the_same_bytes(setup, single):
    out, _ = single
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = setup["root"] / "two"
    _run(["bash", "run_extraction.sh", *_args(setup, two)], GPUS_PER_NODE="2", MASTER_PORT=str(port))
    stopped = setup["root"] / "stopped"
    cmd = [sys.executable, "extract_features.py", *_args(setup, stopped)]
    _run(cmd + ["--stop-after-shards", "1"], expect=ef.STOPPED_EXIT_CODE)
    assert len(shards(stopped)) == 1
    assert "2 of its 3 shards to do" in _run(cmd).stdout
    for other in (two, stopped):
        names = {0: "latents_rank00_shard000", 1: "latents_rank01_shard000", 2: "latents_rank00_shard001"} \
            if other == two else {k: f"latents_rank00_shard{k:03d}" for k in range(3)}
        for k, name in names.items():
            assert (other / f"{name}.safetensors").read_bytes() == \
                (out / f"latents_rank00_shard{k:03d}.safetensors").read_bytes(), (other.name, k)
        for stats in ("latents_stats.pt", "latents_sv_stats.pt"):
            for a, b in zip(torch.load(other / stats, weights_only=True).values(),
                            torch.load(out / stats, weights_only=True).values()):
                assert torch.equal(a, b)
    # a restart with another REPA setting is refused, naming the key
    with pytest.raises(ValueError, match="repa_model"):
        ef.check_manifest(out, dict(json.loads((out / "extraction.json").read_text()), repa_model=None))


def test_no_repa_leaves_the_targets_out(setup, single):
    out = setup["root"] / "no_repa"
    _run([sys.executable, "extract_features.py", *_args(setup, out, "--no-repa")])
    got, full = read_all(out), read_all(single[0])
    assert set(got) == {"latents", "latents_flip", "labels", "latents_sv", "latents_sv_flip"}
    for key in got:        # the same noise streams: the other parts do not change
        assert torch.equal(got[key], full[key]), key


def test_repa_grid_averages_the_targets(setup, single):
    """--repa-grid 4: the REPA targets of a patch-2 model, 2 x 2 means of the latent-grid tokens."""
    out = setup["root"] / "repa_grid"
    _run([sys.executable, "extract_features.py", *_args(setup, out, "--repa-grid", "4")])
    got, full = read_all(out), read_all(single[0])
    for key in ("feats_dino", "feats_dino_flip"):
        assert got[key].shape == (12, 32, 4, 4) and got[key].dtype == torch.float16
        want = torch.nn.functional.avg_pool2d(full[key].float(), 2)
        torch.testing.assert_close(got[key].float(), want, atol=2e-3, rtol=2e-3)
    for key in ("latents", "latents_sv", "labels"):
        assert torch.equal(got[key], full[key]), key


def test_disk_check_refuses_before_encoding(setup, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(ef.shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    out = setup["root"] / "full_disk"
    with pytest.raises(ValueError, match=r"the extraction needs 159.8 kB but only 1.0 kB is free \(--no-repa leaves out"):
        ef.main(_args(setup, out))
    assert not shards(out)


def test_imagenet_sfd_shards_need_more_than_a_terabyte():
    per_image = ef.bytes_per_image((32, 16, 16), {"latents_sv": ((16, 16, 16), torch.float32),
                                                   "feats_dino": ((768, 16, 16), torch.float16)})
    assert per_image == {"latents": 2 * 32 * 256 * 4, "latents_sv": 2 * 16 * 256 * 4,
                         "feats_dino": 2 * 768 * 256 * 2, "labels": 8}
    total = 1_281_167 * sum(per_image.values())
    assert 1.13e12 < total < 1.14e12                       # SFD's "more than 1 TB"
    assert per_image["feats_dino"] / sum(per_image.values()) > 0.88      # REPA's share


def test_sfd_command_line():
    argv = ef.sfd_command_line(["configs/tokenizer/sdvae_f16d32_semvaebasech16.yaml", "semvae", "dinov2_vitb14_reg",
                                "--dino-weights", "w.pth"])
    args = ef.parse_args(argv)
    assert args.data_path == ef.SFD_DATA_PATH and args.image_size == 256
    assert args.output_path == ("outputs/dataset/imagenet1k-latents/sdvae_f16d32_semvaebasech16_repadinov2_vitb14_reg/"
                                "imagenet_train_256")       # the data_path of SFD's training YAMLs
    assert args.semantic_feat_type == "semvae" and args.repa_model == ENCODER and args.dino_weights == "w.pth"
    args = ef.parse_args(["x.yaml", "semvae", "dinov2_vitb14_reg", "512", "--no-repa", "--data-path", "/d"])
    assert args.repa_model is None and args.image_size == 512 and args.data_path == "/d"
    assert args.output_path.endswith("/x/imagenet_train_512")
    assert ef.sfd_command_line(["--data-path", "a"]) == ["--data-path", "a"]


def test_semvae_block(setup, tmp_path):
    block = composite.read_semvae_block(setup["yaml"])
    assert block.dino_model_name == ENCODER and block.semvae_config == "configs/tokenizer/semvae_train/tiny_cpu.yaml"
    assert composite.read_semvae_block(TINY_YAML) is None
    # SFD's released YAML: its Semantic VAE is not here; the error names the file and the key
    with pytest.raises(FileNotFoundError, match=r"sdvae_f16d32_semvaebasech16.yaml: semvae.semvae_ckpt_path: file"):
        composite.read_semvae_block(REPO / "configs/tokenizer/sdvae_f16d32_semvaebasech16.yaml")
    for change, message in (({"extra": "x"}, "unknown key 'semvae.extra'"),
                            ({"dino_model_name": "dinov2"}, "bad value for 'semvae.dino_model_name'"),
                            ({"model_name": ENCODER}, "'semvae.model_name' repeats")):
        yaml = OmegaConf.load(setup["yaml"])
        yaml.semvae.update(change)
        OmegaConf.save(yaml, tmp_path / "bad.yaml")
        with pytest.raises(ValueError, match=message):
            composite.read_semvae_block(tmp_path / "bad.yaml")


def test_tiles_follow_sfd_layout():
    """32 x 32 grids (512 px) are SFD's 2 x 2 tiles of 16 x 16 tokens; smaller grids one tile."""
    import einops

    tokens = torch.randn(4 * 3, 256, 5)                 # 3 images x 4 tiles
    grid = composite.tokens_to_grid(tokens, 32)
    want = einops.rearrange(einops.rearrange(tokens, "b (h w) d -> b d h w", h=16, w=16),
                            "(b p1 p2) d h w -> b d (p1 h) (p2 w)", p1=2, p2=2)
    assert torch.equal(grid, want) and torch.equal(composite.grid_to_tokens(grid), tokens)
    small = torch.randn(2, 64, 5)
    assert torch.equal(composite.tokens_to_grid(small, 8), einops.rearrange(small, "b (h w) d -> b d h w", h=8))
    images = torch.randn(3, 3, 512, 512)

    class Probe(torch.nn.Module):     # records the views the encoder is given
        patch_size = 14

        def tokens(self, x):
            self.seen = x
            return None, torch.zeros(x.shape[0], 256, 1)

    probe = Probe()
    composite.grid_tokens(probe, images, 32)
    tiles = einops.rearrange(images, "b c (p1 h) (p2 w) -> (b p1 p2) c h w", p1=2, p2=2)
    from tokenizer.foundation import semantic_latent_view
    assert torch.equal(probe.seen, semantic_latent_view(tiles, 224))
