"""LPIPSLoss (tokenizer/lpips.py) against the `lpips` package's own forward."""
import hashlib
import types

import lpips
import pytest
import torch
from torchvision.models.vgg import cfgs, make_layers

from tokenizer.lpips import LPIPSLoss, lpips_calibration_path


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """A torchvision-format VGG16 file (random weights, classifier included) standing in for
    vgg16-397923af.pth."""
    torch.manual_seed(0)
    features = make_layers(cfgs["D"])  # torchvision's VGG16 `features` (skips the 120M classifier)
    for m in features.modules():  # torchvision's init keeps activations O(1) (no denormal slow-down)
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    sd = {f"features.{k}": v for k, v in features.state_dict().items()}
    sd["classifier.0.weight"] = torch.zeros(2, 2)  # present in the real file, ignored
    path = tmp_path_factory.mktemp("vgg") / "vgg16-397923af.pth"
    torch.save(sd, path)
    return path, features


@pytest.fixture(scope="module")
def loss(vgg_file):
    return LPIPSLoss(vgg_file[0])


def test_calibration_file_is_the_reference_one():
    with open(lpips_calibration_path(), "rb") as f:
        assert hashlib.md5(f.read()).hexdigest() == "d507d7349b931f0638a25a48a722f98a"


def test_weights_and_keys(loss, vgg_file):
    sd = loss.state_dict()
    assert set(k.split(".")[0] for k in sd) == {"scaling_layer", "net", "lin0", "lin1", "lin2", "lin3", "lin4"}
    # torchvision features.{i} -> net.slice{s}.{i}
    feats = vgg_file[1].state_dict()
    for i, s in ((0, 1), (2, 1), (5, 2), (7, 2), (10, 3), (14, 3), (17, 4), (21, 4), (24, 5), (28, 5)):
        assert torch.equal(sd[f"net.slice{s}.{i}.weight"], feats[f"{i}.weight"])
    calib = torch.load(lpips_calibration_path(), map_location="cpu", weights_only=True)
    for k, v in calib.items():
        assert torch.equal(sd[k], v)
    assert not any(p.requires_grad for p in loss.parameters()) and not loss.training
    torch.testing.assert_close(sd["scaling_layer.shift"].flatten(), torch.tensor([-0.030, -0.088, -0.188]))


def test_matches_lpips_package_forward(loss):
    # The package's own LPIPS.forward run on our modules (same weights, no second VGG to build).
    ref_self = types.SimpleNamespace(version="0.1", scaling_layer=loss.scaling_layer, net=loss.net, L=5,
                                     lpips=True, spatial=False,
                                     lins=[loss.lin0, loss.lin1, loss.lin2, loss.lin3, loss.lin4])
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    with torch.no_grad():
        d = loss(x, y)
        d_ref = lpips.LPIPS.forward(ref_self, x, y)
    assert d.shape == (2, 1, 1, 1)
    torch.testing.assert_close(d, d_ref, rtol=1e-5, atol=1e-7)
    assert (d > 0).all()
    assert loss(x, x).abs().max().item() == 0.0


def test_gradient_flows_to_inputs(loss):
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    y = torch.zeros(1, 3, 32, 32, requires_grad=True)
    loss(x, y).sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0


def test_missing_vgg_weights(tmp_path, monkeypatch):
    monkeypatch.delenv("LPIPS_VGG_WEIGHTS", raising=False)
    with pytest.raises(FileNotFoundError, match="vgg16-397923af.pth"):
        LPIPSLoss()
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        LPIPSLoss(tmp_path / "nothere.pth")
    monkeypatch.setenv("LPIPS_VGG_WEIGHTS", str(tmp_path / "env.pth"))
    with pytest.raises(FileNotFoundError, match="env.pth"):
        LPIPSLoss()


def test_random_init_fills_every_tensor():
    loss = LPIPSLoss(random_init=True)
    for k, v in loss.state_dict().items():
        assert torch.isfinite(v).all(), k
        if k.endswith("weight"):
            assert v.abs().sum() > 0, k
    torch.testing.assert_close(loss.scaling_layer.scale.flatten(), torch.tensor([0.458, 0.448, 0.450]))
