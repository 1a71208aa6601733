"""utils/state_dict.py: the one strict loader (models, tokenizer and VA-VAE training use it)."""
import pytest
import torch
import torch.nn as nn

from utils.state_dict import SHOWN, check_state_dict, load_strict


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def test_loads_a_matching_state_dict():
    src, dst = net(), net()
    with torch.no_grad():
        for p in src.parameters():
            p.add_(1)
    load_strict(dst, src.state_dict(), "src.pt")
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))


def test_one_line_naming_source_keys_and_shapes():
    dst = net()
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    sd = dict(net().state_dict())
    del sd["2.bias"]
    sd["3.weight"] = torch.zeros(1)
    sd["0.weight"] = torch.zeros(5, 3)
    with pytest.raises(ValueError) as err:
        load_strict(dst, sd, "/ckpt/a.pt", "the toy")
    msg = str(err.value)
    assert msg == ("/ckpt/a.pt does not match the toy: 1 missing keys ['2.bias'], 1 unexpected keys ['3.weight'], "
                   "1 shape mismatches ['0.weight: file (5, 3) vs model (4, 3)']")
    assert all(torch.equal(v, before[k]) for k, v in dst.state_dict().items())  # nothing half-loaded


def test_long_lists_are_cut_with_the_full_count():
    expected = {f"w{i}": torch.zeros(1) for i in range(SHOWN + 5)}
    with pytest.raises(ValueError, match=rf"{SHOWN + 5} missing keys \[.*'w{SHOWN - 1}'\] \(\+5 more\)$"):
        check_state_dict(expected, {}, "f.pt")


def test_shapes_only_for_warm_starts():
    expected = {"a": torch.zeros(2), "b": torch.zeros(3)}
    check_state_dict(expected, {"a": torch.ones(2), "c": torch.ones(1)}, "init.pt", same_keys=False)
    with pytest.raises(ValueError, match=r"^init.pt does not match the model: 1 shape mismatches \['a: file \(1,\) vs"):
        check_state_dict(expected, {"a": torch.ones(1)}, "init.pt", same_keys=False)
