"""The paper's tokenizer ablations as configs (Tables 2, 4, 5), their LightningDiT generation
configs, and the authors' own VA-VAE YAMLs (configs/tokenizer/authors/, their files unchanged)."""
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import training.vavae as T
from configs.schema import load_config
from models.build import build_model as build_dit
from tokenizer.losses import vf_loss
from tokenizer.train_config import load_train_config
from tokenizer.vavae import load_tokenizer_config

ROOT = Path(__file__).resolve().parents[2]
TOK = ROOT / "configs" / "tokenizer"
AUTHORS = TOK / "authors"
REPRO = ROOT / "configs" / "reproductions"

TABLE2 = [f"f16d{d}_{k}" for d in (16, 32, 64) for k in ("ldm", "vfmae", "vfdinov2")]
TABLE4 = ["f16d32_vfsam", "f16d32_vfclip"]
TABLE5 = ["f16d32_vfdinov2_mcos_only", "f16d32_vfdinov2_mdms_only", "f16d32_vfdinov2_no_margin"]
# Environment-specific paths, which the authors' files leave as placeholders.
PATH_KEYS = ("ckpt_path", "model.params.foundation.weights", "data.params.train.data_root",
             "data.params.validation.data_root")


# ------------------------------------------------------------------------------------------------
# The authors' VA-VAE training YAMLs
# ------------------------------------------------------------------------------------------------

def _run_settings(cfg) -> dict:
    """What decides the run: model, loss, optimizer, data and schedule (paths and run-dir options out)."""
    out = OmegaConf.to_container(cfg)
    for key in PATH_KEYS:
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node[p]
        node.pop(leaf)
    data = out["data"]["params"]
    data["num_workers"] = data["num_workers"] if data["num_workers"] is not None else 2 * data["batch_size"]
    for split in ("train", "validation"):   # the authors' dataset class names (their layout)
        data[split].pop("target"), data[split].pop("params")
    out.pop("train")                         # ours only: run directory, logging, checkpoint pruning
    return out


@pytest.mark.parametrize("name", ["f16d32_ldm", "f16d32_vfdinov2"])
def test_authors_yaml_gives_our_run(name):
    authors = load_train_config(str(AUTHORS / f"{name}.yaml"))
    ours = load_train_config(str(TOK / f"{name}.yaml"))
    assert _run_settings(authors) == _run_settings(ours)
    # what the authors' ImageNet classes read under data_root (docs/reference_behaviour.md §6.2)
    assert authors.data.params.train.data_root == "/path/to/imagenet/ILSVRC2012_train/data"
    assert authors.data.params.validation.data_root == "/path/to/imagenet/ILSVRC2012_validation/data"
    # their trainer counted Lightning's optimizer steps: disc_start 5001 = batch ~2500 here too
    assert authors.model.params.lossconfig.params.disc_start_counts_optimizer_steps is True
    assert T.build_loss(OmegaConf.merge(authors, {"model": {"params": {"lossconfig": {"params": {
        "perceptual_weight": 0.0}}}}})).disc_steps(2500) == (5000, 5001)


def test_our_target_counts_batches_and_roots_conflict(tmp_path):
    tiny = load_train_config(str(TOK / "tiny_cpu.yaml"))
    assert tiny.model.params.lossconfig.params.disc_start_counts_optimizer_steps is False
    with pytest.raises(ValueError, match="data.params.train.data_root.*keep one"):
        load_train_config(str(AUTHORS / "f16d32_ldm.yaml"), ["data.params.train.data_root=/elsewhere"])
    # a resolved config (as the trainer saves it) loads again to itself
    cfg = load_train_config(str(AUTHORS / "f16d32_vfdinov2.yaml"))
    (tmp_path / "saved.yaml").write_text(OmegaConf.to_yaml(cfg))
    assert load_train_config(str(tmp_path / "saved.yaml")) == cfg


