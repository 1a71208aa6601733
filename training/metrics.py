"""Where a trainer's numbers go: `metrics.jsonl`, TensorBoard and a loss-curve PNG in the run
directory (the human-readable lines go to `log.txt` through `logging`).

One sink serves both trainers, so their runs are read the same way. On resume the JSONL keeps
only rows up to the resumed step (rows a killed run logged after its last checkpoint would
otherwise appear twice) and TensorBoard purges the same range. Only the main process writes.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from utils.fileio import atomic_write, atomic_write_text

logger = logging.getLogger(__name__)


class MetricsSink:
    """Append rows `{"step": s, key: value, ...}`; plot `curves` = [(key, label), ...] on demand.

    `tags` renames keys for TensorBoard (e.g. "loss" -> "Loss/train"); other numeric keys are
    logged under their own name. `history` seeds the rows when the run has no JSONL yet (runs
    from before the JSONL existed keep their curve)."""

    def __init__(self, run_dir: Path, enabled: bool, start_step: int = 0, config: Optional[dict] = None,
                 curves: Sequence[Tuple[str, str]] = (), tags: Mapping[str, str] = (),
                 history: Optional[List[dict]] = None, log_scale: bool = True):
        self.run_dir, self.enabled = Path(run_dir), enabled
        self.curves, self.tags, self.log_scale = list(curves), dict(tags), log_scale
        self.path = self.run_dir / "metrics.jsonl"
        self.history: List[dict] = []
        self.writer = None
        if not enabled:
            return
        if self.path.is_file():
            rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
            self.history = [r for r in rows if r.get("step", 0) <= start_step]
            if len(self.history) != len(rows):
                atomic_write_text("".join(json.dumps(r) + "\n" for r in self.history), self.path)
        elif history:
            self.history = [dict(r) for r in history if r.get("step", 0) <= start_step]
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
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            step = row["step"]
            for key, value in row.items():
                if key not in ("step", "epoch") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(self.tags.get(key, key), value, step)
            self.writer.flush()

    def plot(self, name: str = "loss_curve.png") -> None:
        """Write the curves of `self.curves` as a PNG in the run directory, atomically."""
        if not self.enabled or not self.curves:
            return
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        drawn = 0
        for key, label in self.curves:
            points = [(r["step"], r[key]) for r in self.history if key in r and math.isfinite(r[key])]
            if points:
                ax.plot(*zip(*points), "o-" if len(points) < 20 else "-", label=label)
                drawn += 1
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        if self.log_scale and drawn:
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
