"""Strict released-weights loader (tokenizer/checkpoint.py)."""
import argparse
import logging

import pytest
import torch
from safetensors.torch import save_file

from tokenizer.autoencoder import AutoencoderKL
from tokenizer.checkpoint import load_autoencoder_weights

TINY = dict(double_z=True, z_channels=4, resolution=32, in_channels=3, out_ch=3, ch=32,
            ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[16], dropout=0.0)


def tiny(seed):
    torch.manual_seed(seed)
    return AutoencoderKL(TINY, embed_dim=4)


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("fmt", ["bare_pt", "state_dict_pt", "safetensors"])
def test_round_trip_is_exact(tmp_path, fmt):
    src, dst = tiny(0), tiny(1)
    sd = src.state_dict()
    assert not torch.equal(sd["encoder.conv_in.weight"], dst.state_dict()["encoder.conv_in.weight"])
    if fmt == "bare_pt":
        path = tmp_path / "w.pt"
        torch.save(sd, path)
    elif fmt == "state_dict_pt":
        path = tmp_path / "w.ckpt"
        torch.save({"state_dict": sd, "epoch": 3}, path)
    else:
        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    report = load_autoencoder_weights(dst, path)
    assert report == {"loaded": len(sd), "ignored": 0}
    assert_same_weights(src, dst)


def test_lightning_checkpoint_ignores_training_entries(tmp_path, caplog, monkeypatch):
    """A full Lightning file (pickled non-tensor objects) with loss/foundation_model/linear_proj:
    refused until the user lists it in $LIGHTNINGDIT_TRUSTED_PICKLES, then loaded."""
    src, dst = tiny(0), tiny(1)
    sd = dict(src.state_dict())
    sd["loss.logvar"] = torch.zeros(())
    sd["loss.discriminator.main.0.weight"] = torch.zeros(2)
    sd["foundation_model.model.blocks.0.norm1.weight"] = torch.zeros(3)
    sd["linear_proj.weight"] = torch.zeros(1024, 4, 1, 1)
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": sd, "hyper_parameters": argparse.Namespace(lr=1e-4)}, path)
    with pytest.raises(ValueError, match=r"imports argparse\.Namespace.*LIGHTNINGDIT_TRUSTED_PICKLES="):
        load_autoencoder_weights(dst, path)
    monkeypatch.setenv("LIGHTNINGDIT_TRUSTED_PICKLES", f"/elsewhere/x.ckpt:{path}")
    with caplog.at_level(logging.INFO):
        report = load_autoencoder_weights(dst, path)
    assert report == {"loaded": len(sd) - 4, "ignored": 4}
    assert_same_weights(src, dst)
    text = caplog.text
    assert "ignored 4 training-only entries" in text and "weights_only=False" in text


def test_mar_state_key(tmp_path):
    src, dst = tiny(0), tiny(1)
    path = tmp_path / "kl16.ckpt"
    torch.save({"model": src.state_dict()}, path)
    with pytest.raises(ValueError, match="non-tensor entries"):
        load_autoencoder_weights(dst, path)  # without the key the dict is not a state dict
    load_autoencoder_weights(dst, path, state_key="model")
    assert_same_weights(src, dst)


def test_missing_and_unexpected_keys_raise(tmp_path):
    dst = tiny(1)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    sd = dict(tiny(0).state_dict())
    del sd["decoder.conv_out.bias"]
    torch.save(sd, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"1 missing keys \['decoder.conv_out.bias'\]"):
        load_autoencoder_weights(dst, tmp_path / "missing.pt")
    sd = dict(tiny(0).state_dict())
    sd["model.encoder.conv_in.weight"] = sd["encoder.conv_in.weight"]
    torch.save(sd, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match=r"unexpected keys \['model.encoder.conv_in.weight'\]"):
        load_autoencoder_weights(dst, tmp_path / "extra.pt")
    sd = dict(tiny(0).state_dict())
    sd["quant_conv.bias"] = torch.zeros(5)
    torch.save(sd, tmp_path / "shape.pt")
    with pytest.raises(ValueError, match="quant_conv.bias"):
        load_autoencoder_weights(dst, tmp_path / "shape.pt")
    for k, v in dst.state_dict().items():  # failed loads leave the model untouched
        assert torch.equal(v, before[k])


def test_missing_file_names_it_and_the_source(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_autoencoder_weights(tiny(0), tmp_path / "nope.pt")
    msg = str(err.value)
    assert "nope.pt" in msg and "hustvl/vavae-imagenet256-f16d32-dinov2" in msg
    assert "vavae-imagenet256-f16d32-dinov2.pt" in msg