def test_authors_long_recipe_blank_keys():
    blank = ["model.params.lossconfig.params.disc_start", "model.params.lossconfig.params.vf_weight",
             "model.params.lossconfig.params.distmat_margin", "model.params.lossconfig.params.cos_margin",
             "lightning.trainer.max_epochs"]
    with pytest.raises(ValueError) as err:
        load_train_config(str(AUTHORS / "f16d32_vfdinov2_long.yaml"))
    text = str(err.value)
    assert "\n" not in text and all(k in text for k in blank)
    assert "configs/tokenizer/f16d32_vfdinov2_long_stage{1,2,3}.yaml" in text
    # the same line from the command line
    import train_tokenizer
    with pytest.raises(SystemExit, match="blank keys .*long_stage"):
        train_tokenizer.main([str(AUTHORS / "f16d32_vfdinov2_long.yaml")])
    # filled in as the file's comments say, stage 1 is our stage-1 config
    stage1 = load_train_config(str(AUTHORS / "f16d32_vfdinov2_long.yaml"), [
        "model.params.lossconfig.params.disc_start=5001", "model.params.lossconfig.params.vf_weight=0.5",
        "model.params.lossconfig.params.distmat_margin=0", "model.params.lossconfig.params.cos_margin=0",
        "lightning.trainer.max_epochs=100"])
    assert _run_settings(stage1) == _run_settings(load_train_config(str(TOK / "f16d32_vfdinov2_long_stage1.yaml")))


def test_other_authors_files_keep_loading():
    # LightningDiT configs: same resolved config as our copies
    ours = {"config_details.yaml": ROOT / "configs" / "config_details.yaml",
            "lightningdit_xl_vavae_f16d32.yaml": ROOT / "configs" / "lightningdit_xl_vavae_f16d32.yaml"}
    for path in sorted((AUTHORS / "dit").glob("*.yaml")):
        cfg = load_config(str(path))
        mine = ours.get(path.name, REPRO / path.name)
        # the same but for the placeholder data path and the run name (ours: the config stem, so that
        # the two Table 3 runs do not share the main config's output folder)
        assert mine.stem == load_config(str(mine)).train.exp_name or mine.parent != REPRO, path.name
        assert cfg == load_config(str(mine), [f"data.data_path={cfg.data.data_path}",
                                              f"train.exp_name={cfg.train.exp_name}"]), path.name
    # tokenizer inference YAMLs: the VA_VAE reader, and the training schema (epochs given)
    for name in ("vavae_f16d32.yaml", "vavae_experimentals.yaml"):
        raw = load_tokenizer_config(AUTHORS / name)
        assert raw.model.params.embed_dim == raw.model.params.ddconfig.z_channels == 32
        cfg = load_train_config(str(AUTHORS / name), ["lightning.trainer.max_epochs=1"])
        with torch.device("meta"):
            model = T.build_model(OmegaConf.merge(cfg, {"model": {"params": {"use_vf": None}}}))
        assert model.quant_conv.weight.shape == (64, 64, 1, 1)


# ------------------------------------------------------------------------------------------------
# Tokenizer ablation configs (Tables 2, 4, 5)
# ------------------------------------------------------------------------------------------------

TINY_VIT = {"dinov2": "{embed_dim: 32, depth: 1, num_heads: 2}", "mae": "{embed_dim: 32, depth: 1, num_heads: 2}",
            "clip": "{embed_dim: 32, depth: 1, num_heads: 2}",
            "sam": "{img_size: 64, patch_size: 4, embed_dim: 32, depth: 1, num_heads: 2, window_size: 4, "
                   "global_attn_indexes: [0], neck_chans: 16}"}
TINY_AE = ["model.params.ddconfig.ch=32", "model.params.ddconfig.ch_mult=[1,1,1,1,1]",
           "model.params.ddconfig.num_res_blocks=1", "model.params.ddconfig.attn_resolutions=[]",
           "model.params.ddconfig.resolution=64", "model.params.lossconfig.params.perceptual_weight=0",
           "model.params.lossconfig.params.disc_ndf=8"]


def _expected(name):
    dim = int(name[4:6])
    vf = {"ldm": None, "vfmae": "mae", "vfdinov2": "dinov2", "vfsam": "sam", "vfclip": "clip"}[name.split("_")[1]]
    weights = {"mcos_only": (0.0, 1.0, 0.25, 0.5), "mdms_only": (1.0, 0.0, 0.25, 0.5),
               "no_margin": (1.0, 1.0, 0.0, 0.0)}.get(name.split("vfdinov2_")[-1], (1.0, 1.0, 0.25, 0.5))
    return dim, vf, weights


