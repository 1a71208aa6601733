"""SFD's Semantic VAE (tokenizer/semvae.py) and its YAML schema (tokenizer/semvae_config.py):
SFD's state-dict layout, the posterior and the losses against closed forms, the released
YAML loading unchanged."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tokenizer.semvae import (SFD_CHECKPOINT_KEYS, LossWeights, SemanticVAE, TransformerBlock, load_semantic_vae,
                              semvae_loss, token_cosine)
from tokenizer.semvae_config import SemVAETrainConfig, load_semvae_config

ROOT = Path(__file__).resolve().parents[2]
CH16 = ROOT / "configs" / "tokenizer" / "semvae_train" / "ch16.yaml"
TINY = ROOT / "configs" / "tokenizer" / "semvae_train" / "tiny_cpu.yaml"


def sfd_transformer_keys(d_in=768, hidden=768, bottleneck=16, blocks=4):
    """{key: shape} of SFD's transformer VAE, written from the spec's list (§1.2), not from our model."""
    def block(prefix):
        return {f"{prefix}.norm1.weight": (hidden,), f"{prefix}.norm1.bias": (hidden,),
                f"{prefix}.attn.in_proj_weight": (3 * hidden, hidden), f"{prefix}.attn.in_proj_bias": (3 * hidden,),
                f"{prefix}.attn.out_proj.weight": (hidden, hidden), f"{prefix}.attn.out_proj.bias": (hidden,),
                f"{prefix}.norm2.weight": (hidden,), f"{prefix}.norm2.bias": (hidden,),
                f"{prefix}.mlp.0.weight": (4 * hidden, hidden), f"{prefix}.mlp.0.bias": (4 * hidden,),
                f"{prefix}.mlp.2.weight": (hidden, 4 * hidden), f"{prefix}.mlp.2.bias": (hidden,)}
    keys = {"encoder.0.weight": (hidden, d_in), "encoder.0.bias": (hidden,)}
    for i in range(1, blocks + 1):
        keys.update(block(f"encoder.{i}"))
    keys.update({f"encoder.{blocks + 1}.weight": (hidden,), f"encoder.{blocks + 1}.bias": (hidden,),
                 f"encoder.{blocks + 2}.weight": (2 * bottleneck, hidden),
                 f"encoder.{blocks + 2}.bias": (2 * bottleneck,),
                 "decoder.0.weight": (hidden, bottleneck), "decoder.0.bias": (hidden,)})
    for i in range(1, blocks + 1):
        keys.update(block(f"decoder.{i}"))
    keys.update({f"decoder.{blocks + 1}.weight": (hidden,), f"decoder.{blocks + 1}.bias": (hidden,),
                 f"decoder.{blocks + 2}.weight": (d_in, hidden), f"decoder.{blocks + 2}.bias": (d_in,)})
    return keys


#################################################################################
#                        SFD's checkpoint layout and loading                    #
#################################################################################

def test_released_layout_loads_strictly_and_has_sfd_parameter_count(tmp_path):
    keys = sfd_transformer_keys()
    model = SemanticVAE(768, 16, "transformer", True, hidden_dim=768, transformer_heads=6, transformer_blocks=4)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == keys
    assert sum(p.numel() for p in model.parameters()) == sum(math.prod(s) for s in keys.values()) == 57_924_896
    # A file with SFD's semantic_ae_final.pt dict keys, its weights drawn from the key list alone.
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(s, generator=g) * 0.02 for k, s in keys.items()}
    ckpt = {"iteration": 1_000_000, "model_state_dict": sd, "optimizer_state_dict": {"state": {}, "param_groups": []},
            "scheduler_state_dict": {}, "loss": 0.1, "loss_averages": {"total": 0.1}, "config": CH16.read_text(),
            "input_dim": 768, "bottleneck_dim": 16}
    assert set(ckpt) == set(SFD_CHECKPOINT_KEYS)
    torch.save(ckpt, tmp_path / "semantic_ae_final.pt")
    loaded = load_semantic_vae(str(tmp_path / "semantic_ae_final.pt"))
    assert not loaded.training and loaded.arch == "transformer" and loaded.bottleneck_dim == 16
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in sd.items())
    # the architecture from a separate YAML (SFD's extraction passes semvae_config) gives the same model
    again = load_semantic_vae(str(tmp_path / "semantic_ae_final.pt"), config=str(CH16))
    x = torch.randn(1, 256, 768, generator=g)
    noise = torch.randn(1, 256, 16, generator=g)
    assert torch.equal(loaded.encode(x, noise)[0], again.encode(x, noise)[0])


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="SFD-Project/SFD"):
        load_semantic_vae(str(tmp_path / "missing.pt"))
    model = SemanticVAE(8, 2, "linear")
    sd = model.state_dict()
    sd["encoder.1.weight"] = torch.zeros(1)
    torch.save({"model_state_dict": sd, "input_dim": 8, "config": "model: {variational: true, bottleneck_dim: 2, "
                "arch: linear}"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad.pt does not match .*unexpected keys \['encoder.1.weight'\]"):
        load_semantic_vae(str(tmp_path / "bad.pt"))
    torch.save({"model_state_dict": model.state_dict(), "input_dim": 8}, tmp_path / "noconfig.pt")
    with pytest.raises(ValueError, match="stores no config"):
        load_semantic_vae(str(tmp_path / "noconfig.pt"))
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="text.pt: not a readable checkpoint"):
        load_semantic_vae(str(tmp_path / "text.pt"))


def test_ablation_archs_have_sfd_layouts():
    mlp = SemanticVAE(12, 3, "mlp", hidden_dim=10, num_layers=3)
    assert {k: tuple(v.shape) for k, v in mlp.encoder.state_dict().items()} == {
        "0.gate.weight": (10, 12), "0.gate.bias": (10,), "0.up.weight": (10, 12), "0.up.bias": (10,),
        "1.gate.weight": (10, 10), "1.gate.bias": (10,), "1.up.weight": (10, 10), "1.up.bias": (10,),
        "2.weight": (6, 10), "2.bias": (6,)}
    res = SemanticVAE(12, 3, "resnet", hidden_dim=10, num_layers=2, num_res_blocks=1)
    assert [k for k in res.encoder.state_dict()] == [
        "0.weight", "0.bias", "1.norm.weight", "1.norm.bias", "1.mlp.0.weight", "1.mlp.0.bias", "1.mlp.2.weight",
        "1.mlp.2.bias", "2.gate.weight", "2.gate.bias", "2.up.weight", "2.up.bias", "3.weight", "3.bias"]
    assert [k for k in res.decoder.state_dict()][:4] == ["0.gate.weight", "0.gate.bias", "0.up.weight", "0.up.bias"]
    assert tuple(res.decoder.state_dict()["3.weight"].shape) == (12, 10)   # 2 SwiGLU, 1 ResBlock, Linear
    lin = SemanticVAE(12, 3, "linear", variational=False)
    assert {k: tuple(v.shape) for k, v in lin.state_dict().items()} == {
        "encoder.0.weight": (3, 12), "encoder.0.bias": (3,), "decoder.0.weight": (12, 3), "decoder.0.bias": (12,)}
    x = torch.randn(2, 5, 12)
    for m in (mlp, res, lin):
        recon, z, kl = m(x)
        assert recon.shape == (2, 5, 12) and z.shape == (2, 5, 3) and kl.shape == (2,)
    with pytest.raises(ValueError, match="unknown Semantic VAE arch 'conv'"):
        SemanticVAE(12, 3, "conv")


#################################################################################
#                         Posterior, blocks and losses                          #
#################################################################################

def _linear_vae(weight, bias):
    """A linear VAE whose encoder outputs x @ weight.T + bias: moments we choose exactly."""
    m = SemanticVAE(weight.shape[1], weight.shape[0] // 2, "linear")
    with torch.no_grad():
        m.encoder[0].weight.copy_(weight)
        m.encoder[0].bias.copy_(bias)
    return m


def test_posterior_sample_kl_and_mode_closed_forms():
    torch.manual_seed(0)
    B, L, D, b = 3, 4, 5, 2
    x = torch.randn(B, L, D, dtype=torch.float64)
    m = _linear_vae(torch.randn(2 * b, D), torch.tensor([0.0, 0.0, 25.0, -40.0])).double().requires_grad_(False)
    params = (x @ m.encoder[0].weight.T + m.encoder[0].bias).numpy()       # (B, L, 2b)
    mean, logvar = params[..., :b], np.clip(params[..., b:], -30.0, 20.0)  # logvar channel 1 clamps at -30
    assert (params[..., b + 1] < -30).all() and (logvar[..., 1] == -30).all()     # lower clamp
    assert (params[..., b] > 20).any() and logvar[..., 0].max() == 20                # upper clamp
    noise = torch.randn(B, L, b, dtype=torch.float64)
    z, kl = m.encode(x, noise)
    assert np.allclose(z.numpy(), mean + np.exp(0.5 * logvar) * noise.numpy(), rtol=1e-12, atol=1e-12)
    expected_kl = 0.5 * (mean ** 2 + np.exp(logvar) - 1.0 - logvar).sum(axis=(1, 2))
    assert np.allclose(kl.numpy(), expected_kl, rtol=1e-12)
    assert np.allclose(m.mode(x).numpy(), mean, rtol=1e-12)
    # a generator draws SFD's (B, b, L) noise: the same values posterior.sample() takes from that RNG state
    g = torch.Generator().manual_seed(7)
    z_g, _ = m.encode(x, generator=g)
    eps = torch.randn(B, b, L, generator=torch.Generator().manual_seed(7), dtype=torch.float64).transpose(1, 2)
    assert torch.allclose(z_g, torch.from_numpy(mean) + torch.from_numpy(np.exp(0.5 * logvar)) * eps, atol=1e-12)
    torch.manual_seed(3)
    z1, _ = m.encode(x)
    torch.manual_seed(3)
    assert torch.equal(z1, m.encode(x)[0])
    with pytest.raises(ValueError, match="noise shape"):
        m.encode(x, noise.transpose(1, 2))
    # the plain autoencoder: the code itself, zero KL
    ae = SemanticVAE(D, b, "linear", variational=False).double().requires_grad_(False)
    z_ae, kl_ae = ae.encode(x)
    assert torch.equal(z_ae, ae.mode(x)) and torch.equal(kl_ae, torch.zeros(B, dtype=torch.float64))
    recon, z_f, kl_f = m(x, noise)
    assert torch.equal(z_f, z) and torch.equal(recon, m.decode(z))


def test_transformer_block_against_an_independent_pre_ln_block():
    torch.manual_seed(0)
    blk = TransformerBlock(8, 2).double()
    for p in blk.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    sd = blk.state_dict()

    def ln(v, pre):
        return F.layer_norm(v, (8,), sd[f"{pre}.weight"], sd[f"{pre}.bias"], eps=1e-5)

    h = ln(x, "norm1")
    q, k, v = (h @ sd["attn.in_proj_weight"].T + sd["attn.in_proj_bias"]).chunk(3, dim=-1)
    heads = lambda t: t.view(2, 5, 2, 4).transpose(1, 2)  # noqa: E731
    att = torch.softmax(heads(q) @ heads(k).transpose(-1, -2) / 2.0, dim=-1) @ heads(v)
    x1 = x + att.transpose(1, 2).reshape(2, 5, 8) @ sd["attn.out_proj.weight"].T + sd["attn.out_proj.bias"]
    hid = ln(x1, "norm2") @ sd["mlp.0.weight"].T + sd["mlp.0.bias"]
    hid = 0.5 * hid * (1 + torch.erf(hid / math.sqrt(2)))                 # exact GELU
    expected = x1 + hid @ sd["mlp.2.weight"].T + sd["mlp.2.bias"]
    assert torch.allclose(blk(x), expected, atol=1e-12)


def test_losses_against_closed_forms():
    torch.manual_seed(0)
    B, L, D = 2, 3, 4
    recon, target = torch.randn(B, L, D, dtype=torch.float64), torch.randn(B, L, D, dtype=torch.float64)
    kl = torch.tensor([3.0, 5.0], dtype=torch.float64)
    r, t = recon.numpy(), target.numpy()
    mse, l1 = ((r - t) ** 2).mean(), np.abs(r - t).mean()

    def cos(a, c):
        return (a * c).sum() / max(np.linalg.norm(a) * np.linalg.norm(c), 1e-8)

    cos_token = np.mean([cos(r[i, :, d], t[i, :, d]) for i in range(B) for d in range(D)])   # along L (SFD)
    cos_feature = np.mean([cos(r[i, l], t[i, l]) for i in range(B) for l in range(L)])      # along D
    out = semvae_loss(recon, target, kl, LossWeights())
    assert out["mse"].item() == pytest.approx(mse, rel=1e-12) and out["l1"].item() == pytest.approx(l1, rel=1e-12)
    assert out["cos_loss"].item() == pytest.approx(1 - cos_token, rel=1e-12)
    assert out["kl_loss"].item() == pytest.approx(4.0)                      # batch mean of the summed KL
    assert out["total"].item() == pytest.approx(mse + (1 - cos_token) + 1e-7 * 4.0, rel=1e-12)
    feat = semvae_loss(recon, target, kl, LossWeights(cos_axis="feature"))
    assert feat["cos_loss"].item() == pytest.approx(1 - cos_feature, rel=1e-12)
    assert token_cosine(recon, target).mean().item() == pytest.approx(cos_feature, rel=1e-6)
    # every weight is honoured, the disabled terms included
    logits, labels = torch.randn(B, 10, dtype=torch.float64), torch.tensor([1, 7])
    w = LossWeights(mse_weight=2.0, cos_weight=0.5, l1_weight=3.0, kl_weight=0.1, classification_weight=0.25)
    out = semvae_loss(recon, target, kl, w, logits, labels)
    ce = F.cross_entropy(logits, labels).item()
    assert out["classification_loss"].item() == pytest.approx(ce)
    assert out["total"].item() == pytest.approx(2 * mse + 3 * l1 + 0.5 * (1 - cos_token) + 0.4 + 0.25 * ce, rel=1e-12)
    with pytest.raises(ValueError, match="training.loss.cos_axis"):
        LossWeights(cos_axis="channels")


#################################################################################
#                                     Schema                                    #
#################################################################################

def test_ch16_yaml_loads_unchanged_with_its_values():
    cfg = load_semvae_config(str(CH16))
    root = "outputs/semantic_vae/dinov2_vitb14_reg/transformer_ch16"
    assert cfg.model.bottleneck_dim == 16 and cfg.model.arch == "transformer" and cfg.model.variational
    p = cfg.model.params
    assert (p.hidden_dim, p.transformer_heads, p.transformer_blocks) == (768, 6, 4)
    assert cfg.data.model_name == "dinov2_vitb14_reg" and cfg.data.max_samples == 1281167 and cfg.data.batch_size == 64
    assert cfg.training.optimizer.lr == 5e-5 and cfg.training.total_iterations == 1_000_000
    assert cfg.training.scheduler.constant_steps == 800_000 and cfg.training.loss.kl_weight == 1e-7
    assert cfg.training.mixed_precision == "bf16" and cfg.training.loss.cos_axis == "token"
    assert cfg.training.checkpointing.checkpoint_dir == f"{root}/checkpoints" and cfg.training.log.log_dir == root
    assert cfg.training.evaluation.model_name == "dinov2_vitb14_reg" and cfg.training.evaluation.max_samples == 500
    over = load_semvae_config(str(CH16), ["variables.output_root=/tmp/x", "model.bottleneck_dim=8",
                                          "training.loss.cos_axis=feature"])
    assert over.training.checkpointing.checkpoint_dir == "/tmp/x/checkpoints" and over.model.bottleneck_dim == 8
    assert over.training.loss.cos_axis == "feature"


@pytest.mark.parametrize("override, match", [
    ("model.arch=conv", "'model.arch'"),
    ("training.optimizer.type=SGD", "'training.optimizer.type'"),
    ("training.mixed_precision=fp8", "'training.mixed_precision'"),
    ("training.loss.cos_axis=x", "'training.loss.cos_axis'"),
    ("training.loss.kl_weight=-1", "'training.loss.kl_weight'"),
    ("model.params.transformer_heads=5", "'model.params.hidden_dim' 768 is not divisible"),
    ("training.checkpointing.checkpoint_dir=/elsewhere", "must be 'training.log.log_dir'/checkpoints"),
    ("model.params.depth=2", "unknown config key 'model.params.depth'"),
    ("model.bottleneck_dim=${variables.nothing}", "bad reference"),
])
def test_bad_values_name_the_key(override, match):
    with pytest.raises(ValueError, match=match):
        load_semvae_config(str(CH16), [override])


def test_every_schema_key_is_read_or_listed_as_compat():
    """The check of tests/configs/test_schema.py for this schema: a key counts as read when its
    last name is read by the code (the schema module itself left out, its validation function
    kept) or its dotted path is a string constant there."""
    import ast
    import inspect
    from omegaconf import OmegaConf
    import dataclasses
    from tokenizer.semvae_config import resolve_semvae_config

    def leaf_keys(cls, prefix=""):
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
            if dataclasses.is_dataclass(default):
                yield from leaf_keys(type(default), f"{prefix}{f.name}.")
            else:
                yield prefix + f.name

    skip = {ROOT / "configs/schema.py", ROOT / "tokenizer/train_config.py", ROOT / "tokenizer/semvae_config.py"}
    sources = [p.read_text() for p in ROOT.rglob("*.py") if p not in skip
               and not {"tests", "docs"} & set(p.relative_to(ROOT).parts)
               and not any(part.startswith(".") for part in p.relative_to(ROOT).parts)]
    sources.append(inspect.getsource(resolve_semvae_config))
    names, strings = set(), set()
    for source in sources:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Attribute):
                names.add(node.attr)
            elif isinstance(node, (ast.arg, ast.keyword)) and getattr(node, "arg", None):
                names.add(node.arg)
            elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
                names.add(node.slice.value)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                strings.add(node.value)
    compat = SemVAETrainConfig.compat_keys
    structured = OmegaConf.structured(SemVAETrainConfig)
    assert all(OmegaConf.select(structured, k, default="missing") != "missing" for k in compat)
    unread = [k for k in leaf_keys(SemVAETrainConfig) if k != "variables"   # read by ${variables.x} references
              and k not in compat and k.rsplit(".", 1)[-1] not in names and k not in strings]
    assert unread == []
    assert "swandb_exp_name" not in names   # the check has teeth: a compat key no code reads


def test_model_defaults_are_sfds_constructor_defaults():
    import inspect
    from tokenizer.semvae_config import ModelParams
    sig = inspect.signature(SemanticVAE.__init__).parameters
    for name in ("hidden_dim", "num_layers", "num_res_blocks", "transformer_heads", "transformer_blocks"):
        assert getattr(ModelParams, name) == sig[name].default
