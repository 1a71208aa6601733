"""The nine rectified-flow rows of paper Table 1 (configs/reproductions/table1_0[1-9]_*.yaml) run
end to end on CPU at toy size: extract_features.py with a tiny random tokenizer of the row's kind
(SD-VAE f8d4 for rows 01-08, VA-VAE f16d32 for row 09) -> train.py for two steps -> inference.py
(the row's own sampler, dopri5) -> PNGs + ADM .npz. Each config keeps its recipe keys; only sizes
are overridden. Rows 01 and 09 run by default, the other seven under `-m slow` (~5 s each).
The SD-VAE numbers themselves are checked in tests/tokenizer/test_sdvae.py."""
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

pytest.importorskip("diffusers")
from diffusers import AutoencoderKL as DiffusersAutoencoderKL  # noqa: E402

import extract_features  # noqa: E402
import inference  # noqa: E402
import train  # noqa: E402
from configs.schema import load_config  # noqa: E402
from tokenizer.autoencoder import AutoencoderKL  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs" / "reproductions").glob("table1_0[1-9]_*.yaml"))
SIZE = 32                                             # f8 -> 4x4x4 latents, f16 -> 2x2x32
SD_TINY = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
               up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[32, 32, 32, 32],
               layers_per_block=1, act_fn="silu", latent_channels=4, norm_num_groups=32,
               sample_size=SIZE)
VA_TINY = dict(double_z=True, z_channels=32, resolution=SIZE, in_channels=3, out_ch=3, ch=32,
               ch_mult=[1, 1, 1, 1, 1], num_res_blocks=1, attn_resolutions=[], dropout=0.0)


def test_nine_rows_are_found():
    assert [p.name[:9] for p in CONFIGS] == [f"table1_0{i}" for i in range(1, 10)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Images, the two tiny tokenizers saved to disk as users would have them, and their latents."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("table1")
    rng = np.random.default_rng(0)
    for c in range(2):
        (root / "imgs" / f"c{c}").mkdir(parents=True)
        for i in range(4):
            h, w = rng.integers(SIZE, 2 * SIZE, 2)
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                root / "imgs" / f"c{c}" / f"{i}.png")
    torch.manual_seed(0)
    DiffusersAutoencoderKL(**SD_TINY).save_pretrained(root / "sd-vae-tiny")
    OmegaConf.save(OmegaConf.create({"tokenizer": "sdvae", "ckpt_path": str(root / "sd-vae-tiny"),
                                     "model": {"params": SD_TINY}}), root / "sdvae_tiny.yaml")
    torch.save({"state_dict": AutoencoderKL(VA_TINY, embed_dim=32).state_dict()}, root / "vavae_tiny.pt")
    OmegaConf.save(OmegaConf.create({"ckpt_path": str(root / "vavae_tiny.pt"),
                                     "model": {"params": {"embed_dim": 32, "ddconfig": VA_TINY}}}),
                   root / "vavae_tiny.yaml")
    latents = {}
    for kind in ("sdvae", "vavae"):
        latents[kind] = root / f"{kind}_latents"
        extract_features.main(["--data-path", str(root / "imgs"), "--output-path", str(latents[kind]),
                               "--tokenizer-config", str(root / f"{kind}_tiny.yaml"),
                               "--image-size", str(SIZE), "--batch-size", "8", "--num-workers", "0"])
    yield {"root": root, "latents": latents}
    torch.set_num_threads(old)


FAST_ROWS = ("table1_01", "table1_09")   # one SD-VAE row and the VA-VAE row; the other seven are slow


@pytest.mark.parametrize("config", [
    pytest.param(p, id=p.stem[:9], marks=() if p.stem[:9] in FAST_ROWS else pytest.mark.slow)
    for p in CONFIGS])
def test_row_runs_extraction_training_sampling(world, config):
    cfg = load_config(str(config))
    kind = "vavae" if cfg.vae.downsample_ratio == 16 else "sdvae"
    assert (kind == "sdvae") == (cfg.data.latent_multiplier == pytest.approx(0.18215)
                                 and not cfg.data.latent_norm and cfg.model.in_chans == 4)
    root = world["root"]
    sizes = [f"data.data_path={world['latents'][kind]}", f"vae.config_path={root / f'{kind}_tiny.yaml'}",
             f"data.image_size={SIZE}", "data.num_classes=2", "data.num_workers=0",
             "model.hidden_size=32", "model.depth=1", "model.num_heads=2",
             f"train.output_dir={root / 'runs'}", f"train.exp_name={config.stem}",
             "train.global_batch_size=4", "train.max_steps=2", "train.ckpt_every=2", "train.log_every=1",
             "train.report_to=none", "sample.fid_num=2", "sample.per_proc_batch_size=2"]
    exp_dir = train.main([str(config), *sizes])
    ckpt = exp_dir / "checkpoints" / "0000002.pt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["ema"]
    patch = 1 if cfg.model.model_type.endswith("/1") else 2
    assert state["x_embedder.proj.weight"].shape == (32, cfg.model.in_chans, patch, patch)

    folder = inference.main([str(config), *sizes, f"ckpt_path={ckpt}"])
    assert "dopri5" in folder.name
    arr = np.load(f"{folder}.npz")["arr_0"]
    assert arr.shape == (2, SIZE, SIZE, 3) and arr.dtype == np.uint8
    assert not np.array_equal(arr[0], arr[1])
    for i in range(2):
        assert np.array_equal(arr[i], np.asarray(Image.open(folder / f"{i:06d}.png")))
