"""Documentation a reader can resolve: no file of the repository cites a file that is not in it,
and every `docs/reference_behaviour.md §N.M` / `docs/adm_evaluation.md §N` citation names a
heading that exists."""
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEXT = (".py", ".yaml", ".yml", ".sh", ".md", ".txt", ".ini", ".toml", ".cfg")
# Files that are not in this repository (the specs it was written from, a machine's paths).
FOREIGN = re.compile(r"\b(REFERENCE|ADM_EVAL|ENV|PAPER|PEERS|STYLE|DDPM)\.md\b|/work/shared|\.\./shared")
CITATION = re.compile(r"docs/(reference_behaviour|adm_evaluation)\.md §(\d+(?:\.\d+)*)")


def repo_text_files():
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split()
    return [REPO / f for f in listed if f.endswith(TEXT) and (REPO / f).is_file()
            and not f.startswith("docs/_drafts/")]


def headings(doc: str) -> set:
    text = (REPO / "docs" / f"{doc}.md").read_text()
    return set(re.findall(r"^#{2,4} (\d+(?:\.\d+)*)[. ]", text, flags=re.M))


def test_no_citation_of_files_outside_the_repository():
    offenders = [f"{p.relative_to(REPO)}:{i + 1}: {line.strip()}"
                 for p in repo_text_files() if p.name != "test_docs.py"
                 for i, line in enumerate(p.read_text(errors="replace").splitlines()) if FOREIGN.search(line)]
    assert offenders == []


@pytest.mark.parametrize("doc", ["reference_behaviour", "adm_evaluation"])
def test_cited_sections_exist(doc):
    known = headings(doc)
    assert {"1", "2", "5"} <= known
    cited = {(p.relative_to(REPO), m.group(2)) for p in repo_text_files()
             for m in CITATION.finditer(p.read_text(errors="replace")) if m.group(1) == doc}
    assert cited, "no citations found: the pattern is wrong"
    assert sorted((str(p), n) for p, n in cited if n not in known) == []


def test_every_reproduction_config_names_its_run_after_its_file():
    """The README's promise that makes tools/paper_report.py find each run: exp_name = the config
    stem, and every stem is a run some table row reads."""
    from configs.schema import load_config
    from tools.paper_report import known_runs

    configs = sorted((REPO / "configs" / "reproductions").glob("*.yaml"))
    assert len(configs) >= 44
    names = {p.stem: load_config(str(p)).train.exp_name for p in configs}
    assert {stem: name for stem, name in names.items() if name != stem} == {}
    assert sorted(set(names) - set(known_runs())) == []
    assert "lightningdit_xl_vavae_f16d32_64ep_cfg" in names and "lightningdit_xl_vavae_f16d32_800ep_cfg" in names


def test_the_report_finds_a_table3_run_where_sampling_writes_it(tmp_path):
    """output/{exp_name}/{sample folder}_adm_eval.json of both Table 3 configs lands in its own row."""
    import json

    from configs.schema import load_config
    from tools.paper_report import ADM, collect

    for stem in ("lightningdit_xl_vavae_f16d32_64ep_cfg", "lightningdit_xl_vavae_f16d32_800ep_cfg"):
        cfg = load_config(str(REPO / "configs" / "reproductions" / f"{stem}.yaml"))
        run = tmp_path / cfg.train.output_dir / cfg.train.exp_name
        run.mkdir(parents=True)
        (run / "lightningdit-xl-1-ckpt-0080000-euler-250_adm_eval.json").write_text(
            json.dumps({"fid": 2.0, "sfid": 4.0, "inception_score": 250.0, "precision": 0.8, "recall": 0.6}))
    found, unmatched = collect([str(tmp_path / "output")])
    assert unmatched == []
    assert {run for kind, run in found if kind == ADM} == {"lightningdit_xl_vavae_f16d32_64ep_cfg",
                                                           "lightningdit_xl_vavae_f16d32_800ep_cfg"}
