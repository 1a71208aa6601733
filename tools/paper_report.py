"""Our results beside the paper's, as Markdown tables laid out like the paper's Tables 1-6.

    python tools/paper_report.py output/ logs/ [--output paper_report.md]

Reads every `*.json` under the given folders that one of our scripts wrote:
- ADM evaluator results, `*_adm_eval.json` (evaluation/adm.py: fid, sfid, inception_score,
  precision, recall) -> gFID and the Table 3 columns;
- tokenizer evaluation (tools/evaluate_tokenizer.py: rFID, PSNR, LPIPS, SSIM) -> rFID ... SSIM;
- latent uniformity (tools/latent_vis.py: {name: {density_cv, gini, normalized_entropy}}) -> Table 6.
Other JSON files are skipped.

After them, SFD's tables (Semantic-First Diffusion): Table 1 (LightningDiT, + REPA, + SFD at B/1,
L/1, XL/1 over training steps), Table 2's SFD rows (AutoGuidance) and the delta-t ablation, fed by
the configs of configs/sfd/paper/ (each cell by its config stem and, where a row spans several
training steps, the checkpoint step that inference.py writes into the sample folder's name,
`...-ckpt-0400000-...`).

Row mapping: every table row is fed by runs named after our config stems (`known_runs()`):
a tokenizer row by its tokenizer config (`f16d32_vfdinov2`), a gFID cell by its LightningDiT
config (`lightningdit_b_f16d32_vfdinov2`). A result belongs to the first of these names found in
its own name, nearest first: the latent_vis entry name, the file stem (less `_adm_eval`), then
its folders upward. That is what the scripts write by default when each run keeps its config's
name: `output/{train.exp_name}/<samples>_adm_eval.json` (exp_name = the config stem in every
reproduction config), `output/tokenizer_eval/{config stem}.json`, and latent_vis entries named
after the latent folder. When several results map to one run, the newest file is used. Cells read
"ours / paper (ours - paper)", or "not run / paper"; results from random weights are marked.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

logger = logging.getLogger(__name__)

ADM, TOKENIZER, LATENT = "adm", "tokenizer", "latent"
# metric -> (result kind, JSON key, decimals as the paper prints it)
METRICS = {
    "gFID": (ADM, "fid", 2), "sFID": (ADM, "sfid", 2), "IS": (ADM, "inception_score", 1),
    "Pre": (ADM, "precision", 2), "Rec": (ADM, "recall", 2),
    "rFID": (TOKENIZER, "rFID", 2), "PSNR": (TOKENIZER, "PSNR", 2), "LPIPS": (TOKENIZER, "LPIPS", 3),
    "SSIM": (TOKENIZER, "SSIM", 2),
    "density": (LATENT, "density_cv", 3), "Gini": (LATENT, "gini", 3),
    "entropy": (LATENT, "normalized_entropy", 3),
}
# Other names our scripts give to the same runs (the authors' released latent caches, Table 6).
ALIASES = {"latents_cache_f16d32": "f16d32_ldm", "latents_cache_f16d32_vfdinov2": "f16d32_vfdinov2"}


@dataclass(frozen=True)
class Result:
    kind: str
    run: str
    values: Dict[str, object]
    path: str
    mtime: float
    step: Optional[int] = None      # the sampled checkpoint's step, when the file's name says it


#################################################################################
#                         The paper's tables and numbers                        #
#################################################################################

TOK_COLS = ("rFID", "PSNR", "LPIPS", "SSIM")
# Table 2 (tokenizer, rFID, PSNR, LPIPS, SSIM, gFID B / L / XL)
TABLE2 = [
    ("f16d16", "LDM", "f16d16_ldm", (0.49, 26.10, 0.132, 0.72), (16.24, 9.49, 8.28)),
    ("f16d16", "+VF (MAE)", "f16d16_vfmae", (0.51, 26.01, 0.137, 0.71), (16.86, 10.93, 9.19)),
    ("f16d16", "+VF (DINOv2)", "f16d16_vfdinov2", (0.55, 25.29, 0.147, 0.69), (15.79, 10.02, 8.71)),
    ("f16d32", "LDM", "f16d32_ldm", (0.26, 28.59, 0.089, 0.80), (22.62, 12.86, 10.92)),
    ("f16d32", "+VF (MAE)", "f16d32_vfmae", (0.28, 28.33, 0.091, 0.80), (19.89, 11.51, 9.92)),
    ("f16d32", "+VF (DINOv2)", "f16d32_vfdinov2", (0.28, 27.96, 0.096, 0.79), (15.82, 9.82, 8.22)),
    ("f16d64", "LDM", "f16d64_ldm", (0.17, 31.03, 0.055, 0.88), (36.83, 20.73, 17.24)),
    ("f16d64", "+VF (MAE)", "f16d64_vfmae", (0.15, 31.03, 0.054, 0.87), (23.58, 14.40, 11.69)),
    ("f16d64", "+VF (DINOv2)", "f16d64_vfdinov2", (0.14, 30.71, 0.055, 0.87), (24.00, 14.95, 11.98)),
]
TABLE1 = [  # (trick, config stem, FID-50K)
    ("DiT-XL/2 baseline", "table1_00_dit_baseline", 19.50),
    ("+ Rectified Flow", "table1_01_rectified_flow", 17.20),
    ("+ batch size x4 & lr x2", "table1_02_batch1024_lr2e-4", 16.59),
    ("+ AdamW beta2 = 0.95", "table1_03_adamw_beta2_0.95", 16.61),
    ("+ Logit-Normal sampling", "table1_04_logit_normal", 13.99),
    ("+ Velocity direction (cosine) loss", "table1_05_cosine_loss", 12.52),
    ("+ SwiGLU FFN", "table1_06_swiglu", 10.10),
    ("+ RMSNorm", "table1_07_rmsnorm", 9.25),
    ("+ Rotary position embedding", "table1_08_rope", 7.13),
    ("+ patch size 1 & VA-VAE", "table1_09_patch1_vavae", 4.29),
]
ADM_COLS = ("gFID", "sFID", "IS", "Pre", "Rec")
TABLE3 = [  # (label, tokenizer run, no-CFG run, CFG run, rFID, no-CFG numbers, CFG numbers)
    ("LightningDiT-XL, 64 epochs", "vavae_f16d32", "lightningdit_xl_vavae_f16d32_64ep_nocfg",
     "lightningdit_xl_vavae_f16d32_64ep_cfg", 0.28, (5.14, 4.22, 130.2, 0.76, 0.62), (2.11, 4.16, 252.3, 0.81, 0.58)),
    ("LightningDiT-XL, 800 epochs", "vavae_f16d32", "lightningdit_xl_vavae_f16d32_800ep_nocfg",
     "lightningdit_xl_vavae_f16d32_800ep_cfg", 0.28, (2.17, 4.36, 205.6, 0.77, 0.65), (1.35, 4.15, 295.3, 0.79, 0.65)),
]
TABLE4 = [  # (VF model, tokenizer run, rFID, PSNR, LPIPS, SSIM, gFID (B))
    ("none", "f16d32_ldm", (0.26, 28.59, 0.089, 0.80), 22.62),
    ("DINOv2", "f16d32_vfdinov2", (0.28, 27.96, 0.096, 0.79), 15.82),
    ("MAE", "f16d32_vfmae", (0.28, 28.33, 0.091, 0.80), 19.89),
    ("SAM", "f16d32_vfsam", (0.26, 28.31, 0.091, 0.80), 19.80),
    ("CLIP", "f16d32_vfclip", (0.33, 28.39, 0.091, 0.80), 18.93),
]
TABLE5 = [
    ("none", "f16d32_ldm", (0.26, 28.59, 0.089, 0.80), 22.62),
    ("full (mcos + mdms, margins)", "f16d32_vfdinov2", (0.28, 27.96, 0.096, 0.79), 15.82),
    ("mcos only", "f16d32_vfdinov2_mcos_only", (0.27, 28.52, 0.090, 0.80), 21.87),
    ("mdistmat only", "f16d32_vfdinov2_mdms_only", (0.27, 28.24, 0.090, 0.80), 17.74),
    ("margin (both terms, no margins)", "f16d32_vfdinov2_no_margin", (0.27, 28.07, 0.093, 0.79), 17.77),
]
TABLE6 = [  # (spec, VF model, tokenizer run, density, Gini, entropy, gFID (B))
    ("f16d32", "none", "f16d32_ldm", (0.263, 0.145, 0.995), 22.62),
    ("f16d32", "MAE", "f16d32_vfmae", (0.193, 0.101, 0.997), 19.89),
    ("f16d32", "DINOv2", "f16d32_vfdinov2", (0.178, 0.096, 0.998), 15.82),
    ("f16d64", "none", "f16d64_ldm", (0.296, 0.166, 0.994), 36.83),
    ("f16d64", "MAE", "f16d64_vfmae", (0.256, 0.143, 0.995), 23.58),
    ("f16d64", "DINOv2", "f16d64_vfdinov2", (0.251, 0.141, 0.996), 24.00),
]
SIZES = ("b", "l", "xl")

# SFD (configs/sfd/paper/): Table 1, FID-50K without guidance per training step.
SFD_STEPS = (70000, 120000, 400000, 1000000, 2000000, 4000000)
SFD_TABLE1 = [  # (model, run = config stem, {step: FID-50K})
    ("LightningDiT-B/1", "sfd_t1_lightningdit_b1", {400000: 22.86}),
    ("LightningDiT-B/1 + REPA", "sfd_t1_lightningdit_b1_repa", {400000: 21.45}),
    ("LightningDiT-B/1 + SFD", "sfd_t1_sfd_b1", {400000: 10.40}),
    ("LightningDiT-L/1", "sfd_t1_lightningdit_l1", {400000: 10.08}),
    ("LightningDiT-L/1 + REPA", "sfd_t1_lightningdit_l1_repa", {400000: 7.48}),
    ("LightningDiT-L/1 + SFD", "sfd_t1_sfd_l1", {400000: 3.89}),
    ("LightningDiT-XL/1", "sfd_t1_lightningdit_xl1", {400000: 9.29, 1000000: 7.48, 2000000: 6.88, 4000000: 6.50}),
    ("LightningDiT-XL/1 + REPA", "sfd_t1_lightningdit_xl1_repa",
     {400000: 6.94, 1000000: 6.17, 2000000: 5.87, 4000000: 5.84}),
    ("LightningDiT-XL/1 + SFD", "sfd_t1_sfd_xl1",
     {70000: 8.79, 120000: 6.22, 400000: 3.53, 1000000: 2.82, 2000000: 2.74, 4000000: 2.54}),
]
SFD_TABLE2 = [  # (model, epochs, run, (FID, sFID, IS, Pre, Rec)) with AutoGuidance
    ("SFD (XL, 675M)", 80, "sfd_t2_sfd_xl_80ep_autoguidance", (1.30, 3.87, 233.4, 0.78, 0.64)),
    ("SFD (XL, 675M)", 800, "sfd_t2_sfd_xl_800ep_autoguidance", (1.06, 3.89, 267.0, 0.78, 0.67)),
    ("SFD (XXL, 1.0B)", 80, "sfd_t2_sfd_1p0_80ep_autoguidance", (1.19, 4.00, 240.4, 0.78, 0.65)),
    ("SFD (XXL, 1.0B)", 800, "sfd_t2_sfd_1p0_800ep_autoguidance", (1.04, 3.75, 264.2, 0.78, 0.66)),
]
SFD_DELTA = [  # (delta, run, FID-50K, printed on the plot (else read off it, +-0.03))
    (0.0, "sfd_dt_0p0", 5.24, True), (0.1, "sfd_dt_0p1", 3.37, False), (0.2, "sfd_dt_0p2", 3.14, False),
    (0.3, "sfd_dt_0p3", 3.03, True), (0.4, "sfd_dt_0p4", 3.16, False), (0.5, "sfd_dt_0p5", 3.61, False),
    (0.6, "sfd_dt_0p6", 3.87, False), (0.7, "sfd_dt_0p7", 4.40, False), (0.8, "sfd_dt_0p8", 4.69, False),
    (0.9, "sfd_dt_0p9", 5.09, False), (1.0, "sfd_dt_1p0", 5.41, True),
]
STEP_IN_NAME = re.compile(r"-ckpt-(\d+)(?:-|$)")   # inference.py's sample folder: {model}-ckpt-{step}-...


def sfd_runs() -> List[str]:
    """The config stems of configs/sfd/paper/ that SFD's tables read."""
    return [run for _, run, _ in SFD_TABLE1] + [row[2] for row in SFD_TABLE2] + [row[1] for row in SFD_DELTA]


