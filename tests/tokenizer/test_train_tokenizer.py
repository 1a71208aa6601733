"""VA-VAE trainer (train_tokenizer.py) and its configs, on CPU with a tiny model (32 px, ch 32,
ch_mult [1, 2], tiny random DINOv2-family ViT, random-VGG LPIPS)."""
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import training.vavae as T
from datasets.order import GlobalBatchSampler
from tokenizer.data import ImageFolderDataset, write_toy_images
from tokenizer.train_config import load_train_config, lr_schedule, mixed_precision
from tokenizer.vavae import VA_VAE
from utils.runtime import seed_everything

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "tokenizer"



@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    write_toy_images(root / "train" / "class_a", 6, size=(40, 34), seed=0)
    write_toy_images(root / "val", 3, size=(36, 36), seed=1)
    (root / "train" / "class_a" / "broken.png").write_bytes(b"not an image")
    return root


def _cfg(images, **extra):
    overrides = {
        "data.params.train.data_root": str(images / "train"),
        "data.params.validation.data_root": str(images / "val"),
        "data.params.batch_size": 2,
        "data.params.num_workers": 0,
        "model.params.embed_dim": 4,
        "model.params.lossconfig.params.disc_start": 0,
        "model.params.lossconfig.params.perceptual_weight": 1.0,
        "model.params.lossconfig.params.lpips_random_init": True,
        "model.params.lossconfig.params.disc_ndf": 8,
        "train.log_every": 1,
        "train.sample_every": 2,
        "train.num_sample_images": 2,
        "train.val_every": None,
        "train.ckpt_every": 1,
    }
    overrides.update(extra)
    return load_train_config(str(CONFIGS / "tiny_cpu.yaml"),
                             [f"{k}={'null' if v is None else v}" for k, v in overrides.items()])


def _ckpt(run_dir, step):
    return torch.load(Path(run_dir) / "checkpoints" / f"{step:07d}.pt", weights_only=True)


def _assert_same_state(a, b):
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    for name in ("optimizer_ae", "optimizer_disc"):
        sa, sb = a[name]["state"], b[name]["state"]
        assert sa.keys() == sb.keys()
        for i in sa:
            for k in sa[i]:
                assert torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k])), (name, i, k)


def test_step_changes_weights_reproducible_and_exact_resume(images, tmp_path):
    # Run A: 4 steps uninterrupted (3 batches per epoch: the resume below crosses an epoch),
    # with validation every step. Run B: 2 steps, then a new process-equivalent run resumes to 4.
    a, b = tmp_path / "a", tmp_path / "b"
    last_a = T.train(_cfg(images, **{"train.max_steps": 4, "train.val_every": 1}), a)
    T.train(_cfg(images, **{"train.max_steps": 2}), b)
    T.train(_cfg(images, **{"train.max_steps": 4}), b)

    # one step changes the generator and the discriminator
    cfg = _cfg(images)
    seed_everything(cfg.train.seed)
    model, loss = T.build_model(cfg), T.build_loss(cfg)
    init = T.trainable_state_dict(model, loss)
    step1 = _ckpt(a, 1)["state_dict"]
    for key in ("encoder.conv_in.weight", "decoder.conv_out.weight", "linear_proj.weight",
                "loss.discriminator.main.0.weight"):
        assert not torch.equal(init[key], step1[key]), key
    assert torch.equal(init["loss.logvar"], step1["loss.logvar"])
    # the same seed gives the same run (two independent runs agree at step 2) ...
    _assert_same_state(_ckpt(a, 2), _ckpt(b, 2))
    # ... and resuming at step 2 reproduces the uninterrupted run bit for bit
    _assert_same_state(_ckpt(a, 4), _ckpt(b, 4))
    assert _ckpt(b, 4)["step"] == 4

    # logs, grids, validation, checkpoints loadable for inference
    assert (a / "images" / "step_0000002.png").is_file() and (a / "config.yaml").is_file()
    assert "val/rec_loss" in last_a and "train/vf_loss" in last_a and last_a["train/disc_loss"] > 0
    assert (b / "checkpoints" / "last.pt").resolve().name == "0000004.pt"
    tok = VA_VAE(str(a / "export" / "vavae.yaml"), device="cpu", fp16=False)
    model.load_state_dict({**model.state_dict(), **{k: v for k, v in _ckpt(a, 4)["state_dict"].items()
                                                    if not k.startswith("loss.")}})
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert torch.equal(tok.model.encode(x).mode(), model.encode(x).mode())
    full = VA_VAE(str(a / "export" / "vavae.yaml"), device="cpu", fp16=False,
                  ckpt_path=str(a / "checkpoints" / "0000004.pt"))   # a full training checkpoint
    assert torch.equal(full.model.encode(x).mode(), model.encode(x).mode())


