"""tools/reliability_audit.py runs every command as an argument list (no shell parses a path), and
its checks catch a side effect that must not happen."""
import importlib

from conftest import REPO


def audit():
    return importlib.import_module("tools.reliability_audit")


def test_no_case_goes_through_a_shell():
    module = audit()
    assert "shell=True" not in (REPO / "tools/reliability_audit.py").read_text()
    cases = module.cases()
    assert len({c.name for c in cases}) == len(cases)
    for case in cases:
        assert isinstance(case.cmd, list) and all(isinstance(a, str) for a in case.cmd), case.name
        assert all(callable(step) for step in case.setup), case.name
    security = [c for c in cases if c.area == "security"]
    assert len(security) >= 15 and all(c.culprit for c in security)


def test_a_case_fails_when_its_side_effect_happens(tmp_path):
    module = audit()
    base = tmp_path / "base"
    base.mkdir()
    refused = module.Case("security", "crafted WORLD_SIZE", ["bash", f"{REPO}/run_train.sh", "x.yaml"], "WORLD_SIZE",
                          env={"WORLD_SIZE": "a[$(touch PWNED)]"}, absent=["PWNED"])
    row = module.run_case(refused, base, timeout=120)
    assert row["verdict"] == "ok" and row["status"] == 2 and "WORLD_SIZE" in row["last"]
    assert row["command"].startswith("WORLD_SIZE='a[$(touch PWNED)]' bash run_train.sh")
    ran = module.Case("security", "a side effect", ["bash", "-c", "touch PWNED; exit 1"], "",
                      absent=["PWNED"])
    assert "created ['PWNED']" in module.run_case(ran, base, timeout=120)["verdict"]
    leak = module.Case("security", "a leak", ["bash", "-c", "echo $AUDIT_SECRET > log.txt; exit 1"], "",)
    assert "AUDIT_SECRET written to ['log.txt']" in module.run_case(leak, base, timeout=120)["verdict"]
