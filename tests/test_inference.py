"""inference.py (sampling/) on CPU with a tiny random LightningDiT and a random tiny tokenizer: exactly N
PNGs and a matching ADM .npz, protocol JSON, resume to the same set, demo grid; label and noise
bookkeeping (datasets/order.py, inference.py)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import inference
from configs.schema import load_config
from datasets.order import sample_labels, sample_noise, work_plan
from inference import DEMO_LABELS
from sampling.loop import precision_context
from sampling.networks import load_model
from sampling.pipeline import LatentSampler
from sampling.protocol import folder_name, settings
from datasets.tiny_latents import write_tiny_latents
from models.build import build_model

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs/tiny/lightningdit_tiny.yaml")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("inference")
    data = write_tiny_latents(str(root / "latents"), num_items=32, shape=(4, 4, 4), num_classes=10)
    cfg = load_config(CONFIG)
    torch.manual_seed(0)
    model = build_model(cfg, training=False)
    with torch.no_grad():  # a random, non-trivial network (the zero-init output layer would give 0)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ckpt = root / "0000100.pt"
    torch.save({"ema": model.state_dict()}, ckpt)
    args = [CONFIG, f"data.data_path={data}", f"ckpt_path={ckpt}", f"train.output_dir={root / 'out'}",
            "sample.fid_num=10", "sample.per_proc_batch_size=4", "sample.num_sampling_steps=12",
            "--vae-random-init"]
    yield {"root": root, "args": args}
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def fid_run(setup):
    folder = inference.main(setup["args"])
    return folder, {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def test_writes_exactly_n_images_and_the_npz(setup, fid_run):
    folder, pngs = fid_run
    assert folder.name == "lightningdit-b-1-ckpt-0000100-euler-12-interval0.10-cfg4.00-shift0.30"
    assert sorted(pngs) == [f"{i:06d}.png" for i in range(10)]
    npz = np.load(f"{folder}.npz")
    assert npz["arr_0"].shape == (10, 16, 16, 3) and npz["arr_0"].dtype == np.uint8
    for i in range(10):
        assert np.array_equal(npz["arr_0"][i], np.asarray(Image.open(folder / f"{i:06d}.png")))
    assert np.array_equal(npz["arr_1"], sample_labels(range(10), 10, 0).numpy())
    assert len({pngs[k] for k in pngs}) == 10  # different noise per image


def test_protocol_json(fid_run):
    folder, _ = fid_run
    proto = json.loads((folder / "protocol.json").read_text())
    assert proto["steps"] == 12 and proto["sampler"] == "euler" and proto["mode"] == "ODE"
    assert proto["cfg_scale"] == 4.0 and proto["cfg_interval_start"] == 0.1 and proto["timestep_shift"] == 0.3
    assert proto["cfg_channels"] == "3" and proto["label_mode"] == "uniform" and proto["seed"] == 0
    assert proto["world_size"] == 1 and proto["fid_num"] == 10 and proto["ckpt_path"].endswith("0000100.pt")


def test_resume_after_interruption_gives_the_same_set(setup, fid_run):
    folder, pngs = fid_run
    for i in (5, 6, 9):  # as if killed mid-run: last iterations missing, no npz yet
        (folder / f"{i:06d}.png").unlink()
    Path(f"{folder}.npz").unlink()
    inference.main(setup["args"])
    assert {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))} == pngs
    assert np.load(f"{folder}.npz")["arr_0"].shape[0] == 10
    # a different protocol is refused instead of mixing samples
    proto = json.loads((folder / "protocol.json").read_text())
    (folder / "protocol.json").write_text(json.dumps({**proto, "label_mode": "balanced"}))
    with pytest.raises(ValueError, match="different settings"):
        inference.main(setup["args"])
    (folder / "protocol.json").write_text(json.dumps(proto))


def test_demo_mode_writes_the_grid(setup, capsys):
    out = setup["root"] / "demo" / "grid.png"
    inference.main(setup["args"] + ["--demo", "--demo-out", str(out)])
    assert Image.open(out).size == (4 * 16, 2 * 16)
    log = capsys.readouterr().out  # the entry script logs to stdout
    assert "cfg_scale 4.00 -> 9.0" in log and "timestep_shift 0.30 -> 0.0" in log
    assert "demo classes taken modulo num_classes -> [5, 3, 7, 7, 8, 8, 9, 9]" in log


def test_skip_uncond_and_bf16_options(setup):
    cfg = load_config(CONFIG, [a for a in setup["args"][1:] if "=" in a])
    model = load_model(cfg, torch.device("cpu"))
    z = sample_noise(range(4), (4, 4, 4), 0)
    y = sample_labels(range(4), 10, 0)
    ref = LatentSampler(cfg, model, skip_uncond=False)(z, y)
    fast_sampler = LatentSampler(cfg, model, skip_uncond=True)
    fast = fast_sampler(z, y)
    assert fast_sampler.num_cond_only > 0  # some evaluations skipped the unconditional half
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4)
    cfg16 = load_config(CONFIG, [a for a in setup["args"][1:] if "=" in a] + ["sample.precision=bf16"])
    with precision_context(cfg16, torch.device("cpu")):
        low = LatentSampler(cfg16, model)(z, y)
    assert low.dtype == torch.float32 or low.dtype == torch.bfloat16
    assert (low.float() - ref).abs().mean() < 0.1 * ref.abs().mean()
    assert folder_name(settings(cfg16)).endswith("-bf16")


def test_labels_and_noise_depend_only_on_seed_and_index():
    full = sample_labels(range(20), 1000, seed=3)
    assert torch.equal(sample_labels([7, 8, 19], 1000, seed=3), full[[7, 8, 19]])
    assert not torch.equal(sample_labels(range(20), 1000, seed=4), full)
    z = sample_noise(range(6), (2, 3, 3), seed=3)
    assert torch.equal(sample_noise([4, 5], (2, 3, 3), seed=3), z[4:])


def test_class_balanced_labels():
    labels = sample_labels(range(50_000), 1000, seed=0, label_mode="balanced", total=50_000)
    assert torch.equal(torch.bincount(labels, minlength=1000), torch.full((1000,), 50))
    counts = torch.bincount(sample_labels(range(1234), 100, 0, "balanced", total=1234), minlength=100)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 1234
    sub = sample_labels([3, 999], 1000, 0, "balanced", total=50_000)
    assert torch.equal(sub, labels[[3, 999]])


def test_work_plan_follows_reference_index_order():
    n, w, total = 4, 3, 30
    plans = [work_plan(total, n, w, r) for r in range(w)]
    for r in range(w):
        assert plans[r][0] == [j * w + r for j in range(n)]  # index = k*n*w + j*w + r
    written = sorted(i for plan in plans for ids in plan for i in ids)
    assert written == list(range(total))  # exactly total, no rounding up


def test_folder_name_of_released_config():
    cfg = load_config(str(REPO / "configs/reproductions/lightningdit_xl_vavae_f16d32_800ep_cfg.yaml"),
                      ["ckpt_path=/ckpt/lightningdit-xl-imagenet256-800ep.pt"])
    assert folder_name(settings(cfg)) == ("lightningdit-xl-1-ckpt-lightningdit-xl-imagenet256-800ep-euler-250"
                                       "-interval0.12-cfg6.70-shift0.30")
    assert DEMO_LABELS == (975, 3, 207, 387, 388, 88, 979, 279)


@pytest.mark.slow  # two launched processes (about 20 s of CPU)
def test_two_processes_write_the_same_images(setup, fid_run):
    """World-size invariance of the sampling loop: 2 processes (gloo, CPU) split the indices
    differently but write the images of one process."""
    import os
    import subprocess
    import sys
    folder, pngs = fid_run
    launcher = ["bash", "-c", f'source "{REPO}/tools/launch.sh"; launch "$@"', "launch", str(REPO / "inference.py")]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), GPUS_PER_NODE="2", MASTER_PORT="29571")
    proc = subprocess.run(launcher + setup["args"] + ["train.exp_name=two"], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    two = setup["root"] / "out" / "two" / folder.name
    assert json.loads((two / "protocol.json").read_text())["world_size"] == 2
    for name in pngs:
        a, b = (np.asarray(Image.open(f / name)).astype(int) for f in (folder, two))
        assert np.abs(a - b).max() <= 1, name
    assert np.array_equal(np.load(f"{two}.npz")["arr_1"], np.load(f"{folder}.npz")["arr_1"])


def test_fid_flag_checks_its_files_before_sampling(setup, tmp_path, monkeypatch):
    """--fid: a missing reference batch or Inception weights stop the run at the door, before any
    image is sampled or folder created (not after 50k samples)."""
    monkeypatch.delenv("ADM_INCEPTION_WEIGHTS", raising=False)
    out = tmp_path / "out"
    base = [a for a in setup["args"] if not a.startswith("train.output_dir=")] + [f"train.output_dir={out}", "--fid"]
    with pytest.raises(SystemExit, match="--fid needs data.fid_reference_file"):
        inference.main(base)
    with pytest.raises(SystemExit, match="reference batch not found: .*nope.npz"):
        inference.main(base + [f"data.fid_reference_file={tmp_path / 'nope.npz'}"])
    ref = tmp_path / "ref.npz"
    np.savez(ref, arr_0=np.zeros((1, 16, 16, 3), np.uint8))
    with pytest.raises(SystemExit, match="ADM_INCEPTION_WEIGHTS"):
        inference.main(base + [f"data.fid_reference_file={ref}"])
    assert not out.exists()
