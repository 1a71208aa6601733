"""SFD's YAMLs and files: every YAML of configs/sfd/ loads unchanged with SFD's values, its
tokenizer name resolves to the LDM f16d32 autoencoder (not the diffusers SD-VAE), the paths its
YAMLs write relative to SFD's repository are found here, AUTOGUIDANCE_CKPT_ITER picks SFD's
checkpoint, and every missing released file is named at the door with where it comes from."""
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from configs.schema import load_config
from sampling.inputs import check_sampling_inputs
from sampling.networks import guide_ckpt_at, guide_config, guide_config_path
from sampling.pipeline import tokenizer_config_path
from tokenizer.autoencoder import AutoencoderKL
from tokenizer.factory import check_tokenizer_weights, load_tokenizer, tokenizer_type
from tokenizer.factory import tokenizer_config_path as factory_tokenizer_path
from tokenizer.vavae import VA_VAE

from sfd_release import GUIDE_YAML, REPO, SFD_CONFIGS, TINY

YAMLS = sorted(p for p in SFD_CONFIGS.rglob("*.yaml") if p.parent.name != "paper")  # paper/: ours, tested apart
TRAIN_YAMLS = [p for p in YAMLS if p.name.startswith("train")]
INFERENCE_YAMLS = [p for p in YAMLS if p.name.startswith("inference")]
TOKENIZER = REPO / "configs" / "tokenizer"


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def test_the_sixteen_released_yamls_are_all_here():
    assert len(TRAIN_YAMLS) == 4 and len(INFERENCE_YAMLS) == 12 and len(YAMLS) == 16


@pytest.mark.parametrize("path", YAMLS, ids=rel)
def test_every_yaml_loads_unchanged_with_sfds_values(path):
    cfg = load_config(str(path))
    raw = OmegaConf.load(path)
    for key in ("model.model_type", "model.in_chans", "sample.sampling_method", "train.max_steps", "ckpt_path"):
        assert OmegaConf.select(cfg, key) == OmegaConf.select(raw, key), key   # nothing rewritten
    m = cfg.model
    assert (m.in_chans, m.semantic_chans, m.semfirst_delta_t, m.semantic_weight) == (48, 16, 0.3, 2.0)
    assert (m.use_repa, m.repa_dino_version, m.repa_feat_depth) == (True, "dinov2_vitb14_reg", 2)
    assert (m.use_qknorm, m.use_swiglu, m.use_rope, m.use_rmsnorm, m.wo_shift) == (True, True, True, True, False)
    eighty = "80ep" in path.name
    assert (m.repa_mode, m.repa_weight) == (("cos_mse", 0.5) if eighty else ("cos", 1.0))
    assert (cfg.optimizer.lr, cfg.optimizer.beta2) == ((2e-4, 0.95) if eighty else (1e-4, 0.999))
    assert (cfg.data.latent_norm, cfg.data.latent_sv_norm, cfg.data.latent_multiplier) == (True, True, 1.0)
    s = cfg.sample
    assert (s.mode, s.sampling_method, s.atol, s.rtol, s.timestep_shift, s.cfg_interval_start) == \
        ("ODE", "dopri5", 1e-6, 1e-3, 0.0, 0.0)
    assert cfg.vae.model_name == "sdvae_f16d32" and cfg.vae.config_path is None
    if path in INFERENCE_YAMLS and path.parent.name != "autoguidance_b":
        assert s.balanced_sampling is True
    if s.autoguidance:  # the guide YAML SFD names (relative to its repository root) is found here
        assert guide_config_path(s.autoguidance_config).resolve() == (REPO / s.autoguidance_config).resolve()


def test_guide_yaml_is_found_from_the_repository_root_whatever_the_working_directory(tmp_path, monkeypatch):
    name = "configs/sfd/autoguidance_b/inference.yaml"
    monkeypatch.chdir(tmp_path)
    assert guide_config_path(name) == REPO / name
    (tmp_path / "configs/sfd/autoguidance_b").mkdir(parents=True)
    (tmp_path / name).write_text(GUIDE_YAML.read_text())
    assert guide_config_path(name) == Path(name)            # a file in the working directory wins
    assert guide_config_path("absent.yaml") == Path("absent.yaml")


