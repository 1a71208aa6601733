"""Where does a KL tokenizer get shape edges wrong? Signed reconstruction error around shape edges.

Written to explain the colour fringe of the CPU demo's tokenizer (docs/demo/fringe_analysis.png).
For each image of an ImageFolder: the foreground mask (pixels far from the background colour, taken
as the median of the border), its left / right / top / bottom edges, and the signed error
(reconstruction - input, 8-bit units) sampled along each edge's outward normal, per RGB channel and
as luma Y and chroma (B - Y, R - Y). Also the global sub-pixel shift between input and
reconstruction (gradient least squares, per image, averaged) and the data path's own round trip.

    python tools/analyse_reconstruction.py --images demo_output/toy/val \
        --tokenizer demo_output/tokenizer/export/vavae.yaml \
        --checkpoints demo_output/tokenizer/checkpoints/0000300.pt ... \
        --figure docs/demo/fringe_analysis.png --json /tmp/fringe.json
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch

from tokenizer.data import ImageFolderDataset
from tokenizer.vavae import VA_VAE, to_uint8_nhwc
from utils.fileio import atomic_write_json

logger = logging.getLogger("analyse_reconstruction")

SIDES = {"left": (0, -1), "right": (0, 1), "top": (-1, 0), "bottom": (1, 0)}  # outward normal (dy, dx)
OFFSETS = np.arange(-3, 4)  # pixels along the outward normal; 0 = the edge pixel inside the shape
LUMA = np.array([0.299, 0.587, 0.114])


def foreground_mask(img: np.ndarray, threshold: float = 40.0) -> np.ndarray:
    """uint8 (N, H, W, 3) -> bool (N, H, W): max channel distance to the border median > threshold."""
    border = np.concatenate([img[:, 0], img[:, -1], img[:, :, 0], img[:, :, -1]], axis=1)
    bg = np.median(border, axis=1)[:, None, None, :]
    return np.abs(img.astype(np.float64) - bg).max(-1) > threshold


def edge_profiles(mask: np.ndarray, err: np.ndarray) -> dict[str, np.ndarray]:
    """Mean of `err` (N, H, W, C) at OFFSETS along the outward normal of each side's edge pixels.

    An edge pixel of side s is in the mask with its s-neighbour outside; samples off the image are
    skipped. Returns side -> (len(OFFSETS), C)."""
    n, h, w, c = err.shape
    pad = int(np.abs(OFFSETS).max()) + 1
    err_p = np.pad(err, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=np.nan)
    mask_p = np.pad(mask, ((0, 0), (pad, pad), (pad, pad)), constant_values=False)
    out = {}
    for side, (dy, dx) in SIDES.items():
        neighbour = np.roll(mask_p, shift=(-dy, -dx), axis=(1, 2))
        b, y, x = np.nonzero(mask_p & ~neighbour)
        inside = (y >= pad) & (y < pad + h) & (x >= pad) & (x < pad + w)
        b, y, x = b[inside], y[inside], x[inside]
        out[side] = np.stack([np.nanmean(err_p[b, y + dy * d, x + dx * d], axis=0) for d in OFFSETS])
    return out


def luma_chroma(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) RGB -> (..., 3) [Y, B - Y, R - Y] (BT.601 luma weights)."""
    y = rgb @ LUMA
    return np.stack([y, rgb[..., 2] - y, rgb[..., 0] - y], axis=-1)


