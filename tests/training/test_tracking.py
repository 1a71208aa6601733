"""Experiment tracking (`train.report_to`): the JSONL always, TensorBoard and/or wandb on request,
a one-line error when wandb is asked for but missing, wandb's offline mode, and the same key in
the tokenizer trainer's schema."""
import importlib.util
import json

import pytest

from configs.schema import REPORT_TO
from training.metrics import MetricsSink, trackers


@pytest.fixture
def no_wandb(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))


@pytest.mark.parametrize("report_to", ["wandb", "all"])
def test_missing_wandb_is_a_one_line_error(tmp_path, no_wandb, report_to):
    with pytest.raises(ValueError, match=rf"^report_to={report_to} needs the wandb package: pip install wandb"):
        MetricsSink(tmp_path, enabled=False, report_to=report_to)  # every rank checks, not only the main one


def test_choices(no_wandb):
    assert REPORT_TO == ("tensorboard", "wandb", "all", "none")
    assert trackers("tensorboard") == (True, False) and trackers("none") == (False, False)
    with pytest.raises(ValueError, match="expected one of"):
        trackers("mlflow")


def test_report_to_none_keeps_the_jsonl_only(tmp_path):
    sink = MetricsSink(tmp_path, True, report_to="none")
    sink.log({"step": 1, "loss": 0.5})
    sink.close()
    assert not (tmp_path / "tensorboard").exists()
    assert [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == \
        [{"step": 1, "loss": 0.5}]


def test_tensorboard_gets_scalars_and_images(tmp_path):
    import numpy as np
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sink = MetricsSink(tmp_path, True, tags={"loss": "Loss/train"})
    sink.log({"step": 3, "loss": 0.25, "grad_norm": 1.5})
    sink.log_image("Eval/samples", np.zeros((8, 8, 3), np.uint8), 3)
    sink.close()
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert [(e.step, e.value) for e in events.Scalars("Loss/train")] == [(3, 0.25)]
    assert [e.value for e in events.Scalars("grad_norm")] == [1.5]
    assert "Eval/samples" in events.Tags()["images"]


def test_wandb_offline_run_resumes_the_same_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    sink = MetricsSink(tmp_path, True, config={"lr": 1e-3}, report_to="wandb")
    sink.log({"step": 1, "loss": 0.5})
    sink.close()
    run_id = (tmp_path / "wandb_id.txt").read_text().strip()
    assert any(run_id in p.name for p in (tmp_path / "wandb").iterdir())
    again = MetricsSink(tmp_path, True, start_step=1, report_to="wandb")
    assert again.wandb.id == run_id
    again.close()


def test_tokenizer_trainer_has_the_key():
    from tokenizer.train_config import load_train_config

    path = "configs/tokenizer/f16d32_vfdinov2.yaml"
    assert load_train_config(path).train.report_to == "tensorboard"
    assert load_train_config(path, ["train.report_to=none"]).train.report_to == "none"
    with pytest.raises(ValueError, match="train.report_to"):
        load_train_config(path, ["train.report_to=mlflow"])


def test_train_py_stops_before_training_without_wandb(tmp_path, no_wandb):
    import train
    from datasets.tiny_latents import write_tiny_latents

    data = write_tiny_latents(str(tmp_path / "latents"), num_items=32, shape=(4, 4, 4), num_classes=10)
    with pytest.raises(ValueError, match="^report_to=wandb needs the wandb package"):
        train.main(["configs/tiny/lightningdit_tiny.yaml", f"data.data_path={data}", "train.report_to=wandb",
                    f"train.output_dir={tmp_path / 'out'}", "train.exp_name=nowandb"])
    assert not (tmp_path / "out").exists()  # stopped before the run directory was made
