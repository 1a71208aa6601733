"""The main job connects end to end: run_demo.sh at tiny sizes (DEMO_SMOKE=1), ~2.5 minutes.

Every stage is a real script (toy data -> tokenizer training -> 2-process extraction ->
LightningDiT training -> guided grid -> class-balanced sampling -> evaluation -> summary), so a
broken interface anywhere in the pipeline fails here.
"""
import json
import os
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def test_smoke_demo_writes_complete_summary(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, DEMO_SMOKE="1", DEMO_OUT=str(out))
    proc = subprocess.run(["bash", str(REPO / "run_demo.sh")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) >= {"data", "tokenizer", "extraction", "lightningdit", "classifier_val_accuracy",
                            "samples", "fid_available", "files", "stage_seconds", "seconds_total"}
    assert summary["data"] == {"train_images": 240, "val_images": 60}
    assert summary["extraction"] == {"images": 240, "world_size": 2}  # really 2 processes
    tok = summary["tokenizer"]
    assert tok["steps"] == 40 and tok["psnr"] > 5
    assert 0.0 <= tok["lr_last"] < 1e-5          # the cosine decay to 0 ran (lr 1e-3 until step 20)
    edges = tok["edge_blue_excess"]              # tools/analyse_reconstruction.py ran on the val images
    assert set(edges) == {"left", "right", "top", "bottom"} and all(np.isfinite(v) for v in edges.values())
    assert summary["lightningdit"]["steps"] == 120
    assert summary["lightningdit"]["loss_last"] < summary["lightningdit"]["loss_first"]
    assert [row["cfg_scale"] for row in summary["samples"]] == [1.0, 3.0]
    for row in summary["samples"]:
        assert row["classifier_samples"] == 40 and 0.0 <= row["classifier_accuracy"] <= 1.0
        labels = np.load(out / "dit" / row["batch"])["arr_1"]
        assert np.bincount(labels, minlength=10).tolist() == [4] * 10  # class-balanced
    assert set(summary["stage_seconds"]) == {"data", "tokenizer", "extraction", "lightningdit", "grid",
                                             "sampling", "evaluation"}
    assert summary["fid_available"] is False  # no Inception weights in CI
    assert Image.open(out / "demo_samples.png").size == (4 * 32, 2 * 32)
    for key in ("curves", "samples_by_class"):
        assert Image.open(summary["files"][key]).size[0] > 300
    assert "classifier accuracy" in proc.stdout and "wall time" in proc.stdout and "blue excess" in proc.stdout