def test_warm_start_from_checkpoint(images, tmp_path):
    cfg = _cfg(images, **{"model.params.lossconfig.params.perceptual_weight": 0.0})
    seed_everything(0)
    src_model, src_loss = T.build_model(cfg), T.build_loss(cfg)
    sd = T.trainable_state_dict(src_model, src_loss)
    sd["foundation_model.model.cls_token"] = torch.zeros(1)      # frozen parts are never read
    del sd["linear_proj.weight"]                                  # e.g. an LDM-VAE start
    torch.save({"state_dict": sd}, tmp_path / "init.ckpt")
    seed_everything(1)
    model, loss = T.build_model(cfg), T.build_loss(cfg)
    before = model.linear_proj.weight.clone()
    T.warm_start(str(tmp_path / "init.ckpt"), model, loss)
    got = T.trainable_state_dict(model, loss)
    assert torch.equal(got["encoder.conv_in.weight"], sd["encoder.conv_in.weight"])
    assert torch.equal(got["loss.discriminator.main.0.weight"], sd["loss.discriminator.main.0.weight"])
    assert torch.equal(model.linear_proj.weight, before)
    sd["decoder.conv_out.weight"] = torch.zeros(1, 2)
    torch.save({"state_dict": sd}, tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match="shape mismatch"):
        T.warm_start(str(tmp_path / "bad.ckpt"), model, loss)


def test_data_pipeline(images):
    ds = ImageFolderDataset(images / "train", size=32, random_crop=True, seed=0)
    assert len(ds) == 7                       # 6 images + the broken file (skipped when read)
    centre = ImageFolderDataset(images / "train", size=32, random_crop=False)
    assert torch.equal(centre[6], centre[0])  # broken.png is sorted last: falls back to image 0
    x = ds[6]
    assert x.shape == (3, 32, 32) and x.min() >= -1 and x.max() <= 1
    ds.set_epoch(1)
    crops = {tuple(ds[i].flatten()[:5].tolist()) for i in range(3)}
    assert len(crops) == 3
    val = ImageFolderDataset(images / "val", size=32, random_crop=False)
    assert torch.equal(val[0], val[0])
    # the tokenizer's order: epoch e is randperm(n) from a generator seeded with seed + e
    order = GlobalBatchSampler(10, 4, rank=0, world_size=1, seed=3, epoch_seed=lambda e: 3 + e)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(4)).tolist()
    assert [i for i, _ in order.batch(2)] == perm[:4] and [i for i, _ in order.batch(3)] == perm[4:8]


@pytest.mark.parametrize("name", ["f16d32_ldm", "f16d32_vfdinov2", "f16d32_vfmae",
                                  "f16d32_vfdinov2_long_stage1", "f16d32_vfdinov2_long_stage2",
                                  "f16d32_vfdinov2_long_stage3"])
