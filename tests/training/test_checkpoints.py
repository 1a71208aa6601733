"""training/checkpoints.py: one naming scheme for both trainers, legacy tokenizer names still
found, pruning, atomic save with the `last.pt` link."""
import logging

import torch

from training.checkpoints import checkpoint_path, list_checkpoints, load_latest, prune_checkpoints, save_checkpoint


def test_names_listing_and_legacy_tokenizer_names(tmp_path, caplog):
    for step in (5, 20):
        torch.save({"step": step}, tmp_path / f"step_{step:07d}.pt")   # a tokenizer run from before
    torch.save({"step": 10}, tmp_path / "0000010.pt")
    torch.save({"step": 99}, tmp_path / "step_0000010.pt")             # same step, both names
    (tmp_path / ".0000030.pt.abc.tmp").write_bytes(b"partial")         # an interrupted atomic write
    (tmp_path / "last.pt").symlink_to("0000010.pt")
    found = list_checkpoints(tmp_path)
    assert [(s, p.name) for s, p in found] == [(5, "step_0000005.pt"), (10, "0000010.pt"), (20, "step_0000020.pt")]
    with caplog.at_level(logging.INFO):
        path, ckpt = load_latest(tmp_path)
    assert path.name == "step_0000020.pt" and ckpt["step"] == 20
    assert "legacy tokenizer checkpoint name" in caplog.text
    assert checkpoint_path(tmp_path, 20).name == "0000020.pt"


def test_save_links_last_and_prunes_both_names(tmp_path):
    torch.save({"step": 1}, tmp_path / "step_0000001.pt")
    for step in (2, 3):
        save_checkpoint({"step": step}, tmp_path, step, keep_last_n=2, link_last=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0000002.pt", "0000003.pt", "last.pt"]
    assert (tmp_path / "last.pt").resolve().name == "0000003.pt"
    assert torch.load(tmp_path / "last.pt", weights_only=True) == {"step": 3}
    assert prune_checkpoints(tmp_path, 1) == [tmp_path / "0000002.pt"]
    assert prune_checkpoints(tmp_path, None) == []