def gradient_shift(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares (dy, dx) with dst(p) ~ src(p - s), linearised: per image (N, 2), in pixels.

    Positive dx: the reconstruction sits to the right of the input; positive dy: lower."""
    gy, gx = np.gradient(src, axis=(1, 2))
    diff = dst - src  # ~ -s . grad
    a = np.stack([gy, gx], -1).reshape(len(src), -1, 2)
    r = -diff.reshape(len(src), -1)
    ata = np.einsum("nki,nkj->nij", a, a)
    atb = np.einsum("nki,nk->ni", a, r)
    return np.linalg.solve(ata, atb[..., None])[..., 0]


@torch.no_grad()
def reconstruct(vae: VA_VAE, x: torch.Tensor, batch: int = 50) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] -> float reconstructions from the posterior mode."""
    return torch.cat([vae.decode(vae.encode_images(x[i:i + batch], sample=False))
                      for i in range(0, len(x), batch)])


def analyse(vae: VA_VAE, x: torch.Tensor, img: np.ndarray, mask: np.ndarray) -> dict:
    rec = reconstruct(vae, x)
    rec_u8 = to_uint8_nhwc(rec).numpy()
    rec_f = (rec.permute(0, 2, 3, 1).numpy().astype(np.float64) * 127.5 + 127.5)
    err = rec_u8.astype(np.float64) - img
    prof = edge_profiles(mask, err)
    ycc = {k: luma_chroma(v) for k, v in prof.items()}
    outside_blue = {k: float(v[OFFSETS > 0, 1].mean()) for k, v in ycc.items()}  # B - Y, 1-3 px out
    lum_in, lum_rec = img @ LUMA, rec_u8.astype(np.float64) @ LUMA
    shifts = gradient_shift(lum_in, lum_rec)
    return {
        "mean_abs_error": float(np.abs(err).mean()),
        "mean_signed_error_rgb": err.reshape(-1, 3).mean(0).round(3).tolist(),
        "uint8_cast_bias_rgb": (rec_u8 - np.clip(rec_f, 0, 255)).reshape(-1, 3).mean(0).round(3).tolist(),
        "shift_dy_dx_mean": shifts.mean(0).round(3).tolist(),
        "shift_dy_dx_sem": (shifts.std(0) / np.sqrt(len(shifts))).round(3).tolist(),
        "outside_blue_minus_luma": {k: round(v, 2) for k, v in outside_blue.items()},
        "fringe_left_minus_right": round(outside_blue["left"] - outside_blue["right"], 2),
        "fringe_bottom_minus_top": round(outside_blue["bottom"] - outside_blue["top"], 2),
        "profiles_rgb": {k: v.round(2).tolist() for k, v in prof.items()},
        "profiles_ycc": {k: v.round(2).tolist() for k, v in ycc.items()},
        "_rec_u8": rec_u8,
    }


def data_path_check(x: torch.Tensor, img: np.ndarray) -> dict:
    """image -> [-1, 1] -> uint8 without a model: exact? And the grid's PNG conversion."""
    back = to_uint8_nhwc(x).numpy()
    grid = (x.clamp(-1, 1) * 0.5 + 0.5).mul(255).add(0.5).clamp(0, 255).to(torch.uint8)
    return {"to_uint8_max_abs_diff": int(np.abs(back.astype(int) - img).max()),
            "grid_png_max_abs_diff": int(np.abs(grid.permute(0, 2, 3, 1).numpy().astype(int) - img).max())}


def save_figure(path: Path, img: np.ndarray, results: dict[str, dict], final: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(13, 7.2))
    rec = results[final]["_rec_u8"]
    img = img.astype(np.uint8)
    idx = np.linspace(0, len(img) - 1, 6).astype(int)
    for j, i in enumerate(idx):
        err = rec[i].astype(float) - img[i]
        for r, (panel, title) in enumerate([(img[i], "input"), (rec[i], "reconstruction"),
                                            (np.clip(128 + 2 * err, 0, 255).astype(np.uint8), "128 + 2 x error")]):
            ax = fig.add_subplot(6, 6, r * 6 + j + 1)
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(title, fontsize=7)
    names = ["Y", "B-Y", "R-Y"]
    for k, side in enumerate(SIDES):
        ax = fig.add_subplot(2, 4, 5 + k)
        for step, res in results.items():
            ycc = np.array(res["profiles_ycc"][side])
            style = "-" if step == final else ":"
            for c, color in enumerate(["k", "b", "r"]):
                ax.plot(OFFSETS, ycc[:, c], style, color=color, alpha=1.0 if step == final else 0.5,
                        label=f"{names[c]} {step}" if k == 0 and (step == final or c == 1) else None)
        ax.axhline(0, color="gray", lw=0.5)
        ax.axvline(0.5, color="gray", lw=0.5, ls="--")
        ax.set_title(f"{side} edges", fontsize=9)
        ax.set_xlabel("px along outward normal (<=0 inside)", fontsize=7)
        if k == 0:
            ax.set_ylabel("signed error (rec - input), 8-bit", fontsize=7)
            ax.legend(fontsize=6)
    fig.suptitle("Demo tokenizer: signed reconstruction error around shape edges (val, solid = final, "
                 "dotted = earlier checkpoints)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", required=True, help="ImageFolder (val split)")
    p.add_argument("--tokenizer", required=True, help="tokenizer YAML (its ckpt_path = final weights)")
    p.add_argument("--checkpoints", nargs="*", default=[], help="earlier training checkpoints to compare")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--figure", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_grad_enabled(False)

    data = ImageFolderDataset(args.images, size=args.size, random_crop=False)
    x = torch.stack([data[i] for i in range(len(data))])
    img = np.rint((x.permute(0, 2, 3, 1).numpy().astype(np.float64) + 1) * 127.5)
    mask = foreground_mask(img)
    report = {"images": len(x), "foreground_fraction": float(mask.mean()),
              "data_path": data_path_check(x, img), "runs": {}}
    runs = {Path(c).stem.lstrip("0") or "0": c for c in args.checkpoints}
    runs["final"] = None
    results = {}
    for name, ckpt in runs.items():
        vae = VA_VAE(args.tokenizer, img_size=args.size, fp16=False, device="cpu", ckpt_path=ckpt)
        results[name] = analyse(vae, x, img, mask)
        r = results[name]
        logger.info("%s: mean|err| %.2f, signed rgb %s, shift (dy, dx) %s +- %s, B-Y outside edges %s, "
                    "left-right %.2f, bottom-top %.2f", name, r["mean_abs_error"], r["mean_signed_error_rgb"],
                    r["shift_dy_dx_mean"], r["shift_dy_dx_sem"], r["outside_blue_minus_luma"],
                    r["fringe_left_minus_right"], r["fringe_bottom_minus_top"])
    report["runs"] = {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, v in results.items()}
    if args.json:
        atomic_write_json(report, args.json)
    if args.figure:
        save_figure(args.figure, img, results, "final")
    edges = {name: run["outside_blue_minus_luma"] for name, run in report["runs"].items()}
    print(json.dumps({**{k: v for k, v in report.items() if k != "runs"}, "outside_blue_minus_luma": edges}))


if __name__ == "__main__":
    main()
