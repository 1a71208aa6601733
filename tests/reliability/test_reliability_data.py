"""Data, stats and weight files are validated at the door: train.py and inference.py stop with one
line naming the file and what is wrong, and the output directory (an earlier run) is untouched."""
import pytest
import torch
from safetensors.torch import load_file, save_file

import inference
import train

from conftest import TINY_CONFIG, error_of, snapshot

SHARD = "latents_rank00_shard000.safetensors"


def rewrite_shard(path, **changes):
    tensors = load_file(str(path))
    tensors.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del tensors[key]
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


def break_shard_key(d):
    rewrite_shard(d / SHARD, labels=None)


def break_shard_dtype(d):
    rewrite_shard(d / SHARD, latents=load_file(str(d / SHARD))["latents"].double())


def break_shard_text(d):
    (d / SHARD).write_text("not a safetensors file\n")


def break_labels(d):
    labels = load_file(str(d / SHARD))["labels"]
    rewrite_shard(d / SHARD, labels=labels.clone().fill_(10))        # num_classes = 10


def break_empty(d):
    for shard in d.glob("*.safetensors"):
        t = load_file(str(shard))
        rewrite_shard(shard, **{k: v[:0] for k, v in t.items()})


def break_no_shards(d):
    for shard in d.glob("*.safetensors"):
        shard.unlink()


def stats(mean, std):
    return lambda d: torch.save({"mean": mean, "std": std}, d / "latents_stats.pt")


def break_stats_text(d):
    (d / "latents_stats.pt").write_text("mean: 0\nstd: 1\n")


def break_stats_missing(d):
    (d / "latents_stats.pt").unlink()


ONES = torch.ones(1, 4, 1, 1)
CASES = {
    "shard missing key": (break_shard_key, [], SHARD, "missing key(s) ['labels']"),
    "shard float64": (break_shard_dtype, [], SHARD, "dtypes"),
    "shard not safetensors": (break_shard_text, [], SHARD, "unreadable safetensors file"),
    "labels >= num_classes": (break_labels, [], SHARD, "outside [0, 10)"),
    "all shards empty": (break_empty, [], "latents", "hold no latents"),
    "no shards": (break_no_shards, [], "latents", "no *.safetensors latent shards"),
    "in_chans mismatch": (None, ["model.in_chans=8"], SHARD, "does not match the model's (8, 4, 4)"),
    "latent grid mismatch": (None, ["data.image_size=32"], SHARD, "does not match the model's (4, 8, 8)"),
    "fewer latents than a batch": (None, ["train.global_batch_size=128"], "latents", "fewer than one global batch"),
    "stats NaN": (stats(ONES * float("nan"), ONES), [], "latents_stats.pt", "NaN or inf"),
    "stats zero std": (stats(ONES * 0, ONES * 0), [], "latents_stats.pt", "std must be positive"),
    "stats wrong shape": (stats(torch.ones(4), torch.ones(4)), [], "latents_stats.pt", "expected (1, C, 1, 1)"),
    "stats channels": (stats(torch.ones(1, 3, 1, 1), torch.ones(1, 3, 1, 1)), [], "latents_stats.pt", "3 channels"),
    "stats text file": (break_stats_text, [], "latents_stats.pt", "not a PyTorch stats file"),
    "stats missing": (break_stats_missing, [], "latents_stats.pt", "latent statistics not found"),
    "weight_init missing": (None, ["train.weight_init=nope.pt"], "nope.pt", "not found"),
    "weight_init text": (None, [f"train.weight_init={TINY_CONFIG}"], "lightningdit_tiny.yaml", "not a PyTorch checkpoint"),
    "data_path missing": (None, ["data.data_path=nowhere"], "nowhere", "latent directory not found"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_train_rejects_bad_data_before_writing(case, workdir, monkeypatch):
    breaker, overrides, culprit, what = CASES[case]
    monkeypatch.chdir(workdir)
    if breaker is not None:
        breaker(workdir / "latents")
    before = snapshot(workdir)
    message = error_of(train.main, [TINY_CONFIG, "data.data_path=latents", "train.output_dir=out", *overrides])
    assert culprit in message and what in message, message
    assert snapshot(workdir) == before


def checkpoint(d):
    path = d / "model.pt"
    torch.save({"ema": {"w": torch.zeros(1)}}, path)
    return str(path)


def truncated_checkpoint(d):
    path = d / "trunc.pt"
    torch.save({"ema": {"w": torch.zeros(4096)}}, path)
    path.write_bytes(path.read_bytes()[:5000])
    return str(path)


INFERENCE_CASES = {
    "ckpt truncated": (lambda d: [f"ckpt_path={truncated_checkpoint(d)}"], "trunc.pt", "truncated or corrupt"),
    "ckpt_path unset": (lambda d: [], "ckpt_path", "is not set"),
    "ckpt missing": (lambda d: ["ckpt_path=missing.pt"], "missing.pt", "checkpoint not found"),
    "ckpt is text": (lambda d: [f"ckpt_path={TINY_CONFIG}"], "lightningdit_tiny.yaml", "not a PyTorch checkpoint"),
    "stats missing": (lambda d: [f"ckpt_path={checkpoint(d)}", "data.data_path=nowhere"], "nowhere/latents_stats.pt",
                      "not found"),
    "stats channels": (lambda d: [f"ckpt_path={checkpoint(d)}", "model.in_chans=8"], "latents_stats.pt", "in_chans = 8"),
    "tokenizer config missing": (lambda d: [f"ckpt_path={checkpoint(d)}", "vae.config_path=tok.yaml"], "tok.yaml",
                                 "tokenizer config not found"),
}


@pytest.mark.parametrize("case", sorted(INFERENCE_CASES))
def test_inference_rejects_bad_inputs_before_writing(case, workdir, monkeypatch):
    overrides, culprit, what = INFERENCE_CASES[case]
    monkeypatch.chdir(workdir)
    extra = overrides(workdir)
    before = snapshot(workdir)
    message = error_of(inference.main, [TINY_CONFIG, "data.data_path=latents", "train.output_dir=out",
                                        f"vae.config_path={TINY_CONFIG.replace('lightningdit_tiny', 'tiny_vavae_f4d4')}",
                                        *extra, "--vae-random-init"])
    assert culprit in message and what in message, message
    assert snapshot(workdir) == before
