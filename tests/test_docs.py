"""Documentation a reader can resolve: no file of the repository cites a file that is not in it,
and every `docs/reference_behaviour.md §N.M` / `docs/adm_evaluation.md §N` citation names a
heading that exists."""
import re
import shlex
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
    assert {key[1] for key in found if key[0] == ADM} == {"lightningdit_xl_vavae_f16d32_64ep_cfg",
                                                           "lightningdit_xl_vavae_f16d32_800ep_cfg"}


#################################################################################
#          The README and its pages: a guide whose commands and links work      #
#################################################################################

README = REPO / "README.md"
# The pages split out of the README (the others have their own owners and conventions).
GUIDE_PAGES = ["weights", "commands", "training", "reproducing", "configuration", "faithful_vs_fixed",
               "troubleshooting", "demo", "benchmarks", "verification"]
GUIDES = [README] + [REPO / "docs" / f"{name}.md" for name in GUIDE_PAGES]
LINK = re.compile(r"\]\(([^)\s]+)\)")
ISSUE_LINK = re.compile(r"\[#(\d+)\]\(https://github\.com/[\w.-]+/[\w.-]+/(?:issues|pull)/(\d+)\)")


def anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set:
    return {anchor(h) for h in re.findall(r"^#{1,6} (.+)$", outside_code(path.read_text()), flags=re.M)}