def step_of(name: str) -> Optional[int]:
    """The checkpoint step a sample folder's name carries (`...-ckpt-0400000-...`), else None."""
    match = STEP_IN_NAME.search(name)
    return int(match.group(1)) if match else None


def gen_run(size: str, tokenizer: str) -> str:
    """The LightningDiT config (= run) stem of a gFID cell."""
    return f"lightningdit_{size}_{tokenizer}"


def known_runs() -> List[str]:
    """Every run name a table reads."""
    runs = [stem for _, stem, _ in TABLE1]
    for row in TABLE2:
        runs += [row[2]] + [gen_run(s, row[2]) for s in SIZES]
    for row in TABLE3:
        runs += list(row[1:4])
    for table in (TABLE4, TABLE5):
        runs += [r for row in table for r in (row[1], gen_run("b", row[1]))]
    runs += [row[2] for row in TABLE6]
    runs += sfd_runs()
    return sorted(set(runs))


#################################################################################
#                             Collecting the results                            #
#################################################################################

def classify(data: object) -> Optional[str]:
    """The writer of a JSON document, from its keys (None: not one of ours)."""
    if not isinstance(data, dict):
        return None
    if "fid" in data and "inception_score" in data:
        return ADM
    if "PSNR" in data and "SSIM" in data:
        return TOKENIZER
    if data and all(isinstance(v, dict) and "gini" in v and "density_cv" in v for v in data.values()):
        return LATENT
    return None


