"""VA_VAE wrapper (tokenizer/vavae.py): config, loading, preprocessing and uint8 conversion."""
import logging

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from tokenizer.autoencoder import VAVAE_F16D32_DDCONFIG, AutoencoderKL
from tokenizer.factory import build_tokenizer
from tokenizer.vavae import VA_VAE, load_tokenizer_config, to_uint8_nhwc

TINY = dict(double_z=True, z_channels=4, resolution=32, in_channels=3, out_ch=3, ch=32,
            ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[16], dropout=0.0)


def write_config(tmp_path, ckpt_path, ddconfig=TINY, embed_dim=4, name="tok.yaml"):
    cfg = {"ckpt_path": None if ckpt_path is None else str(ckpt_path),
           "model": {"base_learning_rate": 1e-4, "target": "ldm.models.autoencoder.AutoencoderKL",
                     "params": {"embed_dim": embed_dim, "ddconfig": dict(ddconfig)}}}
    path = tmp_path / name
    OmegaConf.save(OmegaConf.create(cfg), path)
    return path


def test_released_configs_build_the_reference_model():
    for path, embed in (("configs/tokenizer/vavae_f16d32.yaml", 32),
                        ("configs/tokenizer/vavae_experimentals.yaml", 32)):
        cfg = load_tokenizer_config(path)
        assert cfg.model.params.embed_dim == embed
        dd = OmegaConf.to_container(cfg.model.params.ddconfig)
        assert {k: tuple(v) if isinstance(v, list) else v for k, v in dd.items()} == VAVAE_F16D32_DDCONFIG
        assert "ckpt_path" in cfg
    cfg = load_tokenizer_config("configs/tokenizer/vavae_f16d32.yaml")
    assert cfg.model.params.use_vf == "dinov2" and cfg.model.params.reverse_proj is True
    assert cfg.model.params.lossconfig.params.kl_weight == pytest.approx(1e-6)


def test_loads_checkpoint_named_in_yaml(tmp_path):
    torch.manual_seed(0)
    src = AutoencoderKL(TINY, embed_dim=4)
    torch.save({"state_dict": src.state_dict()}, tmp_path / "w.ckpt")
    tok = VA_VAE(write_config(tmp_path, tmp_path / "w.ckpt"), img_size=32, device="cpu")
    assert tok.load() is tok and isinstance(tok.model, AutoencoderKL) and not tok.model.training
    for k, v in src.state_dict().items():
        assert torch.equal(tok.model.state_dict()[k], v)


def test_missing_ckpt_is_an_error_unless_random_init(tmp_path, caplog):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        VA_VAE(write_config(tmp_path, tmp_path / "nope.pt"), device="cpu")
    with pytest.raises(ValueError, match="ckpt_path is not set"):
        VA_VAE(write_config(tmp_path, None), device="cpu")
    with caplog.at_level(logging.WARNING):
        tok = VA_VAE(write_config(tmp_path, None), device="cpu", random_init=True)
    assert "random_init=True" in caplog.text and tok.model is not None
    with pytest.raises(FileNotFoundError, match="no_config.yaml"):
        VA_VAE(tmp_path / "no_config.yaml")
    bad = OmegaConf.create({"ckpt_path": None, "model": {"params": {"embed_dim": 4}}})
    OmegaConf.save(bad, tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="model.params.ddconfig"):
        VA_VAE(tmp_path / "bad.yaml", random_init=True)
    with pytest.raises(ValueError, match="unknown tokenizer"):
        build_tokenizer("no_such_tokenizer", tmp_path / "bad.yaml")


