"""Write requirements-lock.txt from the active environment (run after the suite passed in it).

    python tools/lock_requirements.py [--out requirements-lock.txt]

Pins every installed distribution except this project, the CUDA runtime wheels (nvidia-*,
triton: they follow the torch build) and local version labels (torch==2.14.1 then matches both
2.14.1+cpu and 2.14.1+cu130). tools/setup_venv.sh installs under these constraints by default.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import re
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
SKIP = re.compile(r"^(nvidia-|triton$|lightningdit-repro$|pip$|setuptools$|wheel$)", re.IGNORECASE)
HEADER = """# The versions the test suite last passed with ({where}, {date}): tools/setup_venv.sh installs
# requirements.txt under these constraints by default. DEPS=latest bash tools/setup_venv.sh ignores them
# (newest releases, in .venv-latest); tools/test_latest.sh runs the smoke and launcher tests there.
# CUDA builds aside: torch==X matches X+cu*/X+cpu builds; the nvidia-* and triton wheels are left to
# the torch build you install. Regenerate after a passing run: python tools/lock_requirements.py
"""


def pins() -> Dict[str, str]:
    """{distribution name: version without local label} of the active environment."""
    out = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and not SKIP.match(name):
            out[name] = dist.version.split("+", 1)[0]
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "requirements-lock.txt"))
    args = parser.parse_args(argv)
    where = f"Python {platform.python_version()}, {platform.machine()}"
    text = HEADER.format(where=where, date=datetime.date.today().isoformat())
    text += "".join(f"{name}=={version}\n" for name, version in sorted(pins().items(), key=lambda kv: kv[0].lower()))
    Path(args.out).write_text(text)
    print(f"wrote {args.out} ({len(pins())} pins)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