def run_name(candidates: Iterable[str], runs: Sequence[str]) -> Optional[str]:
    """The first candidate (or its alias) that is a known run."""
    for name in candidates:
        name = ALIASES.get(name, name)
        if name in runs:
            return name
    return None


def _path_candidates(path: Path, root: Path) -> List[str]:
    stem = path.stem[:-len("_adm_eval")] if path.stem.endswith("_adm_eval") else path.stem
    folders = [p.name for p in path.parents if p != root and root in p.parents] + [root.name]
    return [stem] + folders


def collect(roots: Sequence[str], runs: Optional[Sequence[str]] = None) -> Tuple[Dict[tuple, Result], List[str]]:
    """{(kind, run): newest result, and (kind, run, step) for results of a known training step}
    from every JSON under `roots`, and the unmatched files."""
    runs = list(runs if runs is not None else known_runs())
    found: Dict[Tuple[str, str], Result] = {}
    unmatched: List[str] = []
    for root in roots:
        root = Path(root).resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"results folder not found: {root}")
        for path in sorted(root.rglob("*.json")):
            try:
                data = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                logger.warning("skipping %s (%s)", path, err)
                continue
            kind = classify(data)
            if kind is None:
                continue
            entries = data.items() if kind == LATENT else [(None, data)]
            for entry, values in entries:
                candidates = ([entry] if entry else []) + _path_candidates(path, root)
                run = run_name(candidates, runs)
                if run is None:
                    unmatched.append(f"{path}" + (f" [{entry}]" if entry else ""))
                    continue
                step = step_of(_path_candidates(path, root)[0])
                result = Result(kind, run, values, str(path), os.path.getmtime(path), step)
                old = found.get((kind, run))
                if old is not None and old.step == step:
                    logger.warning("%s: %s and %s both report it; using the newer", run, old.path, path)
                if old is None or result.mtime >= old.mtime:
                    found[(kind, run)] = result
                if step is not None:      # SFD's rows over training steps
                    old = found.get((kind, run, step))
                    if old is None or result.mtime >= old.mtime:
                        found[(kind, run, step)] = result
    return found, unmatched