def test_img_transform_adm_center_crop_hand_computed():
    """600x512 (WxH) of 2x2 blocks: one BOX halving gives the block image exactly (300x256), the
    bicubic step is a no-op (scale 1), and the crop starts at column (300 - 256) // 2 = 22."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (256, 300, 3), dtype=np.uint8)
    big = small.repeat(2, axis=0).repeat(2, axis=1)
    tok = VA_VAE.from_model(AutoencoderKL(TINY, embed_dim=4), img_size=256, device="cpu")
    out = tok.img_transform(p_hflip=0.0)(Image.fromarray(big))
    expect = (torch.from_numpy(small[:, 22:278]).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    assert out.shape == (3, 256, 256)
    torch.testing.assert_close(out, expect, atol=1e-6, rtol=0)
    flipped = tok.img_transform(p_hflip=1.0)(Image.fromarray(big))
    assert torch.equal(flipped, out.flip(-1))
    # A short side below 2x the target: no halving, bicubic to 32 x round(48 * 32 / 30) = 51, crop 9.
    img = Image.fromarray(rng.integers(0, 256, (30, 48, 3), dtype=np.uint8))
    out = tok.img_transform(img_size=32)(img)
    resized = np.array(img.resize((51, 32), Image.BICUBIC))[:, 9:41].copy()
    torch.testing.assert_close(out, (torch.from_numpy(resized).permute(2, 0, 1).float() / 255 - 0.5) / 0.5,
                               atol=1e-6, rtol=0)


def test_uint8_conversion_rounds_and_clamps():
    # Normalised uint8 values come back unchanged (127.5 x + 128 = u + 0.5 -> truncation).
    u = torch.arange(256, dtype=torch.float32)
    x = ((u / 255 - 0.5) / 0.5).view(1, 1, 1, 256).expand(1, 3, 1, 256)
    assert torch.equal(to_uint8_nhwc(x)[0, 0, :, 0].long(), u.long())
    # 127.5 x + 128 = v: clamp to [0, 255], then truncate (so 127.5 x + 127.5 is rounded half up).
    v = torch.tensor([-40.0, -0.3, 0.4, 12.3, 12.7, 200.5, 254.9, 255.0, 300.0])
    x = ((v - 128.0) / 127.5).view(1, 1, 1, -1).expand(2, 3, 1, -1)
    out = to_uint8_nhwc(x)
    assert out.dtype == torch.uint8 and out.shape == (2, 1, 9, 3)
    assert out[0, 0, :, 0].tolist() == [0, 0, 0, 12, 12, 200, 254, 255, 255]


def test_decode_to_images_and_encode_api():
    torch.manual_seed(0)
    model = AutoencoderKL(TINY, embed_dim=4)
    tok = VA_VAE.from_model(model, img_size=32, device="cpu")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = tok.encode_images(x, generator=torch.Generator().manual_seed(0))
    assert z.shape == (2, 4, 16, 16) and z.dtype == torch.float32
    assert torch.equal(z, tok.encode_images(x, generator=torch.Generator().manual_seed(0)))
    mode = tok.encode_images(x, sample=False)
    with torch.no_grad():
        post = model.encode(x)
    assert torch.equal(mode, post.mean)
    assert torch.allclose(z, post.mean + post.std * torch.randn(z.shape, generator=torch.Generator().manual_seed(0)))
    imgs = tok.decode_to_images(mode)
    assert isinstance(imgs, np.ndarray) and imgs.dtype == np.uint8 and imgs.shape == (2, 32, 32, 3)
    with torch.no_grad():
        ref = torch.clamp(127.5 * model.decode(mode) + 128.0, 0, 255).permute(0, 2, 3, 1).to(torch.uint8)
    assert np.array_equal(imgs, ref.numpy())
    # fp16=True changes nothing on the CPU (autocast is CUDA-only).
    tok16 = VA_VAE.from_model(model, img_size=32, device="cpu", fp16=True)
    tok32 = VA_VAE.from_model(model, img_size=32, device="cpu", fp16=False)
    assert torch.equal(tok16.encode_images(x, sample=False), tok32.encode_images(x, sample=False))


def test_mar_vae_config(tmp_path):
    from tokenizer.marvae import MAR_VAE
    cfg = load_tokenizer_config("configs/tokenizer/marvae_kl16.yaml")
    assert cfg.model.params.embed_dim == 16 and list(cfg.model.params.decoder_attn_resolutions) == []
    # A tiny MAR-style config: 'model' entry in the checkpoint, no decoder attention.
    torch.manual_seed(0)
    src = AutoencoderKL(TINY, embed_dim=4, decoder_attn_resolutions=())
    assert not any(k.startswith("decoder.up.") and ".attn." in k for k in src.state_dict())
    torch.save({"model": src.state_dict()}, tmp_path / "kl.ckpt")
    path = write_config(tmp_path, tmp_path / "kl.ckpt")
    c = OmegaConf.load(path)
    c.model.params.decoder_attn_resolutions = []
    OmegaConf.save(c, path)
    tok = MAR_VAE(path, img_size=32, device="cpu")
    for k, v in src.state_dict().items():
        assert torch.equal(tok.model.state_dict()[k], v)
    assert tok.encode_images(torch.zeros(1, 3, 32, 32)).shape == (1, 4, 16, 16)
    with pytest.raises(FileNotFoundError, match="jadechoghari/mar"):
        MAR_VAE(write_config(tmp_path, tmp_path / "missing.ckpt", name="m.yaml"))