def test_reference_configs_load(name):
    cfg = load_train_config(str(CONFIGS / f"{name}.yaml"))
    p, lp = cfg.model.params, cfg.model.params.lossconfig.params
    assert (p.embed_dim, list(p.ddconfig.ch_mult), cfg.model.base_learning_rate) == (32, [1, 1, 2, 2, 4], 1e-4)
    assert (lp.kl_weight, lp.disc_weight, cfg.data.params.batch_size) == (1e-6, 0.5, 8)
    assert mixed_precision(cfg) == "no" and lp.disc_start_counts_optimizer_steps
    expected = {
        "f16d32_ldm": (None, 5001, None, 50),
        "f16d32_vfdinov2": ("dinov2", 5001, (0.1, 0.25, 0.5), 50),
        "f16d32_vfmae": ("mae", 5001, (0.1, 0.25, 0.5), 50),
        "f16d32_vfdinov2_long_stage1": ("dinov2", 5001, (0.5, 0.0, 0.0), 100),
        "f16d32_vfdinov2_long_stage2": ("dinov2", 1, (0.1, 0.0, 0.0), 15),
        "f16d32_vfdinov2_long_stage3": ("dinov2", 1, (0.1, 0.25, 0.5), 15),
    }[name]
    vf = (lp.vf_weight, lp.distmat_margin, lp.cos_margin) if p.use_vf else None
    assert (p.use_vf, lp.disc_start, vf, cfg.lightning.trainer.max_epochs) == expected
    assert p.reverse_proj == (p.use_vf is not None) and (not p.use_vf or lp.adaptive_vf)
    if name.endswith(("stage2", "stage3")):
        prev = int(name[-1]) - 1
        assert cfg.init_weight == f"logs/f16d32_vfdinov2_long_stage{prev}/checkpoints/last.pt"
    # the inference side reads the same file
    raw = OmegaConf.load(CONFIGS / f"{name}.yaml")
    assert raw.model.params.embed_dim == 32 and "ddconfig" in raw.model.params


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="model.params.lossconfig.params.vf_weigth"):
        load_train_config(str(CONFIGS / "f16d32_vfdinov2.yaml"), ["model.params.lossconfig.params.vf_weigth=1"])
    with pytest.raises(ValueError, match="disc_start"):
        load_train_config(str(CONFIGS / "f16d32_vfdinov2.yaml"), ["model.params.lossconfig.params.disc_start=null"])
    with pytest.raises(ValueError, match="precision"):
        load_train_config(str(CONFIGS / "tiny_cpu.yaml"), ["lightning.trainer.precision=16"])
    cfg = load_train_config(str(CONFIGS / "tiny_cpu.yaml"), ["lightning.trainer.precision=bf16-mixed"])
    assert mixed_precision(cfg) == "bf16"
    # the authors' inference-YAML key vf_loss_type: only combined_v3 (= this loss) is accepted
    load_train_config(str(CONFIGS / "tiny_cpu.yaml"), ["model.params.lossconfig.params.vf_loss_type=combined_v3"])
    with pytest.raises(ValueError, match="vf_loss_type"):
        load_train_config(str(CONFIGS / "tiny_cpu.yaml"), ["model.params.lossconfig.params.vf_loss_type=cos"])


@pytest.mark.parametrize("reverse_proj", [True, False])
def test_full_size_training_model_keys(reverse_proj):
    """f16d32 + DINOv2 ViT-L on the meta device: the authors' checkpoint key layout and shapes."""
    cfg = load_train_config(str(CONFIGS / "f16d32_vfdinov2.yaml"), [
        "model.params.foundation.weights=null", "model.params.foundation.random_init=true",
        f"model.params.reverse_proj={str(reverse_proj).lower()}",
        "model.params.lossconfig.params.perceptual_weight=0"])
    with torch.device("meta"):
        model, loss = T.build_model(cfg), T.build_loss(cfg)
    sd = T.trainable_state_dict(model, loss)
    gen = {k: v for k, v in sd.items() if not k.startswith("loss.")}
    if reverse_proj:
        assert sd["linear_proj.weight"].shape == (1024, 32, 1, 1) and "linear_proj.bias" not in sd
        assert len(gen) == 342 + 1
    else:
        assert sd["linear_proj.weight"].shape == (32, 1024, 1, 1) and sd["linear_proj.bias"].shape == (32,)
    assert sum(v.numel() for k, v in gen.items() if not k.startswith("linear_proj.")) == 69_836_067
    assert sd["loss.logvar"].shape == () and "loss.discriminator.main.11.weight" in sd
    assert len([k for k in model.state_dict() if k.startswith("foundation_model.model.")]) == 342
    assert not any(k.startswith("foundation_model.") for k in sd)


#################################################################################
#                  LR schedule (train.lr_schedule): keys, trainer, resume       #
#################################################################################

# warm-up 0.5 -> 1 over 2 steps, constant, linear decay from step 3 to 0.1 x lr at step 5 (held after)
SCHEDULE = {"train.lr_schedule.warmup_steps": 2, "train.lr_schedule.warmup_start": 0.5,
            "train.lr_schedule.decay_start": 3, "train.lr_schedule.total_steps": 5,
            "train.lr_schedule.final": 0.1, "train.lr_schedule.decay": "linear"}