#################################################################################
#                                    Tables                                     #
#################################################################################

class Report:
    """Renders cells from collected results; remembers the footnotes they need."""

    def __init__(self, results: Dict[Tuple[str, str], Result]):
        self.results = results
        self.notes: List[str] = []

    def value(self, metric: str, run: str, step: Optional[int] = None) -> Tuple[Optional[float], str]:
        """(our number or None, footnote mark); `step`: the result of that checkpoint step only."""
        kind, key, _ = METRICS[metric]
        result = self.results.get((kind, run) if step is None else (kind, run, step))
        if result is None or result.values.get(key) is None:
            return None, ""
        mark = ""
        if result.values.get("random_init"):
            mark = "†"
            note = "† random weights (a pipeline test, not a real number)"
            if note not in self.notes:
                self.notes.append(note)
        return float(result.values[key]), mark

    def cell(self, metric: str, run: str, paper: Optional[float], fid_num: Optional[int] = None,
             step: Optional[int] = None) -> str:
        ours, mark = self.value(metric, run, step)
        decimals = METRICS[metric][2]
        paper_text = "–" if paper is None else f"{paper:.{decimals}f}"
        if ours is None:
            return f"not run / {paper_text}"
        key = (METRICS[metric][0], run) if step is None else (METRICS[metric][0], run, step)
        n = self.results[key].values.get("num_sample_images")
        if fid_num is not None and n is not None and int(n) != fid_num:
            mark += f" (n={int(n)})"
        text = f"{ours:.{decimals}f}{mark} / {paper_text}"
        if paper is not None:
            text += f" ({ours - paper:+.{decimals}f})"
        return text


