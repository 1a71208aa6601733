"""SFD's whole chain on CPU at a tiny size, each step the repository's own command on the previous
step's files (the acceptance of the issue "SFD, part 2"):

    images -> DINOv2-S/14-reg tokens (tools/extract_semantic_features.py)
           -> Semantic VAE (train_semvae.py, configs/tokenizer/semvae_train/tiny_cpu.yaml)
           -> SFD's shards (run_extraction.sh in SFD's form: CONFIG semvae ENCODER SIZE)
           -> SFD training with REPA (run_train.sh configs/sfd/lightningdit_xl/train.yaml) and its
              guide (configs/sfd/autoguidance_b/train.yaml)
           -> AutoGuidance sampling (inference.py, configs/sfd/lightningdit_xl/inference_4m_autoguidance.yaml)
           -> npz -> metrics (tools/adm_evaluator.py).

Tiny: 16 px images of 3 classes; the f2 VA-VAE of tests/datasets/tiny_vavae.yaml (random weights
saved to a file, 8 x 8 x 4 latents); a one-block DINOv2-S/14-reg (random weights saved to a file:
both the features and the extraction load them); the Semantic VAE of tiny_cpu.yaml (4 channels);
SFD's networks at width 32, depth 2. Only sizes and paths are overridden in SFD's YAMLs.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
ENCODER = "dinov2_vits14_reg"
KWARGS = json.dumps({"depth": 1})
SIZE = ["model.hidden_size=32", "model.depth=2", "model.num_heads=2", "data.image_size=16",
        "vae.downsample_ratio=2", "model.in_chans=8", "model.semantic_chans=4",
        f"model.repa_dino_version={ENCODER}", "data.num_workers=0"]


def run(cmd, **env):
    full = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), PRECISION="no", GPUS_PER_NODE="1", **env)
    res = subprocess.run(cmd, cwd=REPO, env=full, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, " ".join(map(str, cmd[:3])) + "\n" + res.stdout[-3000:] + res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("sfd_chain")
    rng = np.random.default_rng(0)
    for c in range(3):
        (root / "images" / f"class{c}").mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / "images" / f"class{c}" / f"{i}.png")
    torch.manual_seed(0)
    from safetensors.torch import save_file

    from tokenizer.foundation import FoundationModel
    from tokenizer.vavae import VA_VAE
    encoder = FoundationModel(ENCODER, model_kwargs=json.loads(KWARGS), random_init=True)
    save_file(encoder.model.state_dict(), str(root / "dinov2_tiny.safetensors"))
    vae = VA_VAE(str(REPO / "tests/datasets/tiny_vavae.yaml"), img_size=16, fp16=False, device="cpu", random_init=True)
    torch.save({"state_dict": vae.model.state_dict()}, root / "tiny_vavae.ckpt")
    return {"root": root}


def test_features_semantic_vae_extraction_training_autoguidance_metrics(chain):
    root = chain["root"]
    # 1. the encoder's tokens of the images (SFD's feature file)
    run([sys.executable, "tools/extract_semantic_features.py", "--data_root", str(root / "images"),
         "--output_root", str(root / "features"), "--model_name", ENCODER, "--weights",
         str(root / "dinov2_tiny.safetensors"), "--model_kwargs", KWARGS, "--batch_size", "4", "--num_workers", "0",
         "--device", "cpu"])
    # 2. the Semantic VAE on them
    semvae_root = root / "semvae"
    run(["bash", "run_train_semvae.sh", "configs/tokenizer/semvae_train/tiny_cpu.yaml",
         f"variables.output_root={semvae_root}", f"variables.model_name={ENCODER}",
         f"data.feature_dir={root / 'features'}", "training.evaluation.feature_dir=", "training.total_iterations=6",
         "training.scheduler.warmup_steps=2", "training.scheduler.constant_steps=2",
         "training.checkpointing.save_every=6", "training.log.log_every=3", "training.log.report_to=none"])
    final = semvae_root / "checkpoints" / "semantic_ae_final.pt"
    assert final.is_file()
    # 3. SFD's shards, SFD's command line (tokenizer YAML with a semvae: block in SFD's path layout)
    tokenizer = OmegaConf.load(REPO / "tests/datasets/tiny_vavae.yaml")
    tokenizer.ckpt_path = str(root / "tiny_vavae.ckpt")
    tokenizer.semvae = {"dino_model_name": ENCODER, "semvae_config": "tokenizer/configs/semvae_train/tiny_cpu.yaml",
                        "semvae_ckpt_path": str(final), "dino_weights": str(root / "dinov2_tiny.safetensors")}
    OmegaConf.save(tokenizer, root / "tokenizer.yaml")
    latents = root / "latents"
    run(["bash", "run_extraction.sh", str(root / "tokenizer.yaml"), "semvae", ENCODER, "16",
         "--data-path", str(root / "images"), "--output-path", str(latents), "--encoder-model-kwargs", KWARGS,
         "--batch-size", "4", "--num-workers", "0", "--shard-size", "8"])
    assert (latents / "latents_sv_stats.pt").is_file()
    # 4. SFD training with REPA, and its AutoGuidance guide (B/1), from SFD's YAMLs
    common = [*SIZE, f"data.data_path={latents}", f"vae.config_path={root / 'tokenizer.yaml'}",
              f"train.output_dir={root / 'train'}", "train.global_batch_size=4", "train.max_steps=4",
              "train.ckpt_every=4", "train.log_every=2", "train.report_to=none"]
    run(["bash", "run_train.sh", "configs/sfd/lightningdit_xl/train.yaml", *common, "train.exp_name=sfd"])
    run(["bash", "run_train.sh", "configs/sfd/autoguidance_b/train.yaml", *common, "train.exp_name=guide"])
    ckpt = torch.load(root / "train/sfd/checkpoints/0000004.pt", map_location="cpu", weights_only=True)
    assert ckpt["model"]["x_embedder.proj.weight"].shape[1] == 8 and "repa_projector.4.weight" in ckpt["model"]
    rows = [json.loads(line) for line in (root / "train/sfd/metrics.jsonl").read_text().splitlines()]
    assert all(r["repa_loss"] > 0 for r in rows if "loss" in r)
    # 5. AutoGuidance sampling -> npz (pending: the sampling side of SFD, branch `sfd`)
    # 6. metrics (pending)
