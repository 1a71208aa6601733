"""Latent-uniformity analysis (paper Table 6): t-SNE, Gaussian-KDE density and its spread.

Follows the reference `tools/latent_vis.py` (docs/reference_behaviour.md §7.5): take N latent vectors (one
random spatial position of N random images, normalised with the dataset's `latents_stats.pt`),
embed them in 2-D with t-SNE (random_state 42, perplexity 30, 1000 iterations), estimate the
density at every embedded point with `scipy.stats.gaussian_kde`, and summarise how even that
density is: coefficient of variation, normalised entropy and Gini coefficient. Lower CV / Gini and
higher entropy mean a more uniform latent space. Differences from the reference: the sampling is
seeded (torch generator) instead of numpy's unseeded global RNG, and t-SNE takes `max_iter`
(`n_iter` was removed from scikit-learn).

Usage:
    python tools/latent_vis.py INPUT [INPUT ...] --out-dir docs/latent_vis

INPUT is a cached (N, C) tensor file (`torch.load`-able, already normalised) or a latent shard
directory. scikit-learn is needed for t-SNE only (an optional dependency of this tool).
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
import torch

from utils.safe_load import load_torch_file

logger = logging.getLogger(__name__)

TSNE_SEED, TSNE_PERPLEXITY, TSNE_ITERS = 42, 30.0, 1000


# ------------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------------

def uniformity_metrics(density: np.ndarray) -> Dict[str, float]:
    """The reference's `calculate_uniformity_metrics` on per-point densities d of shape (N,).

    density_std = std(d); density_cv = std(d) / mean(d);
    normalized_entropy = -sum(p log2(p + 1e-10)) / log2(N) with p = d / sum(d);
    gini = sum_i (2i - N - 1) d_(i) / (N sum(d)) over ascending d_(i), i = 1..N.
    """
    d = np.asarray(density, dtype=np.float64).reshape(-1)
    n = d.size
    if n < 2:
        raise ValueError(f"need at least 2 densities, got {n}")
    if np.any(d < 0) or d.sum() <= 0:
        raise ValueError("densities must be non-negative with a positive sum")
    p = d / d.sum()
    ranks = np.arange(1, n + 1, dtype=np.float64)
    return {
        "density_std": float(d.std()),
        "density_cv": float(d.std() / d.mean()),
        "normalized_entropy": float(-np.sum(p * np.log2(p + 1e-10)) / np.log2(n)),
        "gini": float(np.sum((2 * ranks - n - 1) * np.sort(d)) / (n * d.sum())),
    }


def kde_density(points: np.ndarray) -> np.ndarray:
    """Gaussian-KDE density (Scott bandwidth, as the reference) at each of the (N, 2) points."""
    from scipy.stats import gaussian_kde

    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2:
        raise ValueError(f"points must be (N, D), got shape {pts.shape}")
    return gaussian_kde(pts.T)(pts.T)


def tsne_embed(latents: np.ndarray, seed: int = TSNE_SEED, perplexity: float = TSNE_PERPLEXITY,
               max_iter: int = TSNE_ITERS) -> np.ndarray:
    """t-SNE of (N, C) vectors to (N, 2) with the reference's settings (other args sklearn's)."""
    try:
        from sklearn.manifold import TSNE
    except ImportError as e:
        raise ImportError("tools/latent_vis.py needs scikit-learn for t-SNE: "
                          "pip install scikit-learn (see requirements-dev.txt)") from e
    return TSNE(n_components=2, random_state=seed, perplexity=perplexity,
                max_iter=max_iter).fit_transform(np.asarray(latents, dtype=np.float32))


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------

def sample_latent_vectors(data_dir: Union[str, Path], num_samples: int = 10000,
                          seed: int = 0) -> torch.Tensor:
    """(n, C) vectors: one random position of n random images of a shard directory.

    As the reference `sample_latents`: images without replacement, the stored or the flipped
    latent with probability 1/2, a uniform spatial position, normalised with latents_stats.pt.
    """
    from datasets.img_latent_dataset import LatentShards, load_latent_stats

    shards = LatentShards(data_dir)
    mean, std = load_latent_stats(data_dir)
    n = min(num_samples, len(shards))
    g = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(shards), generator=g)[:n]
    use_flip = torch.rand(n, generator=g) < 0.5
    _, h, w = shards.latent_shape
    hi = torch.randint(0, h, (n,), generator=g)
    wi = torch.randint(0, w, (n,), generator=g)
    rows = [shards.read("latents_flip" if f else "latents", int(i))[:, a, b]
            for i, f, a, b in zip(index.tolist(), use_flip.tolist(), hi.tolist(), wi.tolist())]
    vectors = torch.stack(rows)                                         # (n, C)
    return (vectors - mean.reshape(1, -1)) / std.reshape(1, -1)


def load_latents(path: Union[str, Path], num_samples: int = 10000, seed: int = 0) -> torch.Tensor:
    """(N, C) float32 latents from a cached tensor file or a shard directory."""
    path = Path(path)
    if path.is_dir():
        return sample_latent_vectors(path, num_samples, seed)
    if not path.is_file():
        raise FileNotFoundError(f"latent input not found: {path}")
    x = load_torch_file(path, "latent tensor file")   # a downloaded cache: sizes checked, no code
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"{path}: expected an (N, C) tensor, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    return x.float()


# ------------------------------------------------------------------------------------------------
# Analysis and plot
# ------------------------------------------------------------------------------------------------

def analyse(latents: torch.Tensor, png_path: Optional[Union[str, Path]] = None,
            title: Optional[str] = None) -> Dict[str, float]:
    """t-SNE + KDE + metrics of (N, C) latents; optionally save the density-coloured scatter."""
    t0 = time.time()
    emb = tsne_embed(latents.numpy())
    density = kde_density(emb)
    metrics = uniformity_metrics(density)
    metrics["num_points"] = int(latents.shape[0])
    metrics["seconds"] = round(time.time() - t0, 1)
    if png_path is not None:
        plot_density_scatter(emb, density, png_path, title)
    return metrics


def plot_density_scatter(emb: np.ndarray, density: np.ndarray, path: Union[str, Path],
                         title: Optional[str] = None) -> None:
    """Scatter of the (N, 2) embedding coloured by density (viridis, alpha 0.6, no axes)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from utils.fileio import atomic_write

    fig, ax = plt.subplots(figsize=(12, 10))
    sc = ax.scatter(emb[:, 0], emb[:, 1], c=density, cmap="viridis", alpha=0.6, s=5)
    fig.colorbar(sc, ax=ax, label="KDE density")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.axis("off")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("inputs", nargs="+", help="cached (N, C) tensor files or shard dirs")
    parser.add_argument("--out-dir", default="docs/latent_vis")
    parser.add_argument("--json", default=None, help="metrics file (default OUT_DIR/table6.json)")
    parser.add_argument("--num-samples", type=int, default=10000, help="for shard dirs")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed for shard dirs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s")
    from utils.fileio import atomic_write_json

    out_dir = Path(args.out_dir)
    results = {}
    for inp in args.inputs:
        name = Path(inp).stem if Path(inp).is_file() else Path(inp).name
        latents = load_latents(inp, args.num_samples, args.seed)
        logger.info("%s: %d x %d latents, running t-SNE", name, *latents.shape)
        results[name] = analyse(latents, out_dir / f"latent_tsne_{name}.png", title=name)
        logger.info("%s: %s", name, json.dumps(results[name]))
    atomic_write_json(results, args.json or out_dir / "table6.json")


if __name__ == "__main__":
    main()
