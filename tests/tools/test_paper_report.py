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
    # every paper row of Tables 1-6 is there: 10 + 9 + 2 + 5 + 5 + 6
    assert len(rows) == 37
    assert all("not run" in line for line in rows)
