"""Where a trainer's numbers go: `metrics.jsonl`, the experiment trackers (`report_to`:
TensorBoard, Weights & Biases, both or none) and curve PNGs in the run directory (the
human-readable lines go to `log.txt` through `logging`).

wandb is optional (not in requirements.txt): asking for it without the package is a one-line
error on every rank before training starts; `WANDB_MODE=offline` works as wandb documents. The
wandb run id is kept in `{run_dir}/wandb_id.txt` so a resumed run continues the same wandb run.

One sink serves both trainers, so their runs are read the same way. On resume the JSONL keeps
only rows up to the resumed step (rows a killed run logged after its last checkpoint would
otherwise appear twice) and TensorBoard purges the same range. Only the main process writes.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import secrets
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from configs.schema import REPORT_TO
from utils.fileio import append_text, atomic_write, atomic_write_text, refuse_symlink

logger = logging.getLogger(__name__)


def trackers(report_to: str) -> Tuple[bool, bool]:
    """(use TensorBoard, use wandb) for a `report_to` value; a clear error when wandb is asked
    for but not installed."""
    if report_to not in REPORT_TO:
        raise ValueError(f"report_to {report_to!r}: expected one of {REPORT_TO}")
    use_wandb = report_to in ("wandb", "all")
    if use_wandb and importlib.util.find_spec("wandb") is None:
        raise ValueError(f"report_to={report_to} needs the wandb package: pip install wandb "
                         "(or report_to=tensorboard)")
    return report_to in ("tensorboard", "all"), use_wandb


class MetricsSink:
    """Append rows `{"step": s, key: value, ...}`; plot `curves` = [(key, label), ...] on demand.

    `tags` renames keys for TensorBoard (e.g. "loss" -> "Loss/train"); other numeric keys are
    logged under their own name. `history` seeds the rows when the run has no JSONL yet (runs
    from before the JSONL existed keep their curve)."""

    def __init__(self, run_dir: Path, enabled: bool, start_step: int = 0, config: Optional[dict] = None,
                 curves: Sequence[Tuple[str, str]] = (), tags: Mapping[str, str] = (),
                 history: Optional[List[dict]] = None, log_scale: bool = True,
                 report_to: str = "tensorboard"):
        self.run_dir, self.enabled = Path(run_dir), enabled
        self.curves, self.tags, self.log_scale = list(curves), dict(tags), log_scale
        self.path = self.run_dir / "metrics.jsonl"
        self.history: List[dict] = []
        self.writer = self.wandb = None
        use_tensorboard, use_wandb = trackers(report_to)  # every rank: fail together, early
        if not enabled:
            return
        refuse_symlink(self.path)
        if self.path.is_file():
            rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
            self.history = [r for r in rows if r.get("step", 0) <= start_step]
            if len(self.history) != len(rows):
                atomic_write_text("".join(json.dumps(r) + "\n" for r in self.history), self.path)
        elif history:
            self.history = [dict(r) for r in history if r.get("step", 0) <= start_step]
        if use_wandb:
            self.wandb = _start_wandb(self.run_dir, config)
        if not use_tensorboard:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.info("tensorboard not installed: no TensorBoard logs")
            return
        self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=start_step or None)
        if start_step == 0 and config is not None:
            self.writer.add_text("training configs", json.dumps(config, indent=2), 0)

    def log(self, row: Dict[str, Any]) -> None:
        """Record one row (JSONL line + TensorBoard scalars)."""
        if not self.enabled:
            return
        self.history.append(row)
        append_text(self.path, json.dumps(row) + "\n")
        scalars = {self.tags.get(k, k): v for k, v in row.items() if k not in ("step", "epoch")
                   and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.writer is not None:
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, row["step"])
            self.writer.flush()
        if self.wandb is not None:
            self.wandb.log(scalars, step=row["step"])

    def log_image(self, tag: str, image, step: int) -> None:
        """Send a uint8 HWC image (e.g. a sample grid) to the trackers."""
        if not self.enabled:
            return
        if self.writer is not None:
            self.writer.add_image(tag, image, step, dataformats="HWC")
            self.writer.flush()
        if self.wandb is not None:
            import wandb
            self.wandb.log({tag: wandb.Image(image)}, step=step)

    def plot(self, name: str = "loss_curve.png", curves: Optional[Sequence[Tuple[str, str]]] = None,
             ylabel: str = "loss", log_scale: Optional[bool] = None) -> None:
        """Write `curves` (default `self.curves`) as a PNG in the run directory, atomically."""
        curves = self.curves if curves is None else list(curves)
        log_scale = self.log_scale if log_scale is None else log_scale
        if not self.enabled or not curves:
            return
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        drawn = 0
        for key, label in curves:
            points = [(r["step"], r[key]) for r in self.history if key in r and math.isfinite(r[key])]
            if points:
                ax.plot(*zip(*points), "o-" if len(points) < 20 else "-", label=label)
                drawn += 1
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        if log_scale and drawn:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend()
        fig.tight_layout()
        atomic_write(self.run_dir / name, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
        plt.close(fig)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()


def _start_wandb(run_dir: Path, config: Optional[dict]):
    """Start (or, on resume, continue) the wandb run of `run_dir`."""
    import wandb

    id_file = run_dir / "wandb_id.txt"
    run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(8)
    atomic_write_text(run_id + "\n", id_file)
    return wandb.init(project=os.environ.get("WANDB_PROJECT", "lightningdit"), name=run_dir.name,
                      id=run_id, resume="allow", dir=str(run_dir), config=config)
