"""SD_VAE wrapper (tokenizer/sdvae.py) against independently built models: a diffusers AutoencoderKL
saved in the Hugging Face layout, our own LDM AutoencoderKL saved under CompVis names, legacy
diffusers attention names; loading errors; the factory; extraction shards with SD-VAE latents;
the Decoder's Table 1 scaling."""
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

pytest.importorskip("diffusers")
from diffusers import AutoencoderKL as DiffusersAutoencoderKL  # noqa: E402

import extract_features as ef  # noqa: E402
from configs.schema import load_config  # noqa: E402
from datasets.transforms import adm_transform  # noqa: E402
from sampling.pipeline import Decoder  # noqa: E402
from tokenizer import SD_VAE, build_tokenizer, load_tokenizer  # noqa: E402
from tokenizer.autoencoder import AutoencoderKL as LDMAutoencoderKL  # noqa: E402
from tokenizer.factory import tokenizer_type  # noqa: E402
from tokenizer.sdvae import ldm_to_diffusers_key  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
# A 4-level (f8), 4-channel kl autoencoder at toy width: the SD-VAE architecture, 32/64 channels.
TINY = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[32, 64, 64, 64],
            layers_per_block=1, act_fn="silu", latent_channels=4, norm_num_groups=32, sample_size=32)
