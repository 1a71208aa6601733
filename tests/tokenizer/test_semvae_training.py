"""The Semantic VAE trainer (train_semvae.py, training/semvae.py), its feature files
(datasets/semantic_features.py) and their extraction (tools/extract_semantic_features.py), on CPU
with tiny models: SFD's LR schedule, exact resume, SFD checkpoints, a tiny end-to-end run."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import training.semvae as T
from datasets.semantic_features import FeatureBatches, FeatureFile, FeatureFileWriter, feature_files
from tokenizer.semvae import SFD_CHECKPOINT_KEYS, load_semantic_vae
from tokenizer.semvae_config import load_semvae_config
from training.rundir import RunDirError

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs" / "tokenizer" / "semvae_train" / "tiny_cpu.yaml")
CH16 = str(ROOT / "configs" / "tokenizer" / "semvae_train" / "ch16.yaml")
L, D = 16, 8


def write_features(folder: Path, tokens: torch.Tensor, labels: torch.Tensor, model_name="dinov2_vitb14_reg") -> Path:
    """A features file + metadata in SFD's layout (cls = first token, as a stand-in)."""
    n = tokens.shape[0]
    path = folder / model_name / f"features_{n}samples.safetensors"
    w = FeatureFileWriter(path, n, tokens.shape[1], tokens.shape[2])
    w.write(0, tokens, tokens[:, 0], labels)
    w.finish()
    (folder / model_name / f"metadata_{n}samples.json").write_text(json.dumps(
        {"num_samples": n, "feature_dim": tokens.shape[2], "num_patches": tokens.shape[1]}))
    return path


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    root = tmp_path_factory.mktemp("semvae_features")
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(3, D, generator=g)          # low-rank tokens: something a bottleneck of 4 can learn
    def tokens(n):
        return (torch.randn(n, L, 3, generator=g) @ basis + 0.1 * torch.randn(n, L, D, generator=g)).half().float()
    write_features(root / "train", tokens(20), torch.randint(0, 1000, (20,), generator=g))
    write_features(root / "val", tokens(6), torch.randint(0, 1000, (6,), generator=g))
    return root


def _cfg(features, out, **extra):
    overrides = {"data.feature_dir": features / "train", "training.evaluation.feature_dir": features / "val",
                 "variables.output_root": out, "data.batch_size": 4, "training.log.log_every": 1,
                 "training.log.report_to": "none", "training.evaluation.eval_every": 2,
                 "training.checkpointing.save_every": 2, "training.total_iterations": 4}
    overrides.update(extra)
    return load_semvae_config(TINY, [f"{k}={'null' if v is None else v}" for k, v in overrides.items()])


def _same_training_state(a, b):
    assert a["model_state_dict"].keys() == b["model_state_dict"].keys()
    for k in a["model_state_dict"]:
        assert torch.equal(a["model_state_dict"][k], b["model_state_dict"][k]), k
    sa, sb = a["optimizer_state_dict"]["state"], b["optimizer_state_dict"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in sa[i]:
            assert torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k])), (i, k)
    assert a["loss_averages"] == b["loss_averages"] and a["step"] == b["step"]


#################################################################################
#                                  LR schedule                                  #
#################################################################################