def _table(title: str, caption: str, header: Sequence[str], rows: List[List[str]]) -> str:
    lines = [f"### {title}", "", caption, "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def render(results: Dict[Tuple[str, str], Result], unmatched: Sequence[str] = ()) -> str:
    """The six tables, then SFD's three, as Markdown."""
    r = Report(results)
    out = ["# Reproduction report: ours / paper (ours - paper)", ""]
    out.append(_table(
        "Table 1: LightningDiT road map (SD-VAE, 80 epochs, FID-50K)",
        "Configs `configs/reproductions/<run>.yaml`; dopri5, no CFG.",
        ["training trick", "run", "FID-50K"],
        [[trick, f"`{stem}`", r.cell("gFID", stem, fid, 50000)] for trick, stem, fid in TABLE1]))
    out.append(_table(
        "Table 2: VF loss vs tokenizer dimension (50-epoch tokenizers; gFID = FID-10K, 160 epochs)",
        "Tokenizer runs `configs/tokenizer/<run>.yaml`; gFID runs `lightningdit_{b,l,xl}_<run>`.",
        ["spec", "tokenizer", "run", *TOK_COLS, "gFID B", "gFID L", "gFID XL"],
        [[spec, name, f"`{run}`", *[r.cell(m, run, p) for m, p in zip(TOK_COLS, tok)],
          *[r.cell("gFID", gen_run(s, run), p, 10000) for s, p in zip(SIZES, gen)]]
         for spec, name, run, tok, gen in TABLE2]))
    out.append(_table(
        "Table 3: LightningDiT-XL on VA-VAE (ImageNet 256, FID-50K)",
        "No-CFG and CFG runs: the `_64ep_cfg` / `_800ep_cfg` configs, sampled with "
        "`train.exp_name=<run>` (and `sample.cfg_scale=1.0` for `_nocfg`); rFID from `vavae_f16d32`.",
        ["model", "rFID", *ADM_COLS, *[f"{c} (CFG)" for c in ADM_COLS]],
        [[label, r.cell("rFID", tok, rfid),
          *[r.cell(m, nocfg, p, 50000) for m, p in zip(ADM_COLS, plain)],
          *[r.cell(m, cfg, p, 50000) for m, p in zip(ADM_COLS, guided)]]
         for label, tok, nocfg, cfg, rfid, plain, guided in TABLE3]))
    for title, table in (("Table 4: choice of foundation model (f16d32; gFID = LightningDiT-B, FID-10K)", TABLE4),
                         ("Table 5: VF loss ablation (f16d32, DINOv2; gFID = LightningDiT-B, FID-10K)", TABLE5)):
        out.append(_table(
            title, "Tokenizer runs `configs/tokenizer/<run>.yaml`; gFID runs `lightningdit_b_<run>`.",
            ["row", "run", *TOK_COLS, "gFID"],
            [[label, f"`{run}`", *[r.cell(m, run, p) for m, p in zip(TOK_COLS, tok)],
              r.cell("gFID", gen_run("b", run), gen, 10000)] for label, run, tok, gen in table]))
    out.append(_table(
        "Table 6: latent uniformity (tools/latent_vis.py on 10,000 latent vectors)",
        "Runs named after the latent folder (or the authors' `latents_cache_*` files); "
        "gFID = LightningDiT-B, FID-10K.",
        ["spec", "VF model", "run", "density CV", "Gini", "norm. entropy", "gFID"],
        [[spec, vf, f"`{run}`", *[r.cell(m, run, p) for m, p in zip(("density", "Gini", "entropy"), uni)],
          r.cell("gFID", gen_run("b", run), gen, 10000)] for spec, vf, run, uni, gen in TABLE6]))
    out += render_sfd(r)
    notes = list(r.notes)
    if any("(n=" in line for line in out):
        notes.append("(n=N): the evaluation used N images, not the table's protocol")
    if notes:
        out += ["Notes: " + "; ".join(notes) + ".", ""]
    if unmatched:
        out += ["Results not matched to a row (name the run folder or file after the config stem):", ""]
        out += [f"- `{u}`" for u in unmatched] + [""]
    return "\n".join(out)


def _steps(step: int) -> str:
    return f"{step // 1000}K" if step < 1_000_000 else f"{step // 1_000_000}M"


def render_sfd(r: Report) -> List[str]:
    """SFD's Table 1 (steps as columns), Table 2's SFD rows and the delta-t ablation."""
    out = ["## SFD (Semantic-First Diffusion): ours / paper (ours - paper)", ""]
    rows = []
    for model, run, paper in SFD_TABLE1:
        cells = []
        for step in SFD_STEPS:
            ours, _ = r.value("gFID", run, step)
            cells.append(r.cell("gFID", run, paper[step], 50000, step) if step in paper or ours is not None else "–")
        rows.append([model, f"`{run}`", *cells])
    out.append(_table(
        "SFD Table 1: FID-50K without guidance over training steps (ImageNet 256)",
        "Configs `configs/sfd/paper/<run>.yaml` (SD-VAE f16d32 texture latents; + SFD adds the Semantic VAE "
        "channels, delta 0.3, REPA); a cell is the sample folder of that checkpoint (`-ckpt-<step>-`).",
        ["model", "run", *map(_steps, SFD_STEPS)], rows))
    out.append(_table(
        "SFD Table 2: SFD with AutoGuidance (ImageNet 256, 50K images)",
        "Configs `configs/sfd/paper/<run>.yaml`: the Table 1 / XXL networks at 400K (80 epochs) and 4M "
        "(800 epochs), the SFD-B/1 guide (`sfd_guide_b1*.yaml`) at SFD's iteration and scale.",
        ["model", "epochs", "run", *ADM_COLS],
        [[model, str(epochs), f"`{run}`", *[r.cell(m, run, p, 50000) for m, p in zip(ADM_COLS, paper)]]
         for model, epochs, run, paper in SFD_TABLE2]))
    out.append(_table(
        "SFD delta-t ablation: FID-50K over the semantic lead delta",
        "Configs `configs/sfd/paper/sfd_dt_<delta>.yaml` (SFD-XL/1, 400K steps, no guidance: the paper's "
        "setting is not stated); * paper value read off the plot (+-0.03).",
        ["delta", "run", "FID-50K"],
        [[f"{delta:.1f}" + ("" if printed else "*"), f"`{run}`", r.cell("gFID", run, fid, 50000)]
         for delta, run, fid, printed in SFD_DELTA]))
    return out


def main(argv: Optional[Sequence[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="folders holding the runs' result JSON files")
    parser.add_argument("--output", default=None, help="also write the report to this Markdown file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        results, unmatched = collect(args.folders)
    except FileNotFoundError as err:
        raise SystemExit(f"error: {err}") from None
    text = render(results, unmatched)
    if args.output:
        from utils.fileio import atomic_write_text
        atomic_write_text(text, args.output)
        logger.info("wrote %s (%d results)", args.output, len(results))
    else:
        print(text)
    return text


if __name__ == "__main__":
    main()
