"""tools/paper_report.py on fabricated result files laid out as our scripts write them."""
import json
import os
import re

import pytest

from tools import paper_report as R


def _write(path, data, mtime=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def _adm(fid, n=10000, **extra):
    """The keys evaluation/adm.py writes."""
    return {"inception_score": 100.0, "fid": fid, "sfid": 5.0, "precision": 0.7, "recall": 0.6,
            "num_ref_images": 10000, "num_sample_images": n, "random_init": False, **extra}


def _tok(rfid, psnr, lpips, ssim, **extra):
    """The keys tools/evaluate_tokenizer.py writes."""
    return {"num_images": 50000, "PSNR": psnr, "SSIM": ssim, "LPIPS": lpips, "rFID": rfid,
            "config": "x.yaml", "random_init": False, **extra}


def _row(text, first_cell):
    """The cells of the Markdown row whose first cell is `first_cell` in the table after `title`."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r}")


def _section(text, title):
    start = text.index(title)
    end = text.find("### ", start + 1)
    return text[start:end if end > 0 else None]


@pytest.fixture()
def runs(tmp_path):
    out = tmp_path / "output"
    # gFID: output/{exp_name = config stem}/{sample folder}_adm_eval.json (inference.py / run_fid_eval.sh)
    _write(out / "lightningdit_b_f16d32_vfdinov2" / "lightningdit-b-cfg-1.0-seed-0_adm_eval.json", _adm(15.90))
    _write(out / "lightningdit_xl_f16d64_ldm" / "samples_adm_eval.json", _adm(17.00, n=50000))
    _write(out / "table1_08_rope" / "folder_adm_eval.json", _adm(7.50, n=50000))
    # a stale and a newer evaluation of one run: the newer wins
    _write(out / "lightningdit_b_f16d32_ldm" / "old_adm_eval.json", _adm(30.0), mtime=1_000_000)
    _write(out / "lightningdit_b_f16d32_ldm" / "new_adm_eval.json", _adm(22.00), mtime=2_000_000)
    # tokenizer evaluation: output/tokenizer_eval/{config stem}.json (the script's default)
    _write(out / "tokenizer_eval" / "f16d32_vfdinov2.json", _tok(0.30, 27.50, 0.1, 0.78))
    _write(out / "tokenizer_eval" / "f16d32_vfsam.json", _tok(0.20, 28.00, 0.095, 0.80, random_init=True))
    # latent uniformity: tools/latent_vis.py's table6.json, entries named after the latents
    _write(out / "latent_vis" / "table6.json", {
        "latents_cache_f16d32": {"density_cv": 0.26, "gini": 0.141, "normalized_entropy": 0.9958},
        "f16d64_vfmae": {"density_cv": 0.25, "gini": 0.15, "normalized_entropy": 0.995}})
    # not ours / not matched
    _write(out / "lightningdit_b_f16d32_vfdinov2" / "protocol.json", {"cfg_scale": 1.0})
    _write(out / "misc" / "mystery_adm_eval.json", _adm(3.0))
    (out / "broken.json").write_text("{not json")
    return out


def test_report_cells(runs):
    text = R.main([str(runs)])
    t2 = _section(text, "### Table 2")
    row = _row(t2, "f16d32")                      # first f16d32 row is LDM
    assert row[1] == "LDM" and row[7] == "22.00 / 22.62 (-0.62)"           # newest of two results
    assert row[3] == "not run / 0.26" and row[8] == "not run / 12.86"
    dino = [line for line in t2.splitlines() if "`f16d32_vfdinov2`" in line][0]
    cells = [c.strip() for c in dino.strip().strip("|").split("|")]
    assert cells[3:7] == ["0.30 / 0.28 (+0.02)", "27.50 / 27.96 (-0.46)", "0.100 / 0.096 (+0.004)",
                          "0.78 / 0.79 (-0.01)"]
    assert cells[7] == "15.90 / 15.82 (+0.08)"
    d64 = [line for line in t2.splitlines() if "`f16d64_ldm`" in line][0]
    assert "17.00 (n=50000) / 17.24 (-0.24)" in d64                      # FID-50K where 10K expected
    # Table 1: FID-50K, no footnote for n=50000
    assert _row(_section(text, "### Table 1"), "+ Rotary position embedding")[2] == "7.50 / 7.13 (+0.37)"
    assert _row(_section(text, "### Table 1"), "DiT-XL/2 baseline")[2] == "not run / 19.50"
    # Table 4: a random-weights result is marked, with its footnote
    sam = _row(_section(text, "### Table 4"), "SAM")
    assert sam[2] == "0.20† / 0.26 (-0.06)" and sam[6] == "not run / 19.80"
    assert "† random weights" in text and "(n=N)" in text
    # Table 5 reuses the same runs: 'full' = f16d32_vfdinov2
    assert _row(_section(text, "### Table 5"), "full (mcos + mdms, margins)")[6] == "15.90 / 15.82 (+0.08)"
    # Table 6: the authors' cache name maps to f16d32_ldm; entry names are runs
    t6 = _section(text, "### Table 6")
    none32 = [line for line in t6.splitlines() if "`f16d32_ldm`" in line][0]
    assert "0.260 / 0.263 (-0.003)" in none32 and "0.141 / 0.145 (-0.004)" in none32
    assert "22.00 / 22.62 (-0.62)" in none32
    assert "0.250 / 0.256 (-0.006)" in [line for line in t6.splitlines() if "`f16d64_vfmae`" in line][0]
    # Table 3: nothing run yet
    assert _row(_section(text, "### Table 3"), "LightningDiT-XL, 64 epochs")[1:3] == ["not run / 0.28", "not run / 5.14"]
    # unmatched results are listed, non-result JSON is not
    assert "mystery_adm_eval.json" in text and "protocol.json" not in text
    # every cell of every table row: ours / paper
    for line in text.splitlines():
        if line.startswith("| ") and " / " in line:
            assert all(re.fullmatch(r"(not run|-?[\d.]+†?( \(n=\d+\))?) / [\d.–]+( \([+-][\d.]+\))?", c.strip())
                       for c in line.strip("|").split("|") if " / " in c), line


def test_row_mapping_rules(tmp_path):
    runs = R.known_runs()
    assert len(runs) == len(set(runs))
    for stem in ("f16d16_vfmae", "lightningdit_l_f16d64_vfdinov2", "lightningdit_b_f16d32_vfclip",
                 "table1_00_dit_baseline", "lightningdit_xl_vavae_f16d32_800ep_cfg", "vavae_f16d32"):
        assert stem in runs
    # nearest name first: the file stem beats the folders
    assert R.run_name(["f16d32_vfmae", "f16d32_ldm"], runs) == "f16d32_vfmae"
    assert R.run_name(["x", "latents_cache_f16d32_vfdinov2"], runs) == "f16d32_vfdinov2"
    assert R.run_name(["x", "y"], runs) is None
    assert R.classify({"fid": 1, "inception_score": 2}) == R.ADM
    assert R.classify({"PSNR": 1, "SSIM": 2}) == R.TOKENIZER
    assert R.classify({"a": {"gini": 1, "density_cv": 2}}) == R.LATENT
    assert R.classify({"cfg_scale": 1}) is None and R.classify([1]) is None
    with pytest.raises(SystemExit, match="results folder not found"):
        R.main([str(tmp_path / "nope")])


def test_empty_folder_every_row_not_run(tmp_path):
    out = tmp_path / "report.md"
    text = R.main([str(tmp_path), "--output", str(out)])
    assert out.read_text() == text
    assert "not included" not in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "/" in line]
    # every paper row of Tables 1-6 is there: 10 + 9 + 2 + 5 + 5 + 6; SFD's: 9 + 4 + 11
    assert len(rows) == 37 + 24
    assert all("not run" in line for line in rows)


def test_sfd_tables(tmp_path):
    """SFD's rows: a cell per (config stem, checkpoint step of the sample folder); cells the paper
    has no number for stay '–' unless we have one."""
    out = tmp_path / "outputs" / "train"
    folder = "lightningdit-xl-1-ckpt-{:07d}-dopri5-250-balanced"
    _write(out / "sfd_t1_sfd_xl1" / f"{folder.format(400000)}_adm_eval.json", _adm(3.60, n=50000))
    _write(out / "sfd_t1_sfd_xl1" / f"{folder.format(4000000)}_adm_eval.json", _adm(2.50, n=50000))
    _write(out / "sfd_t1_sfd_xl1" / f"{folder.format(3000000)}_adm_eval.json", _adm(2.60, n=50000))
    _write(out / "sfd_t1_lightningdit_b1_repa" / "lightningdit-b-1-ckpt-0400000-dopri5-250_adm_eval.json",
           _adm(20.00, n=10000))
    _write(out / "sfd_t2_sfd_xl_800ep_autoguidance" /
           f"{folder.format(4000000)}-interval0.00-cfg1.50-shift0.00-ag0070000_adm_eval.json",
           _adm(1.10, n=50000, sfid=4.00, inception_score=260.0, precision=0.79, recall=0.66))
    _write(out / "sfd_dt_1p0" / f"{folder.format(400000)}_adm_eval.json", _adm(5.00, n=50000))
    text = R.main([str(tmp_path / "outputs")])
    t1 = _section(text, "### SFD Table 1")
    header = [c.strip() for c in t1.splitlines()[4].strip("|").split("|")]
    assert header == ["model", "run", "70K", "120K", "400K", "1M", "2M", "4M"]
    xl = _row(t1, "LightningDiT-XL/1 + SFD")
    assert xl[2:] == ["not run / 8.79", "not run / 6.22", "3.60 / 3.53 (+0.07)", "not run / 2.82",
                      "not run / 2.74", "2.50 / 2.54 (-0.04)"]
    assert _row(t1, "LightningDiT-XL/1")[2:4] == ["–", "–"]                  # no paper number, no result
    assert _row(t1, "LightningDiT-B/1 + REPA")[4] == "20.00 (n=10000) / 21.45 (-1.45)"
    t2 = _section(text, "### SFD Table 2")
    assert _row(t2, "SFD (XL, 675M)")[3:] == ["not run / 1.30", "not run / 3.87", "not run / 233.4",
                                              "not run / 0.78", "not run / 0.64"]
    row800 = [c.strip() for c in [line for line in t2.splitlines() if "800ep" in line and "xl" in line][0]
              .strip().strip("|").split("|")]
    assert row800[3:] == ["1.10 / 1.06 (+0.04)", "4.00 / 3.89 (+0.11)", "260.0 / 267.0 (-7.0)",
                          "0.79 / 0.78 (+0.01)", "0.66 / 0.67 (-0.01)"]
    dt = _section(text, "### SFD delta-t")
    assert _row(dt, "1.0")[2] == "5.00 / 5.41 (-0.41)" and _row(dt, "0.3")[2] == "not run / 3.03"
    assert _row(dt, "0.4*")[2] == "not run / 3.16"                        # read off the plot
    # a step no column shows is not lost silently: it is the run's newest result, not a cell
    assert "2.60" not in t1


def test_sfd_runs_are_the_paper_configs():
    """Every SFD run the report reads is a config of configs/sfd/paper/ whose exp_name is its stem,
    and the sample folder names carry the checkpoint step the report parses."""
    from pathlib import Path

    from configs.schema import load_config
    from sampling.protocol import folder_name, settings

    root = Path(__file__).resolve().parents[2] / "configs" / "sfd" / "paper"
    for run in R.sfd_runs():
        cfg = load_config(str(root / f"{run}.yaml"))
        assert cfg.train.exp_name == run
    cfg = load_config(str(root / "sfd_t1_sfd_xl1.yaml"), ["ckpt_path=outputs/train/sfd_t1_sfd_xl1/checkpoints/1000000.pt"])
    assert R.step_of(folder_name(settings(cfg))) == 1_000_000
    assert R.step_of("a-ckpt-0070000") == 70000 and R.step_of("lightningdit-xl-1-ckpt-last-dopri5") is None