def outside_code(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def bash_commands(path: Path) -> list:
    """The commands of the ```bash blocks: continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", path.read_text(), flags=re.M | re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.split(r"(?:^|\s)#", line, maxsplit=1)[0].strip()
            if line:
                commands.append(line)
    return commands


def test_the_readme_is_a_guide_with_a_table_of_contents():
    text = README.read_text()
    assert len(text.splitlines()) < 400
    contents = text.split("## Contents", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"\]\(#([^)]+)\)", contents))
    sections = {anchor(h) for h in re.findall(r"^## (.+)$", outside_code(text), flags=re.M)} - {"contents"}
    assert sorted(sections - listed) == [] and sorted(listed - anchors(README)) == []
    for heading in ("Install", "The demo", "FID-50K from the released weights", "Training on an 8-GPU node",
                    "Training on several nodes", "What the loss should look like",
                    "Reproducing the paper: one ablation end to end"):
        assert anchor(heading) in anchors(README), heading


@pytest.mark.parametrize("page", GUIDES, ids=lambda p: p.name if p == README else p.stem)
def test_every_link_resolves(page):
    broken = []
    for target in LINK.findall(outside_code(page.read_text())):
        if target.startswith(("http://", "https://")):
            continue
        path, _, frag = target.partition("#")
        file = page if not path else (page.parent / path).resolve()
        if not file.exists():
            broken.append(target)
        elif frag and file.suffix == ".md" and frag not in anchors(file):
            broken.append(target)
    assert broken == []


@pytest.mark.parametrize("page", GUIDES, ids=lambda p: p.name if p == README else p.stem)
def test_the_authors_issues_are_cited_as_links(page):
    text = page.read_text()
    linked = ISSUE_LINK.findall(text)
    assert all(a == b for a, b in linked)
    bare = re.findall(r"(?<![\w/\[])#(\d+)\b", ISSUE_LINK.sub("", outside_code(text)))
    assert bare == [], f"issue numbers without a link: {bare}"


def test_every_command_is_documented_with_an_example():
    """Every launcher and tool has a runnable example in the README or docs/commands.md."""
    documented = " ".join(bash_commands(README) + bash_commands(REPO / "docs" / "commands.md"))
    launchers = [p.name for p in REPO.glob("run_*.sh")]
    assert {"run_demo.sh", "run_train.sh", "run_inference.sh", "run_fid_eval.sh"} <= set(launchers)
    entry = [p.name for p in REPO.glob("*.py")]
    internal = {"launch.sh", "launch_errors.py", "setup_venv.sh", "evaluate_tokenizer.py", "__init__.py", "common.py"}
    tools = [str(p.relative_to(REPO)) for p in (REPO / "tools").rglob("*") if p.suffix in (".py", ".sh")
             and p.name not in internal]
    missing = [n for n in launchers if f"bash {n}" not in documented]
    launched = {n for n in entry for sh in REPO.glob("run_*.sh") if n in sh.read_text() and f"bash {sh.name}" in documented}
    missing += [n for n in entry if n not in documented and n not in launched]
    missing += [t for t in tools if t not in documented and t.replace("/", ".")[:-3] not in documented]
    assert missing == []


def test_the_readme_shows_every_launcher_used_on_its_paths():
    commands = " ".join(bash_commands(README))
    for script in ("run_demo.sh", "run_inference.sh", "run_fid_eval.sh", "run_train.sh", "run_extraction.sh",
                   "run_tests.sh", "tools/setup_venv.sh", "tools/fetch_weights.py", "tools/paper_report.py"):
        assert script in commands, script


@pytest.mark.parametrize("page", [README, REPO / "docs" / "commands.md", REPO / "docs" / "weights.md",
                                  REPO / "docs" / "training.md"], ids=lambda p: p.name)
def test_documented_commands_name_files_that_exist(page):
    """Every repository path in a documented command exists (scripts, configs, tools)."""
    missing = []
    for command in bash_commands(page):
        for word in shlex.split(command):
            value = word.split("=", 1)[-1]
            if re.fullmatch(r"(configs|tools|datasets|evaluation)/[\w./-]+\.(yaml|py|sh)|run_\w+\.sh|\w+\.py",
                            value) and not (REPO / value).exists():
                missing.append(value)
    assert missing == []


def _overrides_of(command: str):
    """(config, [key=value ...]) of a run_train.sh / run_inference.sh / run_fast_inference.sh line."""
    words = shlex.split(command)
    for i, word in enumerate(words):
        if word in ("run_train.sh", "run_inference.sh", "run_fast_inference.sh") and i > 0 and words[i - 1] == "bash":
            rest = words[i + 1:]
            if rest and rest[0].endswith(".yaml"):
                return rest[0], [w for w in rest[1:] if re.fullmatch(r"[a-z_]+(\.[a-z_]+)+=.*", w)]
    return None


@pytest.mark.parametrize("page", [README, REPO / "docs" / "commands.md", REPO / "docs" / "reproducing.md"],
                         ids=lambda p: p.name)
def test_documented_training_and_sampling_overrides_load(page):
    """The config and every key=value of each documented run_train.sh / run_inference.sh line load
    (the keys exist, the values have the right type and range)."""
    from configs.schema import load_config

    checked = 0
    for command in bash_commands(page):
        found = _overrides_of(command)
        if found is None or not (REPO / found[0]).is_file():
            continue
        load_config(str(REPO / found[0]), found[1])
        checked += 1
    assert checked >= (8 if page == README else 3)


@pytest.mark.parametrize("page", GUIDES, ids=lambda p: p.name if p == README else p.stem)
def test_documented_fetch_names_exist(page):
    from tools.fetch_weights import BY_NAME

    unknown = []
    for command in bash_commands(page):
        words = shlex.split(command)
        if "tools/fetch_weights.py" not in words or "--extract" in words:
            continue
        args = words[words.index("tools/fetch_weights.py") + 1:]
        names = [w for i, w in enumerate(args) if not w.startswith("-") and (i == 0 or args[i - 1] != "--root")]
        unknown += [n for n in names if n not in BY_NAME]
    assert unknown == []


def test_the_demo_time_is_given_once():
    """One number per claim: the demo's wall time appears in the README once and nowhere else."""
    times = re.findall(r"\*\*Time: ([^*]+)\*\*", README.read_text())
    assert len(times) == 1
    elsewhere = [p for p in GUIDES[1:] + [REPO / "run_demo.sh"] if times[0] in p.read_text()]
    assert elsewhere == []
    assert "run_demo.sh" not in " ".join(re.findall(r"^\|.*\|$", (REPO / "docs" / "benchmarks.md").read_text(),
                                                       flags=re.M)).replace("DEMO_SMOKE=1 bash run_demo.sh", "")