@pytest.mark.parametrize("name", TABLE2 + TABLE4 + TABLE5)
def test_ablation_config_loads_and_builds(name):
    dim, vf, (w_dm, w_cos, m_dm, m_cos) = _expected(name)
    cfg = load_train_config(str(TOK / f"{name}.yaml"))
    p, lp = cfg.model.params, cfg.model.params.lossconfig.params
    # the 50-epoch experimental recipe, with only the ablated setting changed
    assert (p.embed_dim, p.ddconfig.z_channels, p.use_vf, p.reverse_proj) == (dim, dim, vf, vf is not None)
    assert (cfg.lightning.trainer.max_epochs, cfg.data.params.batch_size, cfg.model.base_learning_rate) == (50, 8, 1e-4)
    assert (lp.disc_start, lp.kl_weight, lp.disc_weight, lp.disc_start_counts_optimizer_steps) == (5001, 1e-6, 0.5, True)
    if vf:
        assert (lp.vf_weight, lp.adaptive_vf) == (0.1, True)
        assert (lp.distmat_weight, lp.cos_weight, lp.distmat_margin, lp.cos_margin) == (w_dm, w_cos, m_dm, m_cos)
        assert p.foundation.weights and not p.foundation.normalize_input
    # builds, tiny: f16 (5 levels) on 64 px -> a 4 x 4 latent aligned to 4 x 4 foundation features
    tiny = list(TINY_AE)
    if vf:
        tiny += ["model.params.foundation.weights=null", "model.params.foundation.random_init=true",
                 f"model.params.foundation.model_kwargs={TINY_VIT[vf]}"]
    cfg = load_train_config(str(TOK / f"{name}.yaml"), tiny)
    torch.manual_seed(0)
    model, loss = T.build_model(cfg), T.build_loss(cfg)
    if vf:   # the tiny ViT of the family, not the full-size one
        assert sum(p.numel() for p in model.foundation_model.parameters()) < 200_000
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    dec, posterior, z, aux = model(x)
    assert dec.shape == x.shape and posterior.mean.shape == (2, dim, 4, 4)
    if vf:
        assert z.shape == aux.shape == (2, model.foundation_model.feature_dim, 4, 4)
        total, log = loss.generator_loss(x, dec, posterior, step=0, last_layer=model.decoder_last_layer,
                                         enc_last_layer=model.encoder_last_layer, z=z, aux_feature=aux)
        expected = vf_loss(z, aux, distmat_margin=m_dm, cos_margin=m_cos, distmat_weight=w_dm, cos_weight=w_cos)
        assert torch.allclose(log["train/vf_loss"], expected) and torch.isfinite(total)
    else:
        assert z is None and aux is None


def _vf_terms_by_loops(z, f, m_dm, m_cos):
    """L_mdms and L_mcos of docs/reference_behaviour.md §6.6, token by token (independent of vf_loss)."""
    B, C, H, W = z.shape
    zt, ft = z.reshape(B, C, H * W).double(), f.reshape(B, C, H * W).double()
    mdms, mcos = 0.0, 0.0
    for b in range(B):
        zn = [zt[b, :, i] / zt[b, :, i].norm() for i in range(H * W)]
        fn = [ft[b, :, i] / ft[b, :, i].norm() for i in range(H * W)]
        for i in range(H * W):
            for j in range(H * W):
                mdms += max(abs(float(zn[i] @ zn[j]) - float(fn[i] @ fn[j])) - m_dm, 0.0)
            mcos += max(1.0 - m_cos - float(zn[i] @ fn[i]), 0.0)
    return mdms / (B * (H * W) ** 2), mcos / (B * H * W)