# The same network in LDM terms (ch_mult 1,2,2,2 of ch 32; no attention outside the mid blocks).
TINY_LDM = dict(double_z=True, z_channels=4, resolution=32, in_channels=3, out_ch=3, ch=32,
                ch_mult=[1, 2, 2, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0)


def write_yaml(path: Path, ckpt_path, params=TINY) -> Path:
    cfg = {"tokenizer": "sdvae", "ckpt_path": None if ckpt_path is None else str(ckpt_path),
           "model": {"target": "diffusers.AutoencoderKL", "params": dict(params)}}
    OmegaConf.save(OmegaConf.create(cfg), path)
    return path


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial weights everywhere (GroupNorm affine and zero-initialised layers included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny random diffusers AutoencoderKL saved with save_pretrained (config.json + safetensors)."""
    root = tmp_path_factory.mktemp("sdvae")
    torch.manual_seed(0)
    vae = randomize(DiffusersAutoencoderKL(**TINY), 1)
    vae.save_pretrained(root / "tiny-sd-vae")
    assert {p.name for p in (root / "tiny-sd-vae").iterdir()} >= {
        "config.json", "diffusion_pytorch_model.safetensors"}
    return root / "tiny-sd-vae", vae


def images(n=2, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_directory_load_equals_diffusers(hf_dir, tmp_path):
    path, ref = hf_dir
    tok = build_tokenizer("sdvae", write_yaml(tmp_path / "t.yaml", path), img_size=32, device="cpu",
                          fp16=False)
    assert isinstance(tok, SD_VAE) and tok.embed_dim == 4 and tok.model.downsample_factor == 8
    x = images()
    with torch.no_grad():
        dist = ref.encode(x).latent_dist
        expect_sample = dist.sample(generator=torch.Generator().manual_seed(5))
        expect_mode = dist.mode()
    z = tok.encode_images(x, generator=torch.Generator().manual_seed(5))
    assert z.shape == (2, 4, 4, 4) and z.dtype == torch.float32
    torch.testing.assert_close(z, expect_sample, rtol=0, atol=0)
    torch.testing.assert_close(tok.encode_images(x, sample=False), expect_mode, rtol=0, atol=0)
    assert not torch.equal(expect_sample, expect_mode)

    with torch.no_grad():
        rec = ref.decode(z).sample
    torch.testing.assert_close(tok.decode(z), rec, rtol=0, atol=0)
    u8 = tok.decode_to_images(z)
    expect_u8 = torch.clamp(127.5 * rec + 128.0, 0, 255).permute(0, 2, 3, 1).to(torch.uint8).numpy()
    assert isinstance(u8, np.ndarray) and u8.dtype == np.uint8 and u8.shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(u8, expect_u8)
    assert len(np.unique(u8)) > 10


def test_single_file_with_ldm_names_equals_our_ldm_autoencoder(tmp_path):
    """An original-format (CompVis) checkpoint, `first_stage_model.` prefix and 1x1-conv attention,
    loads into diffusers and computes what our independent LDM implementation computes."""
    torch.manual_seed(0)
    ldm = randomize(LDMAutoencoderKL(TINY_LDM, embed_dim=4), 2)
    sd = {f"first_stage_model.{k}": v.contiguous() for k, v in ldm.state_dict().items()}
    save_file(sd, str(tmp_path / "vae-original.safetensors"))
    tok = SD_VAE(write_yaml(tmp_path / "t.yaml", tmp_path / "vae-original.safetensors"),
                 img_size=32, device="cpu", fp16=False)
    x = images(seed=1)
    with torch.no_grad():
        post = ldm.encode(x)
        rec = ldm.decode(post.mean)
    torch.testing.assert_close(tok.encode_images(x, sample=False), post.mean, rtol=1e-4, atol=1e-5)
    z = tok.encode_images(x, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(z, post.sample(torch.Generator().manual_seed(3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(tok.decode(post.mean), rec, rtol=1e-4, atol=1e-4)


def test_key_renaming_table():
    n = 4
    cases = {
        "encoder.down.0.block.1.nin_shortcut.weight": "encoder.down_blocks.0.resnets.1.conv_shortcut.weight",
        "encoder.down.2.downsample.conv.bias": "encoder.down_blocks.2.downsamplers.0.conv.bias",
        "decoder.up.0.block.2.conv1.weight": "decoder.up_blocks.3.resnets.2.conv1.weight",
        "decoder.up.3.upsample.conv.weight": "decoder.up_blocks.0.upsamplers.0.conv.weight",
        "decoder.mid.block_2.norm1.bias": "decoder.mid_block.resnets.1.norm1.bias",
        "encoder.mid.attn_1.proj_out.weight": "encoder.mid_block.attentions.0.to_out.0.weight",
        "encoder.mid.attn_1.norm.weight": "encoder.mid_block.attentions.0.group_norm.weight",
        "vae.decoder.norm_out.weight": "decoder.conv_norm_out.weight",
        "decoder.mid_block.attentions.0.proj_attn.bias": "decoder.mid_block.attentions.0.to_out.0.bias",
        "quant_conv.weight": "quant_conv.weight",
        "decoder.up_blocks.1.resnets.0.conv1.weight": "decoder.up_blocks.1.resnets.0.conv1.weight",
    }
    for old, new in cases.items():
        assert ldm_to_diffusers_key(old, n) == new, old


def test_single_file_with_legacy_attention_names(hf_dir, tmp_path):
    """diffusers <= 0.13 spelled the mid attention query/key/value/proj_attn (hub weights of 2022)."""
    path, ref = hf_dir
    legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    sd = {}
    for k, v in ref.state_dict().items():
        for new, old in legacy.items():
            k = k.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
        sd[k] = v.clone()
    assert any(".query." in k for k in sd)
    torch.save({"state_dict": sd}, tmp_path / "legacy.ckpt")
    tok = SD_VAE(write_yaml(tmp_path / "t.yaml", tmp_path / "legacy.ckpt"), device="cpu", fp16=False)
    for k, v in ref.state_dict().items():
        assert torch.equal(tok.model.vae.state_dict()[k], v), k


def test_missing_and_wrong_files_are_one_line_errors(hf_dir, tmp_path):
    path, _ = hf_dir
    with pytest.raises(FileNotFoundError, match=r"nowhere.*stabilityai/sd-vae-ft-ema"):
        SD_VAE(write_yaml(tmp_path / "a.yaml", tmp_path / "nowhere"), device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty/config.json.*stabilityai/sd-vae-ft-mse"):
        SD_VAE(write_yaml(tmp_path / "b.yaml", tmp_path / "empty"), device="cpu")
    (tmp_path / "empty" / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match=r"empty/diffusion_pytorch_model.safetensors"):
        SD_VAE(write_yaml(tmp_path / "c.yaml", tmp_path / "empty"), device="cpu")
    with pytest.raises(ValueError, match="ckpt_path is not set"):
        SD_VAE(write_yaml(tmp_path / "d.yaml", None), device="cpu")
    torch.save({"encoder.conv_in.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="missing keys"):
        SD_VAE(write_yaml(tmp_path / "e.yaml", tmp_path / "bad.pt"), device="cpu")
    with pytest.raises(FileNotFoundError, match="no.yaml"):
        SD_VAE(tmp_path / "no.yaml")
    OmegaConf.save(OmegaConf.create({"tokenizer": "sdvae", "ckpt_path": None}), tmp_path / "f.yaml")
    with pytest.raises(ValueError, match="model.params.latent_channels"):
        SD_VAE(tmp_path / "f.yaml", random_init=True)


def test_released_configs_and_factory():
    for name in ("sdvae_ft_ema", "sdvae_ft_mse"):
        path = REPO / "configs" / "tokenizer" / f"{name}.yaml"
        cfg = OmegaConf.load(path)
        assert tokenizer_type(path) == "sdvae"
        assert cfg.ckpt_path == f"pretrained_models/sd-vae-ft-{name[-3:]}"
        with torch.device("meta"):  # the hub config.json architecture, without allocating it
            vae = DiffusersAutoencoderKL(**OmegaConf.to_container(cfg.model.params))
        assert len(vae.state_dict()) == 248
        assert sum(p.numel() for p in vae.parameters()) == 83_653_863
    assert tokenizer_type(REPO / "configs/tokenizer/vavae_f16d32.yaml") == "vavae"
    assert tokenizer_type(REPO / "configs/tokenizer/marvae_kl16.yaml") == "marvae"
    with pytest.raises(ValueError, match="unknown tokenizer model_type"):
        build_tokenizer("sd", "configs/tokenizer/sdvae_ft_ema.yaml")


def test_load_tokenizer_random_init_builds_the_yaml_architecture(tmp_path):
    tok = load_tokenizer(write_yaml(tmp_path / "t.yaml", None), device="cpu", random_init=True)
    assert isinstance(tok, SD_VAE)
    assert list(tok.model.vae.config.block_out_channels) == TINY["block_out_channels"]


# ------------------------------------------------------------------------------------------------
# extract_features.py with the SD-VAE
# ------------------------------------------------------------------------------------------------

def test_extraction_writes_sdvae_latents(hf_dir, tmp_path):
    """f8 at 32 px -> (4, 4, 4) latents (the (4, 32, 32) of 256 px, scaled down): the posterior
    mode of each image and of its flip, equal to encoding the ADM-cropped image directly."""
    path, ref = hf_dir
    rng = np.random.default_rng(0)
    for c in range(2):
        (tmp_path / "imgs" / f"c{c}").mkdir(parents=True)
        for i in range(3):
            h, w = rng.integers(32, 60, 2)
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                tmp_path / "imgs" / f"c{c}" / f"{i}.png")
    yaml = write_yaml(tmp_path / "t.yaml", path)
    out = tmp_path / "latents"
    base = ["--data-path", str(tmp_path / "imgs"), "--tokenizer-config", str(yaml),
            "--image-size", "32", "--batch-size", "4", "--num-workers", "0"]
    ef.main(base + ["--output-path", str(out), "--mode"])
    ef.main(base + ["--output-path", str(tmp_path / "sampled"), "--seed", "7"])
    files = sorted(out.glob("*.safetensors"))
    assert len(files) == 1
    with safe_open(str(files[0]), framework="pt") as f:
        lat, flip, labels = (f.get_tensor(k) for k in ("latents", "latents_flip", "labels"))
    with safe_open(str(next((tmp_path / "sampled").glob("*.safetensors"))), framework="pt") as f:
        sampled = f.get_tensor("latents")
    assert lat.shape == flip.shape == sampled.shape == (6, 4, 4, 4)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]
    paths = sorted((tmp_path / "imgs").glob("*/*.png"))
    x = torch.stack([adm_transform(32)(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        dist = ref.encode(x).latent_dist
        dist_flip = ref.encode(x.flip(-1)).latent_dist
    torch.testing.assert_close(lat, dist.mode(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(flip, dist_flip.mode(), rtol=1e-5, atol=1e-5)
    eps = ef.posterior_noise(7, list(range(6)), (4, 4, 4))[0]
    torch.testing.assert_close(sampled, dist.mean + dist.std * eps, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Decoding a Table 1 model's latents
# ------------------------------------------------------------------------------------------------

def test_decoder_divides_by_the_table1_multiplier(hf_dir, tmp_path):
    """Table 1: model space = 0.18215 x raw latents, no channel stats; the Decoder undoes exactly that."""
    path, ref = hf_dir
    cfg = load_config(str(REPO / "configs/reproductions/table1_05_cosine_loss.yaml"),
                      [f"vae.config_path={write_yaml(tmp_path / 't.yaml', path)}", "data.image_size=32"])
    assert cfg.data.latent_multiplier == pytest.approx(0.18215) and cfg.data.latent_norm is False
    dec = Decoder(cfg, torch.device("cpu"))
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.8
    with torch.no_grad():
        rec = ref.decode(x / 0.18215).sample
    expect = torch.clamp(127.5 * rec + 128.0, 0, 255).permute(0, 2, 3, 1).to(torch.uint8).numpy()
    np.testing.assert_array_equal(dec(x), expect)


@pytest.mark.slow
def test_extraction_at_256px_gives_4x32x32_with_the_released_architecture(tmp_path):
    """The real case: configs/tokenizer/sdvae_ft_ema.yaml's architecture (random weights, 83.7M
    parameters) at 256 px writes (4, 32, 32) latents equal to encoding directly."""
    rng = np.random.default_rng(1)
    (tmp_path / "imgs" / "c0").mkdir(parents=True)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (300, 280, 3), dtype=np.uint8)).save(
            tmp_path / "imgs" / "c0" / f"{i}.png")
    config = str(REPO / "configs/tokenizer/sdvae_ft_ema.yaml")
    ef.main(["--data-path", str(tmp_path / "imgs"), "--output-path", str(tmp_path / "out"),
             "--tokenizer-config", config, "--image-size", "256", "--batch-size", "2",
             "--num-workers", "0", "--random-init-tokenizer", "--mode", "--seed", "3"])
    with safe_open(str(next((tmp_path / "out").glob("*.safetensors"))), framework="pt") as f:
        lat = f.get_tensor("latents")
    assert lat.shape == (2, 4, 32, 32)
    torch.manual_seed(3)  # extract_features seeds the random weights with --seed
    tok = load_tokenizer(config, device="cpu", fp16=False, random_init=True)
    x = torch.stack([tok.img_transform()(Image.open(p).convert("RGB"))
                     for p in sorted((tmp_path / "imgs" / "c0").glob("*.png"))])
    torch.testing.assert_close(lat, tok.encode_images(x, sample=False), rtol=1e-5, atol=1e-5)
