"""SFD sampling end to end on CPU (conftest.py: SFD's released layout with tiny networks): SFD's
YAMLs draw FID batches the ADM evaluator accepts, with AutoGuidance and dopri5 and with the
phase-aligned grid sampler; the noise, the labels and the decoding follow the rules written out
here; protocol.json binds both networks and both stats files, so a resume with a changed guide
or changed semantic stats is refused; SFD's demo grid; SFD's environment variables."""
import copy
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import inference
from configs.schema import load_config
from datasets.order import STREAM_DEMO, sample_labels, sample_noise
from models.kernels import select_kernels
from sampling.pipeline import Decoder, LatentSampler
from utils.digest import module_digest, tensors_digest

from sfd_release import REPO, SFD_CONFIGS, TINY

XL = SFD_CONFIGS / "lightningdit_xl"
AG = str(XL / "inference_4m_autoguidance.yaml")
RUN = TINY + ["sample.fid_num=4", "sample.per_proc_batch_size=4", "--vae-random-init"]


def pngs(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


@pytest.fixture(scope="module")
def ag_run(released):
    """SFD's XL 800-epoch AutoGuidance run as its README launches it (w 1.5, guide at 70K)."""
    cwd = os.getcwd()
    os.chdir(released["root"])
    try:
        folder = inference.main([AG, *RUN, "sample.cfg_scale=1.5", "sample.autoguidance_ckpt_iter=70"])
    finally:
        os.chdir(cwd)
    return released["root"] / folder


def test_autoguidance_dopri5_run_writes_an_fid_batch_the_evaluator_accepts(in_released, ag_run, tmp_path):
    assert ag_run.parent == in_released["root"] / "outputs/train/sfd_xl"
    assert ag_run.name == "lightningdit-xl-1-ckpt-4000000-dopri5-250-interval0.00-cfg1.50-shift0.00-ag0070000-balanced"
    images = pngs(ag_run)
    assert sorted(images) == [f"{i:06d}.png" for i in range(4)] and len(set(images.values())) == 4
    npz = np.load(f"{ag_run}.npz")
    assert npz["arr_0"].shape == (4, 64, 64, 3) and npz["arr_0"].dtype == np.uint8
    assert np.array_equal(npz["arr_1"], sample_labels(range(4), 1000, 0, "balanced", 4).numpy())
    from tools.adm_evaluator import main as adm
    out = adm([f"{ag_run}.npz", f"{ag_run}.npz", "--random-init", "--device", "cpu", "--batch-size", "4",
               "--output", str(tmp_path / "eval.json"), "--fid-method", "eigh"])
    assert out["num_sample_images"] == 4 and abs(out["fid"]) < 1e-3  # a batch against itself


def test_protocol_binds_both_networks_and_both_stats_files(in_released, ag_run):
    proto = json.loads((ag_run / "protocol.json").read_text())
    nets, data = in_released["nets"], in_released["latents"]
    assert proto["ckpt_sha256"] == module_digest(nets["main"]) and proto["guide_sha256"] == module_digest(nets["guide"])
    for key, name in (("latent_stats_sha256", "latents_stats.pt"), ("latent_sv_stats_sha256", "latents_sv_stats.pt")):
        stats = torch.load(data / name, weights_only=True)
        assert proto[key] == tensors_digest({"mean": stats["mean"], "std": stats["std"]})
    assert proto["guide_config"] == str(REPO / "configs/sfd/autoguidance_b/inference.yaml")
    assert proto["guide_ckpt_path"].endswith("outputs/train/sfd_autoguidance_b/checkpoints/0070000.pt")
    assert (proto["semantic_chans"], proto["semfirst_delta_t"], proto["autoguidance"], proto["label_mode"]) == \
        (16, 0.3, True, "balanced")
    assert proto["latent_sv_stats"].endswith("imagenet_train_256/latents_sv_stats.pt")


def test_the_images_follow_the_per_image_rule_and_decode_the_texture_channels(in_released, ag_run):
    """Image i = decode(texture part of the sampler's output from sample_noise(i) (48 channels) and
    balanced label i), de-normalised with latents_stats.pt, computed here step by step. The batch
    is the run's: dopri5 picks one step size for the whole batch, so an image depends (within the
    tolerance) on its batch mates."""
    cfg = load_config(AG, TINY + ["sample.cfg_scale=1.5", "sample.autoguidance_ckpt_iter=70"])
    nets = in_released["nets"]
    main, guide = (select_kernels(copy.deepcopy(nets[k]).eval()) for k in ("main", "guide"))  # as loaded
    z = sample_noise(range(4), (48, 4, 4), 0)
    y = sample_labels(range(4), 1000, 0, "balanced", 4)
    with torch.no_grad():
        x = LatentSampler(cfg, main, guide=guide)(z, y)
    stats = torch.load(in_released["latents"] / "latents_stats.pt", weights_only=True)
    texture = x[:, :32] * stats["std"] / 1.0 + stats["mean"]
    decoder = Decoder(cfg, torch.device("cpu"), random_init=True)
    expected = decoder.vae.decode_to_images(texture)
    for i in range(4):
        assert np.array_equal(np.asarray(Image.open(ag_run / f"{i:06d}.png")), expected[i])
    # the semantic channels are dropped: changing them changes no pixel
    other = x.clone()
    other[:, 32:] = torch.randn_like(other[:, 32:])
    assert np.array_equal(decoder(other), expected)


def test_resume_refuses_a_changed_guide_or_changed_semantic_stats(in_released, ag_run, tmp_path):
    root = in_released["root"]
    args = [AG, *RUN, "sample.cfg_scale=1.5", "sample.autoguidance_ckpt_iter=70"]
    before = pngs(ag_run)
    (ag_run / "000003.png").unlink()
    assert inference.main(args) == Path("outputs/train/sfd_xl") / ag_run.name and pngs(ag_run) == before  # resumed
    # the same guide file name with other weights
    guide_cfg = load_config(str(SFD_CONFIGS / "autoguidance_b/inference.yaml"))
    data = tmp_path / "latents"
    shutil.copytree(in_released["latents"], data)
    stats = torch.load(data / "latents_sv_stats.pt", weights_only=True)
    torch.save({"mean": stats["mean"] + 0.01, "std": stats["std"]}, data / "latents_sv_stats.pt")
    (ag_run / "000003.png").unlink()
    with pytest.raises(ValueError, match=r"changed since these samples were made: semantic latent stats "
                                         r"\(.*latents_sv_stats.pt: sha256"):
        inference.main(args + [f"data.data_path={data}"])
    link = root / guide_cfg.ckpt_path
    target = os.readlink(link) if link.is_symlink() else None
    guide = in_released["nets"]["early"]   # other weights under the same name
    link.unlink()
    torch.save({"ema": guide.state_dict()}, link)
    try:
        with pytest.raises(ValueError, match=r"changed since these samples were made: guide weights "
                                             r"\(.*0070000.pt: sha256"):
            inference.main(args)
    finally:
        link.unlink()
        os.symlink(target, link) if target else torch.save({"ema": in_released["nets"]["guide"].state_dict()}, link)
    inference.main(args)
    assert pngs(ag_run) == before


def test_the_phase_aligned_grid_sampler_runs_the_same_yaml(in_released, ag_run):
    folder = inference.main([AG, *RUN, "sample.cfg_scale=1.5", "sample.autoguidance_ckpt_iter=70",
                             "sample.sampling_method=heun2_phase", "sample.num_sampling_steps=9"])
    assert folder.name == "lightningdit-xl-1-ckpt-4000000-heun2_phase-9-interval0.00-cfg1.50-shift0.00-ag0070000-balanced"
    grid, dopri = np.load(f"{folder}.npz")["arr_0"], np.load(f"{ag_run}.npz")["arr_0"]
    assert grid.shape == dopri.shape
    # the same samples up to the integration error (a random network: its field is far rougher than a trained one's)
    assert np.abs(grid.astype(float) - dopri.astype(float)).mean() < 12


def test_sfd_demo_grid(in_released, tmp_path, capsys):
    """SFD's demo: its 8 classes, w 1.5 on both parts with the YAML's guide, no interval, no shift,
    whatever the YAML's scales; a 2 x 4 grid of the texture decodes, computed here from the demo's
    noise stream with those settings written out."""
    out = tmp_path / "demo.png"
    inference.main([AG, *TINY, "--vae-random-init", "--demo", "--demo-out", str(out)])
    grid = np.asarray(Image.open(out))
    log = capsys.readouterr().out  # the entry script logs to stdout
    assert "SFD's overrides: cfg_scale 1.00 -> 1.5 on both parts" in log
    assert [int(line.split("class ")[1].split()[0]) for line in log.splitlines() if "demo image" in line] == \
        [106, 22, 279, 975, 388, 15, 36, 979]
    cfg = load_config(AG, TINY + ["sample.cfg_scale=1.5"])
    nets = in_released["nets"]
    main, guide = (select_kernels(copy.deepcopy(nets[k]).eval()) for k in ("main", "guide"))
    labels = torch.tensor([106, 22, 279, 975, 388, 15, 36, 979])
    z = sample_noise(range(8), (48, 4, 4), 0, stream=STREAM_DEMO)
    with torch.no_grad():
        x = LatentSampler(cfg, main, guide=guide, interval=False)(z, labels)
    images = Decoder(cfg, torch.device("cpu"), random_init=True)(x)
    assert np.array_equal(grid, inference.image_grid(images, 2, 4)) and grid.shape == (128, 256, 3)
    # the YAML's (or the command line's) scales do not change SFD's demo
    again = tmp_path / "again.png"
    inference.main([AG, *TINY, "sample.cfg_scale=4.0", "sample.cfg_scale_sem=3.0", "--vae-random-init", "--demo",
                    "--demo-out", str(again)])
    assert np.array_equal(np.asarray(Image.open(again)), grid)
    # ... unless asked for: --demo-config-sampling takes them
    mine = tmp_path / "mine.png"
    inference.main([AG, *TINY, "sample.cfg_scale=4.0", "--vae-random-init", "--demo", "--demo-config-sampling",
                    "--demo-out", str(mine)])
    assert not np.array_equal(np.asarray(Image.open(mine)), grid)


def test_guide_equal_to_the_main_network_gives_the_unguided_images(in_released, ag_run):
    """AutoGuidance with w: main + w (main - main) = main, bit for bit on every channel. The path
    overrides (ckpt_path, data.data_path, vae.config_path in the authors' spelling) name the same
    files, so they give the same images."""
    plain = inference.main([str(XL / "inference_4m.yaml"), *RUN])
    same = inference.main([AG, *RUN, "sample.cfg_scale=1.5", "sample.autoguidance_config=configs/sfd/lightningdit_xl/inference_4m.yaml",
                           "train.exp_name=same"])
    assert pngs(same) == pngs(plain) != pngs(ag_run)
    root = in_released["root"]
    moved = inference.main([str(XL / "inference_4m.yaml"), *RUN, f"ckpt_path={root}/outputs/train/sfd_xl/checkpoints/4000000.pt",
                            f"data.data_path={in_released['latents']}", "vae.config_path=tokenizer/configs/sdvae_f16d32.yaml",
                            "train.exp_name=moved"])
    assert pngs(moved) == pngs(plain)


def launch(script: str, args, env=None, cwd=None):
    full = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.run(["bash", str(REPO / script), *args], cwd=cwd, env=full, capture_output=True, text=True,
                          timeout=600)


def test_run_inference_sh_takes_sfds_variables(in_released, ag_run):
    """SFD's README command: CFG_SCALE, AUTOGUIDANCE_MODEL_SIZE, AUTOGUIDANCE_CKPT_ITER and FID_NUM
    set the run; key=value on the command line wins. The run resumes the in-process one's folder."""
    proc = launch("run_inference.sh", [AG, *RUN], cwd=in_released["root"],
                  env={"CFG_SCALE": "1.5", "AUTOGUIDANCE_MODEL_SIZE": "b", "AUTOGUIDANCE_CKPT_ITER": "70",
                       "FID_NUM": "50000", "MASTER_PORT": "29583"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert ("SFD variables: sample.cfg_scale=1.5 sample.fid_num=50000 sample.autoguidance_config="
            "configs/sfd/autoguidance_b/inference.yaml sample.autoguidance_ckpt_iter=70") in proc.stderr
    assert f"writing 4 images to outputs/train/sfd_xl/{ag_run.name}: 1 iterations of 4 x 1 processes (1 already done" \
        in proc.stdout   # the folder of the in-process run, complete
    bad = launch("run_inference.sh", [AG], env={"AUTOGUIDANCE_MODEL_SIZE": "s"})
    assert bad.returncode == 2 and "AUTOGUIDANCE_MODEL_SIZE=s: SFD has one guide size, 'b'" in bad.stderr


@pytest.mark.slow  # two launched processes
def test_two_processes_write_the_images_of_one(in_released, ag_run):
    """dopri5's step sizes depend on the batch, so FID sampling with it draws the same batches on
    any number of processes (sampling/loop.py: batch_plan): the images of one process, bit for bit."""
    proc = launch("run_inference.sh", [AG, *RUN, "sample.per_proc_batch_size=2", "train.exp_name=two"],
                  cwd=in_released["root"], env={"GPUS_PER_NODE": "2", "CFG_SCALE": "1.5",
                                                "AUTOGUIDANCE_CKPT_ITER": "70", "MASTER_PORT": "29584"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    one = inference.main([AG, *RUN, "sample.per_proc_batch_size=2", "sample.cfg_scale=1.5",
                          "sample.autoguidance_ckpt_iter=70", "train.exp_name=one"])
    two = in_released["root"] / "outputs/train/two" / one.name
    assert json.loads((two / "protocol.json").read_text())["world_size"] == 2
    assert pngs(two) == pngs(one) and len(pngs(one)) == 4