# the same by hand: the update of step s (0-based) uses base_lr x these
SCHEDULE_FACTORS = [0.5, 0.75, 1.0, 1.0, 0.55, 0.1]


def _metrics_rows(run_dir):
    import json
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_lr_schedule_keys_default_to_the_constant_reference_lr():
    cfg = load_train_config(str(CONFIGS / "tiny_cpu.yaml"))
    assert lr_schedule(cfg) is None           # the trainer then writes exactly base_learning_rate
    on = load_train_config(str(CONFIGS / "tiny_cpu.yaml"), [f"{k}={v}" for k, v in SCHEDULE.items()])
    assert [lr_schedule(on).factor(s) for s in range(6)] == pytest.approx(SCHEDULE_FACTORS)
    only_warmup = load_train_config(str(CONFIGS / "tiny_cpu.yaml"), ["train.lr_schedule.warmup_steps=4"])
    assert lr_schedule(only_warmup).factor(2) == 0.5 and lr_schedule(only_warmup).factor(10**6) == 1.0


@pytest.mark.parametrize("overrides, key", [
    (["train.lr_schedule.decay=step"], "train.lr_schedule.decay"),
    (["train.lr_schedule.warmup_start=2.0"], "train.lr_schedule.warmup_start"),
    (["train.lr_schedule.final=-0.1"], "train.lr_schedule.final"),
    (["train.lr_schedule.warmup_steps=-1"], "train.lr_schedule.warmup_steps"),
    (["train.lr_schedule.decay_start=10"], "train.lr_schedule"),                      # no total_steps
    (["train.lr_schedule.decay_start=10", "train.lr_schedule.total_steps=10"], "train.lr_schedule"),
    (["train.lr_schedule.warmup_steps=20", "train.lr_schedule.decay_start=10",
      "train.lr_schedule.total_steps=30"], "train.lr_schedule"),                      # decay inside warm-up
    (["train.lr_schedule.warmup_step=3"], "train.lr_schedule.warmup_step"),            # misspelt key
])
def test_lr_schedule_bad_values_name_the_key(overrides, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")) as err:
        load_train_config(str(CONFIGS / "tiny_cpu.yaml"), overrides)
    assert "\n" not in str(err.value)


def test_lr_schedule_is_applied_per_step_and_resumes_exactly(images, tmp_path):
    # Run A: 6 steps uninterrupted; run B: 3 steps, then resumed to 6 (inside the decay).
    a, b = tmp_path / "a", tmp_path / "b"
    cfg = lambda steps: _cfg(images, **SCHEDULE, **{"train.max_steps": steps,  # noqa: E731
                                                     "model.params.lossconfig.params.perceptual_weight": 0.0})
    T.train(cfg(6), a)
    T.train(cfg(3), b)
    T.train(cfg(6), b)
    base = cfg(6).model.base_learning_rate
    lrs = [r["lr"] for r in _metrics_rows(a) if "lr" in r]        # log_every 1: the lr of each step
    assert lrs == pytest.approx([base * f for f in SCHEDULE_FACTORS])
    assert [r["lr"] for r in _metrics_rows(b) if "lr" in r] == pytest.approx(lrs)
    for ckpt in (_ckpt(a, 6), _ckpt(b, 6)):                         # both optimizers carry it
        assert ckpt["optimizer_ae"]["param_groups"][0]["lr"] == pytest.approx(base * SCHEDULE_FACTORS[5])
        assert ckpt["optimizer_disc"]["param_groups"][0]["lr"] == pytest.approx(base * SCHEDULE_FACTORS[5])
    _assert_same_state(_ckpt(a, 6), _ckpt(b, 6))
    # the schedule changes the run: an unscheduled run differs after the first step
    c = tmp_path / "c"
    T.train(_cfg(images, **{"train.max_steps": 1, "model.params.lossconfig.params.perceptual_weight": 0.0}), c)
    assert not torch.equal(_ckpt(a, 1)["state_dict"]["decoder.conv_out.weight"],
                           _ckpt(c, 1)["state_dict"]["decoder.conv_out.weight"])
    assert [r["lr"] for r in _metrics_rows(c) if "lr" in r] == [base]