@pytest.mark.parametrize("variant", ["full", "mcos_only", "mdms_only", "no_margin"])
def test_vf_loss_variants_formula(variant):
    """Each Table 5 variant computes its documented formula (loop implementation)."""
    g = torch.Generator().manual_seed(3)
    z, f = torch.randn(2, 6, 3, 3, generator=g), torch.randn(2, 6, 3, 3, generator=g)
    f = f + 0.8 * z                                     # partly aligned: margins clip some terms
    w_dm, w_cos, m_dm, m_cos = {"full": (1.0, 1.0, 0.25, 0.5), "mcos_only": (0.0, 1.0, 0.25, 0.5),
                                "mdms_only": (1.0, 0.0, 0.25, 0.5), "no_margin": (1.0, 1.0, 0.0, 0.0)}[variant]
    mdms, mcos = _vf_terms_by_loops(z, f, m_dm, m_cos)
    assert mdms > 0 and mcos > 0
    got = vf_loss(z, f, distmat_margin=m_dm, cos_margin=m_cos, distmat_weight=w_dm, cos_weight=w_cos)
    assert got.item() == pytest.approx(w_dm * mdms + w_cos * mcos, rel=1e-5)
    if variant == "no_margin":   # margins only ever lower the loss
        assert got > vf_loss(z, f, distmat_margin=0.25, cos_margin=0.5)


# ------------------------------------------------------------------------------------------------
# LightningDiT generation configs (the gFID columns)
# ------------------------------------------------------------------------------------------------

GEN = [(size, tok) for tok in TABLE2 for size in ("b", "l", "xl")] + [("b", tok) for tok in TABLE4 + TABLE5]


def test_generation_configs():
    """Every gFID cell's config: the tokenizer, 160 epochs, dopri5 FID-10K without guidance."""
    stems = {f"lightningdit_{size}_{tok}" for size, tok in GEN}
    assert len(stems) == 32 and stems == {p.stem for p in REPRO.glob("lightningdit_*_f16d*.yaml")
                                          if not p.stem.startswith("lightningdit_xl_vavae")}
    for size, tok in GEN:
        stem = f"lightningdit_{size}_{tok}"
        cfg = load_config(str(REPRO / f"{stem}.yaml"))
        dim = int(tok[4:6])
        assert cfg.train.exp_name == stem              # run folder = config stem (tools/paper_report.py)
        assert (cfg.model.in_chans, cfg.vae.model_name, cfg.vae.downsample_ratio) == (dim, tok, 16)
        assert OmegaConf.load(TOK / f"{tok}.yaml").model.params.embed_dim == dim
        assert cfg.vae.config_path == f"logs/{tok}/export/vavae.yaml"
        assert (cfg.train.max_steps * cfg.train.global_batch_size) / 1_281_167 == pytest.approx(160, abs=0.2)
        assert (cfg.optimizer.lr, cfg.optimizer.beta2, cfg.data.latent_norm, cfg.data.latent_multiplier) == \
            (2e-4, 0.95, True, 1.0)
        s = cfg.sample
        assert (s.sampling_method, s.fid_num, s.cfg_scale, s.cfg_interval_start, s.timestep_shift) == \
            ("dopri5", 10000, 1.0, 0.0, 0.0)
        assert cfg.transport.use_lognorm and cfg.transport.use_cosine_loss
        model_type = {"b": "LightningDiT-B/1", "l": "LightningDiT-L/2", "xl": "LightningDiT-XL/1"}[size]
        assert (cfg.model.model_type, cfg.model.patch_size) == (model_type, 1 if size == "l" else None)


@pytest.mark.parametrize("size,tok", [("b", "f16d16_vfdinov2"), ("l", "f16d32_vfmae"), ("xl", "f16d64_ldm")])
def test_generation_config_builds(size, tok):
    stem = f"lightningdit_{size}_{tok}"
    dim = int(tok[4:6])
    cfg = load_config(str(REPRO / f"{stem}.yaml"))
    with torch.device("meta"):                         # full size, no allocation
        model = build_dit(cfg)
    depth, width = {"b": (12, 768), "l": (24, 1024), "xl": (28, 1152)}[size]
    assert (len(model.blocks), model.pos_embed.shape[-1], model.patch_size) == (depth, width, 1)
    assert model.x_embedder.proj.weight.shape[1] == dim
    tiny = load_config(str(REPRO / f"{stem}.yaml"), ["model.hidden_size=32", "model.depth=1", "model.num_heads=2",
                                                      "data.image_size=64"])
    torch.manual_seed(0)
    net = build_dit(tiny, training=False)
    out = net(torch.randn(2, dim, 4, 4), torch.rand(2), torch.tensor([1, 2]))
    assert out.shape == (2, dim, 4, 4) and torch.isfinite(out).all()
