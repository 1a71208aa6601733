"""Helpers of the reliability suite: run an entry point on bad input, return its one-line error,
and fingerprint the files around it (a rejected input must change nothing on disk)."""
import hashlib
from pathlib import Path
from typing import Callable, Dict, Sequence

import pytest
import torch

from datasets.tiny_latents import write_tiny_latents

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = str(REPO / "configs/tiny/lightningdit_tiny.yaml")
TOKENIZER_CONFIG = str(REPO / "configs/tokenizer/tiny_cpu.yaml")


def snapshot(root: Path) -> Dict[str, str]:
    """Relative path -> sha256 of every file (and '<dir>' for every directory) under `root`."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def error_of(main: Callable, argv: Sequence[str]) -> str:
    """Run `main(argv)`, expecting the one-line `SystemExit("error: ...")` of a rejected input."""
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    message = str(info.value.code)
    assert message.startswith("error: "), message
    assert "\n" not in message, message
    return message


@pytest.fixture(scope="session")
def latents(tmp_path_factory) -> Path:
    """A valid tiny latent directory (64 latents of (4, 4, 4), 10 classes, 2 shards + stats)."""
    root = tmp_path_factory.mktemp("reliability")
    return write_tiny_latents(str(root / "latents"), num_items=64, shape=(4, 4, 4), num_classes=10)


@pytest.fixture
def workdir(tmp_path, latents) -> Path:
    """tmp dir holding a copy of the latents and an earlier run's output (to prove it unchanged)."""
    import shutil
    shutil.copytree(latents, tmp_path / "latents")
    run = tmp_path / "out" / "lightningdit_tiny" / "checkpoints"
    run.mkdir(parents=True)
    torch.save({"step": 7}, run / "0000007.pt")
    (tmp_path / "out" / "lightningdit_tiny" / "log.txt").write_text("earlier run\n")
    return tmp_path
