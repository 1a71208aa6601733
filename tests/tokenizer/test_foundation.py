"""Foundation-model feature extractors (tokenizer/foundation.py) with tiny random ViTs of the
same timm families (same code path as ViT-L, tiny dims)."""
import pytest
import torch
import torch.nn.functional as F

from tokenizer.foundation import FoundationModel

TINY = dict(embed_dim=32, depth=2, num_heads=2)



def _tiny(name, **kw):
    torch.manual_seed(0)
    return FoundationModel(name, random_init=True, model_kwargs=TINY, **kw)


@pytest.fixture(scope="module")
def x256():
    return torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_dinov2_features_256(x256):
    fm = _tiny("dinov2")
    out = fm(x256)
    assert out.shape == (2, 32, 16, 16)
    assert not any(p.requires_grad for p in fm.parameters())
    # reference: bilinear 224 resize, forward_features, drop cls, token n -> (n // 16, n % 16)
    tokens = fm.model.forward_features(F.interpolate(x256, size=(224, 224), mode="bilinear",
                                                     align_corners=False))
    assert tokens.shape[1] == 1 + 256
    assert torch.allclose(out[1, :, 3, 5], tokens[1, 1 + 3 * 16 + 5], atol=1e-6)
    assert torch.allclose(out.flatten(2).transpose(1, 2), tokens[:, 1:], atol=1e-6)


def test_mae_features_256_unresized(x256):
    fm = _tiny("mae")
    out = fm(x256)
    assert out.shape == (2, 32, 16, 16)
    tokens = fm.model.forward_features(x256)   # 256 px with interpolated positions, no resize
    assert torch.allclose(out.flatten(2).transpose(1, 2), tokens[:, 1:], atol=1e-6)
    with pytest.raises(ValueError, match="patch grid"):
        fm(x256, grid=(8, 8))


def test_grid_follows_latent_and_normalisation(x256):
    fm = _tiny("dinov2")
    small = fm(x256[:, :, :64, :64], grid=(16, 16))   # a 64 px image aligned to a 16 x 16 latent
    assert small.shape == (2, 32, 16, 16)
    fm_norm = _tiny("dinov2", normalize_input=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(fm_norm(x256), fm(((x256 + 1) / 2 - mean) / std), atol=1e-5)
    assert not torch.allclose(fm_norm(x256), fm(x256), atol=1e-3)
    fm.train()
    assert not fm.training  # always eval


def test_weights_timm_and_original_layouts(tmp_path, x256):
    from safetensors.torch import save_file

    ref = _tiny("dinov2")
    sd = {k: v.clone() for k, v in ref.model.state_dict().items()}
    save_file(sd, str(tmp_path / "model.safetensors"))
    torch.manual_seed(1)
    loaded = FoundationModel("dinov2", weights=str(tmp_path / "model.safetensors"), model_kwargs=TINY)
    assert torch.equal(loaded(x256), ref(x256))
    # original DINOv2 release: extra mask_token
    torch.save({**sd, "mask_token": torch.zeros(1, 32)}, tmp_path / "dinov2_orig.pth")
    loaded = FoundationModel("dinov2", weights=str(tmp_path / "dinov2_orig.pth"), model_kwargs=TINY)
    assert torch.equal(loaded(x256), ref(x256))
    # original MAE release: {'model': state_dict}
    mae = _tiny("mae")
    torch.save({"model": mae.model.state_dict()}, tmp_path / "mae_orig.pth")
    torch.manual_seed(2)
    loaded = FoundationModel("mae", weights=str(tmp_path / "mae_orig.pth"), model_kwargs=TINY)
    assert torch.equal(loaded(x256), mae(x256))
    # a wrong file fails naming keys
    torch.save({"cls_token": torch.zeros(1, 1, 32)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="missing keys"):
        FoundationModel("dinov2", weights=str(tmp_path / "bad.pth"), model_kwargs=TINY)


def test_missing_weights_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="timm/vit_large_patch14_dinov2.lvd142m"):
        FoundationModel("dinov2", weights=str(tmp_path / "nope.safetensors"), model_kwargs=TINY)
    with pytest.raises(FileNotFoundError, match="timm/vit_large_patch16_224.mae"):
        FoundationModel("mae", weights=None, model_kwargs=TINY)
    with pytest.raises(ValueError, match="unknown foundation model"):
        FoundationModel("clip", random_init=True)


def test_large_configs_on_meta():
    """Full-size ViT-L/14 DINOv2 and ViT-L/16 MAE: 1024-d features, key counts (no allocation)."""
    with torch.device("meta"):
        dino = FoundationModel("dinov2", random_init=True)
        mae = FoundationModel("mae", random_init=True)
    assert dino.feature_dim == mae.feature_dim == 1024
    assert (dino.patch_size, mae.patch_size) == (14, 16)
    assert len(dino.model.state_dict()) == 342 and len(mae.model.state_dict()) == 294
