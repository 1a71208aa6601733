"""Tests for models/checkpoint.py: file layouts of docs/reference_behaviour.md §3.7, strictness, error messages."""
import pytest
import torch

from models.checkpoint import (clean_state_dict, load_lightningdit_checkpoint, read_lightningdit_state_dict)
from models.lightningdit import LightningDiT


def tiny(seed):
    torch.manual_seed(seed)
    m = LightningDiT(input_size=4, patch_size=1, in_channels=4, hidden_size=16, depth=1, num_heads=2,
                     num_classes=10, use_swiglu=True, use_rope=True, use_rmsnorm=True)
    with torch.no_grad():  # make the two seeds differ everywhere, including zero-initialised layers
        for p in m.parameters():
            p.add_(torch.randn_like(p))
    return m


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_clean_state_dict_strips_wrappers():
    t = torch.zeros(1)
    sd = {"module.blocks.0.attn.qkv.weight": t, "_orig_mod.pos_embed": t, "module._orig_mod.y_embedder.w": t,
          "blocks.1._orig_mod.mlp.w3.bias": t}
    assert list(clean_state_dict(sd)) == ["blocks.0.attn.qkv.weight", "pos_embed", "y_embedder.w",
                                          "blocks.1.mlp.w3.bias"]
    with pytest.raises(ValueError, match="pos_embed"):
        clean_state_dict({"module.pos_embed": t, "pos_embed": t})


def test_training_checkpoint_prefers_ema_and_strips_module(tmp_path):
    model_w, ema_w, target = tiny(0), tiny(1), tiny(2)
    ckpt = {"model": {f"module.{k}": v for k, v in model_w.state_dict().items()},
            "ema": ema_w.state_dict(), "opt": {"state": {}, "param_groups": []}, "config": {"model": {"a": 1}}}
    path = tmp_path / "0080000.pt"
    torch.save(ckpt, path)
    load_lightningdit_checkpoint(path, target)
    assert same_weights(target, ema_w)
    load_lightningdit_checkpoint(path, target, prefer_ema=False)
    assert same_weights(target, model_w)  # `module.` prefixes removed
    sd, source = read_lightningdit_state_dict(path, prefer_ema=False)
    assert source == "model" and not any(k.startswith("module.") for k in sd)


def test_released_layouts(tmp_path):
    ref, target = tiny(3), tiny(4)
    torch.save({"ema": ref.state_dict()}, tmp_path / "ema_only.pt")
    torch.save(ref.state_dict(), tmp_path / "bare.pt")
    for name in ("ema_only.pt", "bare.pt"):
        load_lightningdit_checkpoint(tmp_path / name, tiny(5), prefer_ema=False)
        assert same_weights(load_lightningdit_checkpoint(tmp_path / name, target), ref)
    sd = load_lightningdit_checkpoint(tmp_path / "bare.pt")  # without a model: the clean state dict
    assert isinstance(sd, dict) and torch.equal(sd["pos_embed"], ref.state_dict()["pos_embed"])


def test_safetensors_loads(tmp_path):
    from safetensors.torch import save_file
    ref, target = tiny(6), tiny(7)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    assert same_weights(load_lightningdit_checkpoint(path, target), ref)
    x, t, y = torch.randn(2, 4, 4, 4), torch.rand(2), torch.tensor([1, 2])
    ref.eval(); target.eval()
    assert torch.equal(ref(x, t, y), target(x, t, y))


def test_strict_errors_name_keys(tmp_path):
    ref = tiny(8)
    sd = ref.state_dict()
    sd.pop("feat_rope.freqs_cos")
    sd["blocks.0.extra.weight"] = torch.zeros(2)
    sd["final_layer.linear.bias"] = torch.zeros(3)
    path = tmp_path / "bad.pt"
    torch.save({"ema": sd}, path)
    target = tiny(9)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError) as err:
        load_lightningdit_checkpoint(path, target)
    msg = str(err.value)
    assert "feat_rope.freqs_cos" in msg and "blocks.0.extra.weight" in msg and "final_layer.linear.bias" in msg
    assert str(path) in msg
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())  # nothing half-loaded


def test_missing_file_message(tmp_path):
    path = tmp_path / "lightningdit-xl-imagenet256-800ep.pt"
    with pytest.raises(FileNotFoundError) as err:
        load_lightningdit_checkpoint(path, tiny(0))
    msg = str(err.value)
    assert str(path) in msg and "README" in msg and "hustvl/lightningdit-xl-imagenet256-800ep" in msg
    assert "\n" not in msg


def test_unreadable_layouts(tmp_path):
    torch.save({"opt": {}, "step": 3}, tmp_path / "a.pt")
    with pytest.raises(ValueError, match="no 'ema', 'model'"):
        read_lightningdit_state_dict(tmp_path / "a.pt")
    torch.save({"ema": {"x": 1}}, tmp_path / "b.pt")
    with pytest.raises(ValueError, match="'ema'"):
        read_lightningdit_state_dict(tmp_path / "b.pt")


# ----------------------------------------------------------------------------------------------
# SFD checkpoints (SFD's train.py / inference.py; key names and shapes of its model)
# ----------------------------------------------------------------------------------------------

