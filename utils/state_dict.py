"""Strict state-dict loading whose error names the file and the offending keys.

`module.load_state_dict(sd, strict=True)` reports every mismatch in a multi-line message that
does not say which file was read, and `strict=False` (what several reference loaders use) hides
a wrong prefix by silently leaving random weights. The checks here run before anything is
copied, so a failed load leaves the module untouched, and they raise one ValueError line:

    <source> does not match <what>: 2 missing keys ['a', 'b'], 1 unexpected keys ['c'],
    1 shape mismatches ['d: file (3,) vs model (4,)']

with at most `SHOWN` names per list (the count is always the full one).
"""
from __future__ import annotations

from typing import List, Mapping

import torch
import torch.nn as nn

SHOWN = 8  # names listed per kind of problem; the count covers all of them


def _listed(names: List[str], kind: str) -> str:
    more = f" (+{len(names) - SHOWN} more)" if len(names) > SHOWN else ""
    return f"{len(names)} {kind} {names[:SHOWN]}{more}"


def check_state_dict(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], source: str,
                     what: str = "the model", *, same_keys: bool = True) -> None:
    """Raise ValueError if `found` (read from `source`) cannot be loaded where `expected` lives.

    same_keys=True: any missing or unexpected key is an error, and so is any shape mismatch.
    same_keys=False (warm starts that load what matches): only the shapes of common keys count."""
    problems = []
    if same_keys:
        missing = [k for k in expected if k not in found]
        unexpected = [k for k in found if k not in expected]
        if missing:
            problems.append(_listed(missing, "missing keys"))
        if unexpected:
            problems.append(_listed(unexpected, "unexpected keys"))
    mismatched = [f"{k}: file {tuple(found[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in expected.items() if k in found and tuple(found[k].shape) != tuple(v.shape)]
    if mismatched:
        problems.append(_listed(mismatched, "shape mismatches"))
    if problems:
        raise ValueError(f"{source} does not match {what}: " + ", ".join(problems))


def load_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str,
                what: str = "the model") -> None:
    """`module.load_state_dict(state_dict, strict=True)` after `check_state_dict`, so a mismatch is
    one line naming `source`, `what` and the keys, and nothing is half-loaded."""
    check_state_dict(module.state_dict(), state_dict, source, what)
    module.load_state_dict(state_dict, strict=True)