def test_sdvae_f16d32_is_the_ldm_f16d32_kl_autoencoder_not_the_diffusers_sd_vae():
    cfg = load_config(str(SFD_CONFIGS / "lightningdit_xl/inference_4m.yaml"))
    path = tokenizer_config_path(cfg)
    assert path == TOKENIZER / "sdvae_f16d32.yaml"
    assert tokenizer_type(path) == "vavae" and tokenizer_type(TOKENIZER / "sdvae_ft_ema.yaml") == "sdvae"
    raw = OmegaConf.load(path)
    assert raw.ckpt_path.endswith("va-vae-imagenet256-experimental-variants/ldm-imagenet256-f16d32-50ep.ckpt")
    vae = load_tokenizer(path, img_size=64, fp16=False, device="cpu", random_init=True)
    assert type(vae) is VA_VAE and isinstance(vae.model, AutoencoderKL) and vae.embed_dim == 32
    dd = raw.model.params.ddconfig
    assert (dd.ch, list(dd.ch_mult), dd.num_res_blocks, list(dd.attn_resolutions), dd.z_channels) == \
        (128, [1, 1, 2, 2, 4], 2, [16], 32)
    # the LDM f16d32 architecture: (32, 4, 4) latents decode to 64 x 64 images
    assert vae.decode_to_images(torch.zeros(1, 32, 4, 4)).shape == (1, 64, 64, 3)
    # the same architecture as VA-VAE f16d32 (only the weights differ)
    assert raw.model.params.ddconfig == OmegaConf.load(TOKENIZER / "vavae_f16d32.yaml").model.params.ddconfig


