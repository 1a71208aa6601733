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