def _sfd_scheduler(lr, warmup, constant, total):
    """SFD's setup_scheduler, built from torch's schedulers as its train.py describes them."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    warmup = max(warmup, 1)
    cosine = max(total - warmup - constant, 1)
    parts = [torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.01, end_factor=1.0, total_iters=warmup),
             torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=constant),
             torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cosine, eta_min=lr * 0.1)]
    return opt, torch.optim.lr_scheduler.SequentialLR(opt, parts, milestones=[warmup, warmup + constant])


@pytest.mark.parametrize("warmup, constant, total", [(5, 10, 30), (0, 3, 12), (4, 0, 9), (3, 20, 10)])
def test_schedule_is_sfds_step_for_step(warmup, constant, total):
    cfg = load_semvae_config(CH16, [f"training.scheduler.warmup_steps={warmup}",
                                    f"training.scheduler.constant_steps={constant}",
                                    f"training.total_iterations={total}", "training.optimizer.lr=5e-5"])
    schedule = T.lr_schedule(cfg)
    opt, sched = _sfd_scheduler(5e-5, warmup, constant, total)
    for step in range(total):   # update `step` runs with the LR set before it (SFD steps after each update)
        assert 5e-5 * schedule.factor(step) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-18), step
        opt.step()
        sched.step()


def test_ch16_schedule_at_sfds_boundaries():
    s = T.lr_schedule(load_semvae_config(CH16))
    assert s.factor(0) == pytest.approx(0.01) and s.factor(499) == pytest.approx(0.01 + 0.99 * 499 / 500)
    assert s.factor(500) == s.factor(800_499) == s.factor(800_500) == 1.0       # constant for 800,000 steps
    k = 100_000                                                                 # cosine over 199,500 steps
    assert s.factor(800_500 + k) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 199_500)), rel=1e-12)
    assert s.factor(999_999) == pytest.approx(0.1, abs=1e-9) and s.factor(999_999) > 0.1


#################################################################################
#                                 Feature files                                 #
#################################################################################

def test_feature_file_roundtrip_partial_reopen_and_errors(tmp_path):
    from safetensors.torch import load_file

    g = torch.Generator().manual_seed(0)
    tokens, labels = torch.randn(7, 5, 3, generator=g), torch.arange(7) * 11
    path = tmp_path / "m" / "features_7samples.safetensors"
    w = FeatureFileWriter(path, 7, 5, 3)
    w.write(0, tokens[:4], tokens[:4, 0], labels[:4])
    w.close()                                        # stopped after 4 items: reopened and completed
    w = FeatureFileWriter(path, 7, 5, 3)
    w.write(4, tokens[4:], tokens[4:, 0], labels[4:])
    w.finish()
    data = load_file(str(path))                      # the safetensors library reads it (SFD's loader)
    assert torch.equal(data["patch_tokens"], tokens.half()) and torch.equal(data["class_indices"], labels)
    assert torch.equal(data["patch_avg"], tokens.mean(dim=1).half())
    assert torch.equal(data["cls_tokens"], tokens[:, 0].half())
    f = FeatureFile(path)
    batch = FeatureBatches(f)[[5, 1, 6]]
    assert torch.equal(batch["patch_tokens"], tokens[[5, 1, 6]].half().float())
    assert batch["class_idx"].tolist() == [55, 11, 66]
    with pytest.raises(FileNotFoundError, match="metadata_7samples.json"):
        feature_files(str(tmp_path), "m", 7)
    (tmp_path / "m" / "metadata_7samples.json").write_text(json.dumps({"num_samples": 7, "feature_dim": 3}))
    assert feature_files(str(tmp_path), "m", None)[0] == path
    (tmp_path / "m" / "metadata_7samples.json").write_text(json.dumps({"num_samples": 8, "feature_dim": 3}))
    with pytest.raises(ValueError, match="does not describe"):
        FeatureFile(*feature_files(str(tmp_path), "m", 7))
    FeatureFileWriter(tmp_path / "x.safetensors", 7, 5, 3).close()     # a partial file of other shapes
    with pytest.raises(ValueError, match="started for other shapes"):
        FeatureFileWriter(tmp_path / "x.safetensors", 7, 5, 4)


#################################################################################
#                                    Training                                   #
#################################################################################

def test_exact_resume_2_plus_2_equals_4(features, tmp_path):
    """4 uninterrupted steps == 2 steps, then a fresh run resuming to 4: weights, optimizer,
    loss averages and the final file; the LR and data order continue."""
    a, b = tmp_path / "a", tmp_path / "b"
    T.train(_cfg(features, a))
    T.train(_cfg(features, b, **{"training.max_steps": 2}))
    assert not (b / "checkpoints" / T.FINAL_NAME).exists()
    T.train(_cfg(features, b))
    fa, fb = (torch.load(p / "checkpoints" / T.FINAL_NAME, weights_only=True) for p in (a, b))
    _same_training_state(fa, fb)
    _same_training_state(torch.load(a / "checkpoints" / "0000002.pt", weights_only=True),
                         torch.load(b / "checkpoints" / "0000002.pt", weights_only=True))
    rows = lambda p: [json.loads(r) for r in (p / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert [r for r in rows(a) if "train/total" in r] == [
        {**r, "steps_per_sec": s["steps_per_sec"]} for r, s in zip([r for r in rows(b) if "train/total" in r],
                                                                    [r for r in rows(a) if "train/total" in r])]
    warmup = [0.01 + 0.99 * k / 5 for k in range(4)]           # tiny_cpu.yaml: 5 warm-up steps, lr 1e-3
    assert [r["lr"] for r in rows(a) if "lr" in r] == pytest.approx([1e-3 * f for f in warmup])
    # SFD's final file: its dict keys, iteration = updates done, the config as a YAML string
    assert set(SFD_CHECKPOINT_KEYS) <= set(fa) and fa["iteration"] == 4 and isinstance(fa["config"], str)
    assert torch.load(a / "checkpoints" / "0000002.pt", weights_only=True)["iteration"] == 1   # SFD: last update index
    assert fa["loss"] == fa["loss_averages"]["total"] and fa["input_dim"] == D and fa["bottleneck_dim"] == 4
    # re-running a finished run does nothing
    T.train(_cfg(features, a))
    _same_training_state(fa, torch.load(a / "checkpoints" / T.FINAL_NAME, weights_only=True))


def test_one_step_matches_the_loss_by_hand(features, tmp_path):
    """Step 0: the logged terms are semvae_loss of the model's output on the step's batch and noise."""
    cfg = _cfg(features, tmp_path / "r", **{"training.total_iterations": 1, "training.evaluation.feature_dir": ""})
    T.train(cfg)
    row = next(json.loads(r) for r in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines())
    model, _ = T.build_model(cfg, D)                 # the same initial weights
    data = T.build_data(cfg, 0, 1)
    idx = [i for i, _ in data.order.batch(0)]
    x = data.train.tokens(idx)
    g = torch.Generator().manual_seed(T.derive_seed(cfg.training.seed, T.STREAM_NOISE, 0, 0))
    with torch.no_grad():
        recon, z, kl = model(x, generator=g)
    mse = ((recon - x) ** 2).mean().item()
    cos = 1 - torch.nn.functional.cosine_similarity(recon, x, dim=1).mean().item()
    assert row["train/mse"] == pytest.approx(mse, rel=1e-5) and row["train/cos_loss"] == pytest.approx(cos, rel=1e-5)
    assert row["train/kl_loss"] == pytest.approx(kl.mean().item(), rel=1e-5)
    assert row["train/total"] == pytest.approx(mse + cos + 1e-7 * kl.mean().item(), rel=1e-5)


def test_resume_from_an_sfd_checkpoint_and_refusals(features, tmp_path):
    run = tmp_path / "run"
    T.train(_cfg(features, run, **{"training.max_steps": 2}))
    ckpt = torch.load(run / "checkpoints" / "0000002.pt", weights_only=True)
    sfd = {k: ckpt[k] for k in SFD_CHECKPOINT_KEYS}             # SFD's file: no `step`, iteration = 1
    torch.save(sfd, tmp_path / "semantic_ae_checkpoint_iter_1.pt")
    other = tmp_path / "other"
    T.train(_cfg(features, other, **{"training.checkpoint_path": tmp_path / "semantic_ae_checkpoint_iter_1.pt"}))
    T.train(_cfg(features, run))                                 # the same run, resumed from our file
    _same_training_state(torch.load(run / "checkpoints" / "0000004.pt", weights_only=True),
                         torch.load(other / "checkpoints" / "0000004.pt", weights_only=True))
    with pytest.raises(RunDirError, match="already holds a run"):
        T.train(_cfg(features, run, **{"training.resume": False}))
    with pytest.raises(RunDirError, match="training.loss.kl_weight"):
        T.train(_cfg(features, run, **{"training.total_iterations": 6, "training.loss.kl_weight": 0.5}))
    with pytest.raises(FileNotFoundError, match="features_9samples.safetensors"):
        T.open_features(_cfg(features, run, **{"data.max_samples": 9}))


def test_classification_head_l1_and_plain_autoencoder(features, tmp_path):
    cfg = _cfg(features, tmp_path / "cls", **{"training.loss.classification_weight": 0.5,
                                               "training.loss.l1_weight": 1.0, "training.total_iterations": 2})
    last = T.train(cfg)
    final = torch.load(tmp_path / "cls" / "checkpoints" / T.FINAL_NAME, weights_only=True)
    assert final["classification_head_state_dict"]["weight"].shape == (1000, 4)
    assert last["train/classification_loss"] > 1.0 and "eval/classification_loss" in last
    expected = (last["train/mse"] + last["train/l1"] + last["train/cos_loss"] + 1e-7 * last["train/kl_loss"]
                + 0.5 * last["train/classification_loss"])     # the last window is one step: the sum holds
    assert last["train/total"] == pytest.approx(expected, rel=1e-5)
    plain = _cfg(features, tmp_path / "ae", **{"model.variational": False, "model.arch": "mlp",
                                                "training.total_iterations": 2})
    assert T.train(plain)["train/kl_loss"] == 0.0
    assert load_semantic_vae(str(tmp_path / "ae" / "checkpoints" / T.FINAL_NAME)).variational is False


#################################################################################
#                        Images -> features -> Semantic VAE                     #
#################################################################################

ENCODER = ["--random_init", "--model_kwargs", json.dumps({"embed_dim": 32, "depth": 1, "num_heads": 2}),
           "--num_workers", "0"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("semvae_images")
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 5), ("val", 2)):
        for c in ("n01", "n02"):
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 255, (40 + 7 * i, 52, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    return root


def train_images(images):
    return ["--data_root", str(images / "train"), "--batch_size", "3", "--shuffle"]


def test_extraction_writes_sfds_format_and_resumes(images, tmp_path, monkeypatch):
    import tools.extract_semantic_features as X

    full = tmp_path / "full"
    X.main([*train_images(images), "--output_root", str(full), *ENCODER])
    feats, meta = feature_files(str(full), "dinov2_vitb14_reg", 10)
    m = json.loads(meta.read_text())
    assert m["num_samples"] == 10 and m["num_patches"] == 256 and m["feature_dim"] == 32 and m["num_classes"] == 2
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0)).tolist()
    assert m["class_names"] == [["n01", "n02"][i // 5] for i in order]    # ImageFolder order, seeded shuffle
    f = FeatureFile(feats, meta)
    assert f.labels(range(10)).tolist() == [i // 5 for i in order]
    # an interrupted extraction (after 2 durable batches) continues to the same bytes
    part = tmp_path / "part"
    monkeypatch.setattr(X, "SYNC_EVERY", 1)
    real = X.FeatureFileWriter.write
    calls = []

    def failing(self, *args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, *args)

    monkeypatch.setattr(X.FeatureFileWriter, "write", failing)
    with pytest.raises(KeyboardInterrupt):
        X.main([*train_images(images), "--output_root", str(part), *ENCODER])
    monkeypatch.setattr(X.FeatureFileWriter, "write", real)
    progress = json.loads((part / "dinov2_vitb14_reg" / "features_10samples.progress.json").read_text())
    assert progress["done"] == 6
    with pytest.raises(SystemExit, match="other settings \\(seed\\)"):
        X.main([*train_images(images), "--output_root", str(part), "--seed", "1", *ENCODER])
    X.main([*train_images(images), "--output_root", str(part), *ENCODER])
    assert (part / "dinov2_vitb14_reg" / "features_10samples.safetensors").read_bytes() == feats.read_bytes()
    assert not (part / "dinov2_vitb14_reg" / "features_10samples.progress.json").exists()


def test_tiny_end_to_end(images, tmp_path):
    """Tiny random DINOv2-family encoder -> SFD feature files -> 3 training steps through the
    command line -> semantic_ae_final.pt, which loads strictly and encodes 256 tokens."""
    import tools.extract_semantic_features as X
    import train_semvae

    for split in ("train", "val"):
        X.main(["--data_root", str(images / split), "--output_root", str(tmp_path / "feat" / split), *ENCODER])
    out = tmp_path / "run"
    train_semvae.main([TINY, f"data.feature_dir={tmp_path / 'feat' / 'train'}",
                       f"training.evaluation.feature_dir={tmp_path / 'feat' / 'val'}", f"variables.output_root={out}",
                       "training.total_iterations=3", "training.log.log_every=1", "training.log.report_to=none"])
    final = out / "checkpoints" / T.FINAL_NAME
    ckpt = torch.load(final, weights_only=True)
    assert set(SFD_CHECKPOINT_KEYS) <= set(ckpt) and ckpt["iteration"] == 3 and ckpt["input_dim"] == 32
    vae = load_semantic_vae(str(final))
    tokens = FeatureFile(*feature_files(str(tmp_path / "feat" / "val"), "dinov2_vitb14_reg", None)).tokens([0, 3])
    z, kl = vae.encode(tokens, noise=torch.zeros(2, 256, 4))
    assert torch.equal(z, vae.mode(tokens)) and z.shape == (2, 256, 4) and kl.shape == (2,)
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/total" in r] == [1, 2, 3]
    assert [r["step"] for r in rows if "eval/mse" in r] == [0, 3]
    assert (out / "loss_curve.png").stat().st_size > 0 and (out / "config.yaml").is_file()
    with pytest.raises(SystemExit, match="training.log.log_dir'/checkpoints"):
        train_semvae.main([TINY, "training.log.log_dir=/elsewhere"])
    with pytest.raises(SystemExit, match="pre-extracted features not found"):
        train_semvae.main([TINY, f"data.feature_dir={tmp_path / 'nowhere'}", "data.max_samples=3"])


def test_a_non_finite_loss_stops_before_saving(features, tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTNINGDIT_FAULT", "nan@1")           # the loss of update 1 becomes NaN
    with pytest.raises(FloatingPointError, match="non-finite training loss at step 2"):
        T.train(_cfg(features, tmp_path / "nan"))
    assert not list((tmp_path / "nan" / "checkpoints").glob("*.pt"))
    monkeypatch.setenv("LIGHTNINGDIT_FAULT", "nan@0")
    with pytest.raises(FloatingPointError, match="before step 2"):   # no log line in between: the save checks
        T.train(_cfg(features, tmp_path / "nan2", **{"training.log.log_every": 4}))
    assert not list((tmp_path / "nan2" / "checkpoints").glob("*.pt"))
