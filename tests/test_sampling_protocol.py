"""Sample folders bind to their inputs by content (sampling/protocol.py: protocol.json): a resumed FID run
whose checkpoint weights, tokenizer weights or latent stats changed stops, naming what changed,
even when the file keeps its path and byte size; the same weights in another file format resume.
Tiny random LightningDiT and tokenizer on CPU."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import inference
from configs.schema import load_config
from sampling.protocol import ADDED, check_protocol, folder_name, settings
from datasets.tiny_latents import write_tiny_latents
from models.build import build_model
from training.rundir import LOCK_NAME

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs/tiny/lightningdit_tiny.yaml")


def independent_digest(state_dict) -> str:
    """sha256 over 'name:dtype:shape;' + raw bytes, sorted by name (utils/digest.py's format)."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name]
        h.update(f"{name}:{str(t.dtype).replace('torch.', '')}:{tuple(t.shape)};".encode())
        h.update(t.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix == ".png"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("protocol")
    data = write_tiny_latents(str(root / "latents"), num_items=16, shape=(4, 4, 4), num_classes=10)
    torch.manual_seed(0)
    model = build_model(load_config(CONFIG), training=False)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ckpt = root / "0000100.pt"
    torch.save({"ema": model.state_dict()}, ckpt)
    args = [CONFIG, f"data.data_path={data}", f"ckpt_path={ckpt}", f"train.output_dir={root / 'out'}",
            "sample.fid_num=4", "sample.per_proc_batch_size=4", "sample.num_sampling_steps=4", "--vae-random-init"]
    folder = inference.main(args)
    yield {"root": root, "args": args, "ckpt": ckpt, "model": model, "folder": folder, "data": Path(data)}
    torch.set_num_threads(old)


def resume(run):
    """Delete one image (as after a kill) and run the same command again."""
    (run["folder"] / "000003.png").unlink(missing_ok=True)
    return inference.main(run["args"])


def test_protocol_records_content_hashes(run):
    proto = json.loads((run["folder"] / "protocol.json").read_text())
    assert proto["ckpt_sha256"] == independent_digest(run["model"].state_dict())
    stats = torch.load(run["data"] / "latents_stats.pt")
    assert proto["latent_stats_sha256"] == independent_digest({"mean": stats["mean"], "std": stats["std"]})
    assert len(proto["vae_sha256"]) == 64
    assert not (run["folder"] / LOCK_NAME).exists()  # released at the end


def test_same_weights_in_another_format_resume(run):
    pngs = snapshot(run["folder"])
    torch.save({"model": {f"module.{k}": v for k, v in run["model"].state_dict().items()},
                "ema": run["model"].state_dict(), "opt": {}}, run["ckpt"])  # other bytes, same EMA
    resume(run)
    assert snapshot(run["folder"]) == pngs


def test_replaced_checkpoint_of_the_same_size_is_refused(run):
    sd = {k: v.clone() for k, v in run["model"].state_dict().items()}
    sd["final_layer.linear.bias"] += 0.5  # retrained: same keys, same byte size
    torch.save({"ema": {k: v.clone() for k, v in run["model"].state_dict().items()}}, run["ckpt"])
    before_bytes = run["ckpt"].stat().st_size
    torch.save({"ema": sd}, run["ckpt"])
    assert run["ckpt"].stat().st_size == before_bytes
    pngs, npz = snapshot(run["folder"]), Path(f"{run['folder']}.npz").read_bytes()
    with pytest.raises(ValueError) as info:
        resume(run)
    msg = str(info.value)
    assert "checkpoint weights" in msg and str(run["ckpt"].resolve()) in msg and "\n" not in msg
    assert "tokenizer" not in msg and "latent stats" not in msg
    del pngs["000003.png"]  # removed by resume() before the refusal
    assert snapshot(run["folder"]) == pngs and Path(f"{run['folder']}.npz").read_bytes() == npz
    torch.save({"ema": run["model"].state_dict()}, run["ckpt"])  # restore for the next tests


def test_changed_latent_stats_are_refused(run):
    path = run["data"] / "latents_stats.pt"
    original = path.read_bytes()
    stats = torch.load(path)
    torch.save({"mean": stats["mean"] + 1.0, "std": stats["std"]}, path)
    try:
        with pytest.raises(ValueError, match=r"latent stats \(.*latents_stats.pt: sha256"):
            resume(run)
    finally:
        path.write_bytes(original)


def test_changed_tokenizer_weights_are_refused(run):
    path = run["folder"] / "protocol.json"
    new = json.loads(path.read_text())
    old = {**new, "vae_sha256": "0" * 64}
    path.write_text(json.dumps(old))
    with pytest.raises(ValueError, match="tokenizer weights"):
        check_protocol(path, new)
    path.write_text(json.dumps({k: v for k, v in new.items() if not k.endswith("_sha256")}))
    check_protocol(path, new)  # a folder from before content hashes: warned, not refused
    path.write_text(json.dumps(new))


def test_overwrite_moves_the_old_samples_aside(run):
    resume(run)  # complete set again
    pngs, folder = snapshot(run["folder"]), run["folder"]
    inference.main(run["args"] + ["train.overwrite=true"])
    aside = [p for p in folder.parent.iterdir() if p.name.startswith(folder.name + ".old-")]
    assert sorted(p.is_dir() for p in aside) == [False, True]
    assert [p.name for p in aside if not p.is_dir()][0].endswith(".npz")
    assert snapshot(next(p for p in aside if p.is_dir())) == pngs
    assert snapshot(folder) == pngs  # resampled: the same seeds give the same images
    assert np.load(f"{folder}.npz")["arr_0"].shape[0] == 4


def test_folders_written_before_later_entries_resume(run):
    """protocol.json of an older version lacks the entries added since (AutoGuidance, SFD, SDE
    settings, reverse, ...): they count as the values those folders were sampled with."""
    path = run["folder"] / "protocol.json"
    new = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in new.items() if k not in ADDED}))
    resume(run)
    path.write_text(json.dumps({k: v for k, v in new.items() if k not in ADDED} | {"reverse": True}))
    with pytest.raises(ValueError, match=r"different settings \(reverse: True -> False\)"):
        resume(run)
    path.write_text(json.dumps(new))


def test_folder_name_derives_from_the_protocol_alone():
    base = settings(load_config(CONFIG, ["ckpt_path=/c/0000100.pt"]))
    assert folder_name(base) == "lightningdit-b-1-ckpt-0000100-euler-50-interval0.10-cfg4.00-shift0.30"
    sfd = {**base, "autoguidance": True, "guide_ckpt_path": "/g/0070000.pt", "cfg_scale_sem": 2.0,
           "interval_mode": "tex", "label_mode": "balanced"}
    assert folder_name(sfd) == ("lightningdit-b-1-ckpt-0000100-euler-50-interval0.10-cfg4.00-shift0.30-cfgmodetex"
                                "-ag0070000-cfgsem2.00-cfgtex4.00-balanced")
    unguided = {**sfd, "cfg_scale": 1.0}  # guidance settings name nothing when there is no guidance
    assert folder_name(unguided) == "lightningdit-b-1-ckpt-0000100-euler-50-balanced"
    assert folder_name({**base, "reverse": True, "mode": "SDE"}).endswith("-shift0.30-sde-reverse")
    older = {k: v for k, v in base.items() if k not in ADDED}  # an older protocol.json names the same folder
    assert folder_name(older) == folder_name(base)
    balanced = settings(load_config(CONFIG, ["ckpt_path=/c/0000100.pt", "sample.balanced_sampling=true"]))
    assert balanced["label_mode"] == "balanced"  # SFD's key for the same labels