def sfd_xl_keys():
    """The state dict of SFD's released XL/1 network, written out by hand from its module tree:
    D = 1152, 28 blocks, 16 heads of 72, 48 channels (32 texture + 16 semantic), qk-norm,
    SwiGLU hidden 3072, two time embedders of width D/2, REPA projector to DINOv2-B's 768."""
    D, half, F = 1152, 576, 3072
    keys = {"x_embedder.proj.weight": (D, 48, 1, 1), "x_embedder.proj.bias": (D,), "pos_embed": (1, 256, D)}
    for part in ("sem", "tex"):
        keys.update({f"t_embedder_{part}.mlp.0.weight": (half, 256), f"t_embedder_{part}.mlp.0.bias": (half,),
                     f"t_embedder_{part}.mlp.2.weight": (half, half), f"t_embedder_{part}.mlp.2.bias": (half,)})
    keys.update({"y_embedder.embedding_table.weight": (1001, D),
                 "feat_rope.freqs_cos": (256, 72), "feat_rope.freqs_sin": (256, 72)})
    for i in range(28):
        keys.update({f"blocks.{i}.{name}": shape for name, shape in {
            "norm1.weight": (D,), "attn.qkv.weight": (3 * D, D), "attn.qkv.bias": (3 * D,),
            "attn.q_norm.weight": (72,), "attn.k_norm.weight": (72,), "attn.proj.weight": (D, D),
            "attn.proj.bias": (D,), "norm2.weight": (D,), "mlp.w12.weight": (2 * F, D), "mlp.w12.bias": (2 * F,),
            "mlp.w3.weight": (D, F), "mlp.w3.bias": (D,), "adaLN_modulation.1.weight": (6 * D, D),
            "adaLN_modulation.1.bias": (6 * D,)}.items()})
    keys.update({"final_layer.norm_final.weight": (D,), "final_layer.linear.weight": (48, D),
                 "final_layer.linear.bias": (48,), "final_layer.adaLN_modulation.1.weight": (2 * D, D),
                 "final_layer.adaLN_modulation.1.bias": (2 * D,),
                 "repa_projector.0.weight": (2048, D), "repa_projector.0.bias": (2048,),
                 "repa_projector.2.weight": (2048, 2048), "repa_projector.2.bias": (2048,),
                 "repa_projector.4.weight": (768, 2048), "repa_projector.4.bias": (768,)})
    return keys


def test_sfd_xl_network_has_sfd_keys_and_loads_them_strictly():
    """SFD's XL config (configs/sfd/lightningdit_xl/train.yaml) builds a network whose state dict
    is SFD's, key for key and shape for shape; a state dict with those keys loads strictly."""
    from configs.schema import load_config
    from models.build import build_model
    from utils.state_dict import load_strict

    with torch.device("meta"):
        model = build_model(load_config("configs/sfd/lightningdit_xl/train.yaml"), training=False)
        expected = sfd_xl_keys()
        assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
        load_strict(model, {k: torch.empty(s) for k, s in expected.items()}, "SFD XL/1 state dict")
        sd = {k: torch.empty(s) for k, s in expected.items() if not k.startswith("repa_projector")}
        with pytest.raises(ValueError, match=r"6 missing keys \['repa_projector.0.weight'"):
            load_strict(model, sd, "an XL/1 without REPA")


def tiny_sfd(seed, **kw):
    torch.manual_seed(seed)
    m = LightningDiT(input_size=4, patch_size=1, in_channels=6, hidden_size=16, depth=2, num_heads=2,
                     num_classes=10, use_swiglu=True, use_rope=True, use_rmsnorm=True, use_qknorm=True,
                     semantic_chans=2, semfirst_delta_t=0.3, use_repa=True, repa_dino_version="dinov2_vits14",
                     repa_depth=1, repa_projector_dim=8, **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p))
    return m


def test_sfd_checkpoint_layouts(tmp_path):
    """SFD's train.py file {'model', 'ema', 'opt', 'config' (an OmegaConf DictConfig)} loads with
    weights_only=True, EMA preferred; so does an EMA-only raw state dict."""
    from omegaconf import OmegaConf

    model_w, ema_w, target = tiny_sfd(0), tiny_sfd(1), tiny_sfd(2)
    opt = torch.optim.AdamW(model_w.parameters(), lr=1e-4)
    model_w(torch.randn(2, 6, 4, 4), (torch.rand(2), torch.rand(2)), torch.tensor([1, 2]))[0].sum().backward()
    opt.step()
    config = OmegaConf.create({"model": {"model_type": "LightningDiT-XL/1", "semfirst_delta_t": 0.3,
                                         "repa_feat_depth": 2, "use_repa": True, "lst": [1, 2.5, "a", None]}})
    torch.save({"model": model_w.state_dict(), "ema": ema_w.state_dict(), "opt": opt.state_dict(),
                "config": config}, tmp_path / "0400000.pt")
    load_lightningdit_checkpoint(tmp_path / "0400000.pt", target)
    assert same_weights(target, ema_w)
    load_lightningdit_checkpoint(tmp_path / "0400000.pt", target, prefer_ema=False)
    assert same_weights(target, model_w)
    torch.save(ema_w.state_dict(), tmp_path / "4000000.pt")
    assert same_weights(load_lightningdit_checkpoint(tmp_path / "4000000.pt", tiny_sfd(3)), ema_w)
    with pytest.raises(ValueError, match="t_embedder_sem.mlp.0.weight"):  # a LightningDiT is not SFD's network
        load_lightningdit_checkpoint(tmp_path / "4000000.pt", tiny(4))