def test_the_authors_tokenizer_paths_map_to_configs_tokenizer(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for authors, ours in (("tokenizer/configs/sdvae_f16d32.yaml", "sdvae_f16d32.yaml"),
                          ("tokenizer/configs/sdvae_f16d32_semvaebasech16.yaml", "sdvae_f16d32_semvaebasech16.yaml"),
                          ("tokenizer/configs/semvae_train/ch16.yaml", "semvae_train/ch16.yaml"),
                          ("configs/tokenizer/vavae_f16d32.yaml", "vavae_f16d32.yaml")):
        assert factory_tokenizer_path("ignored", authors) == TOKENIZER / ours
    cfg = load_config(str(SFD_CONFIGS / "lightningdit_xl/inference_4m.yaml"),
                      ["vae.config_path=tokenizer/configs/sdvae_f16d32.yaml"])
    assert tokenizer_config_path(cfg) == TOKENIZER / "sdvae_f16d32.yaml"
    # a path found nowhere is returned as given, for the door check to name it
    assert factory_tokenizer_path("x", "tokenizer/configs/absent.yaml") == Path("tokenizer/configs/absent.yaml")
    # the Semantic VAE YAML named inside SFD's extraction config resolves too
    named = OmegaConf.load(TOKENIZER / "sdvae_f16d32_semvaebasech16.yaml").semvae.semvae_config
    assert factory_tokenizer_path("x", named).is_file()


def test_autoguidance_ckpt_iter_picks_sfds_checkpoint_name():
    assert guide_ckpt_at("outputs/train/sfd_autoguidance_b/checkpoints/0070000.pt", 120, "g.yaml") == \
        "outputs/train/sfd_autoguidance_b/checkpoints/0120000.pt"
    assert guide_ckpt_at("a/b/0070000.pt", 60, "g.yaml") == "a/b/0060000.pt"
    with pytest.raises(ValueError, match=r"g.yaml: sample.autoguidance_ckpt_iter=70 needs a ckpt_path ending in"):
        guide_ckpt_at("a/b/last.pt", 70, "g.yaml")
    base = ["sample.autoguidance=true", "sample.cfg_scale=1.5", *TINY]
    cfg = load_config(str(SFD_CONFIGS / "lightningdit_1p0/inference_4m_autoguidance.yaml"),
                      base + ["sample.autoguidance_ckpt_iter=120"])
    guide = guide_config(cfg)
    assert guide.ckpt_path == "outputs/train/sfd_autoguidance_b/checkpoints/0120000.pt"
    # the main config's tiny sizes and latent grid reach the guide
    assert (guide.model.hidden_size, guide.model.depth, guide.data.image_size) == (64, 2, 64)
    with pytest.raises(ValueError, match="sample.autoguidance_ckpt_iter"):
        load_config(None, ["sample.autoguidance_ckpt_iter=0"])


def test_the_door_names_every_missing_released_file_and_where_it_comes_from(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a fresh checkout: nothing downloaded
    cfg = load_config(str(SFD_CONFIGS / "lightningdit_xl/inference_4m_autoguidance.yaml"), ["sample.cfg_scale=1.5"])
    with pytest.raises(FileNotFoundError) as err:
        check_sampling_inputs(cfg)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("4 files missing: ")
    assert re.search(r"SFD checkpoint not found: outputs/train/sfd_xl/checkpoints/4000000.pt \(.*SFD-Project/SFD", msg)
    assert re.search(r"guide checkpoint not found: outputs/train/sfd_autoguidance_b/checkpoints/0070000.pt "
                     r"\(ckpt_path of sample.autoguidance_config configs/sfd/autoguidance_b/inference.yaml", msg)
    assert re.search(r"tokenizer weights not found: .*ldm-imagenet256-f16d32-50ep.ckpt .*"
                     r"hustvl/va-vae-imagenet256-experimental-variants", msg)
    assert re.search(r"latent statistics not found: .*imagenet_train_256/latents_stats.pt.*"
                     r"imagenet1k-latents/\* of the Hugging Face repo SFD-Project/SFD", msg)
    # without guidance the guide is not needed; with a random tokenizer its weights are not
    unguided = load_config(str(SFD_CONFIGS / "lightningdit_xl/inference_4m_autoguidance.yaml"))
    with pytest.raises(FileNotFoundError, match=r"^2 files missing: SFD checkpoint .* \| latent statistics"):
        check_sampling_inputs(unguided, tokenizer_weights=False)


def test_a_tokenizer_yaml_without_weights_is_listed_with_the_other_missing_files(tmp_path, monkeypatch):
    """configs/tiny's tokenizer YAML has no ckpt_path: that is reported beside the missing
    checkpoint, not instead of it (tools/reliability_audit.py, run_inference.sh case)."""
    monkeypatch.chdir(tmp_path)
    cfg = load_config(str(REPO / "configs/tiny/lightningdit_tiny.yaml"), ["ckpt_path=missing.pt"])
    with pytest.raises(FileNotFoundError) as err:
        check_sampling_inputs(cfg)
    msg = str(err.value)
    assert msg.startswith("3 files missing: LightningDiT checkpoint not found: missing.pt"), msg
    assert "tiny_vavae_f4d4.yaml: ckpt_path is not set" in msg and "latent statistics not found" in msg


def test_a_missing_semantic_stats_file_is_named(in_released, tmp_path):
    import shutil
    data = tmp_path / "stats"
    data.mkdir()
    shutil.copy(in_released["latents"] / "latents_stats.pt", data)
    cfg = load_config(str(SFD_CONFIGS / "lightningdit_xl/inference_4m.yaml"), TINY + [f"data.data_path={data}"])
    with pytest.raises(FileNotFoundError, match=r"latents_sv_stats.pt.*SFD-Project/SFD"):
        check_sampling_inputs(cfg, tokenizer_weights=False)
    # the texture stats must have the texture channels, 48 - 16 = 32
    shutil.copy(in_released["latents"] / "latents_sv_stats.pt", data)
    shutil.copy(in_released["latents"] / "latents_sv_stats.pt", data / "latents_stats.pt")
    with pytest.raises(ValueError, match=r"latents_stats.pt: stats have 16 channels, "
                                         r"model.in_chans - model.semantic_chans = 32"):
        check_sampling_inputs(cfg, tokenizer_weights=False)


def test_tokenizer_weights_check(tmp_path):
    yaml = tmp_path / "tok.yaml"
    text = (TOKENIZER / "sdvae_f16d32.yaml").read_text()
    yaml.write_text(text.replace("ckpt_path: outputs", f"ckpt_path: {tmp_path}/outputs"))
    with pytest.raises(FileNotFoundError, match=r"tok.yaml; SFD's texture autoencoder .*"
                                                r"hustvl/va-vae-imagenet256-experimental-variants"):
        check_tokenizer_weights(yaml)
    weights = tmp_path / "outputs/model_weights/va-vae-imagenet256-experimental-variants/ldm-imagenet256-f16d32-50ep.ckpt"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"x")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        check_tokenizer_weights(yaml)   # present but not a torch file: refused before loading
    torch.save({"state_dict": {"decoder.conv_in.weight": torch.zeros(2)}}, weights)
    check_tokenizer_weights(yaml)   # a torch file without pickled code (its keys are the loader's business)
    (tmp_path / "none.yaml").write_text(text.replace("ckpt_path: outputs", "ckpt_path: null\n# "))
    with pytest.raises(ValueError, match="none.yaml: ckpt_path is not set"):
        check_tokenizer_weights(tmp_path / "none.yaml")
