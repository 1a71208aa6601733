"""Foundation-model feature extractors (tokenizer/foundation.py) with tiny random ViTs of the
same timm families (same code path as ViT-L, tiny dims)."""
import numpy as np
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
        FoundationModel("siglip", random_init=True)
    # `{embed_dim:32}` without a space parses as the key 'embed_dim:32' with no value
    with pytest.raises(ValueError, match="'embed_dim:32'"):
        FoundationModel("dinov2", random_init=True, model_kwargs={"embed_dim:32": None})


def test_large_configs_on_meta():
    """Full-size ViT-L/14 DINOv2 and ViT-L/16 MAE: 1024-d features, key counts (no allocation)."""
    with torch.device("meta"):
        dino = FoundationModel("dinov2", random_init=True)
        mae = FoundationModel("mae", random_init=True)
    assert dino.feature_dim == mae.feature_dim == 1024
    assert (dino.patch_size, mae.patch_size) == (14, 16)
    assert len(dino.model.state_dict()) == 342 and len(mae.model.state_dict()) == 294


# Tiny SAM: 64 px native input, 4-px patches -> a 16 x 16 token grid, 16-channel neck.
TINY_SAM = dict(img_size=64, patch_size=4, embed_dim=32, depth=2, num_heads=2, window_size=4,
                global_attn_indexes=(1,), neck_chans=16)


def test_clip_projected_patch_tokens(x256):
    """CLIP: patch grid = latent grid, tokens after ln_post through the 512-d image projection."""
    torch.manual_seed(0)
    fm = FoundationModel("clip", random_init=True, model_kwargs=TINY)
    assert fm.feature_dim == 512 and fm.patch_size == 16
    out = fm(x256)
    assert out.shape == (2, 512, 16, 16)                  # 256 px at f16: 16 x 16, as the latent
    tokens = fm.model.forward_features(x256)              # unresized at 256 px
    proj = tokens[:, 1:] @ fm.model.head.weight.T + fm.model.head.bias
    assert torch.allclose(out[0, :, 2, 7], proj[0, 2 * 16 + 7], atol=1e-5)
    assert torch.allclose(out.flatten(2).transpose(1, 2), proj, atol=1e-5)
    # a 32 px image for an 8 x 8 latent is resized to 8 x 16 = 128 px (bilinear, as DINOv2)
    small = fm(x256[:, :, :32, :32], grid=(8, 8))
    up = F.interpolate(x256[:, :, :32, :32], size=(128, 128), mode="bilinear", align_corners=False)
    assert torch.allclose(small.flatten(2).transpose(1, 2), fm.model.head(fm.model.forward_features(up)[:, 1:]),
                          atol=1e-5)
    # CLIP's own normalisation
    fm_norm = FoundationModel("clip", random_init=True, normalize_input=True, model_kwargs=TINY)
    fm_norm.load_state_dict(fm.state_dict())
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    assert torch.allclose(fm_norm(x256), fm(((x256 + 1) / 2 - mean) / std), atol=1e-5)


def test_sam_native_input_pooled_to_latent_grid(x256):
    """SAM: resized to its native input, the neck's grid area-averaged to the latent grid."""
    torch.manual_seed(0)
    fm = FoundationModel("sam", random_init=True, model_kwargs=TINY_SAM)
    assert fm.feature_dim == 16 and fm.native_size == (64, 64)
    out = fm(x256, grid=(4, 4))                            # e.g. a 4 x 4 latent
    assert out.shape == (2, 16, 4, 4)
    native = F.interpolate(x256, size=(64, 64), mode="bilinear", align_corners=False)
    neck = fm.model.forward_features(native)               # (2, 16, 16, 16)
    assert neck.shape == (2, 16, 16, 16)
    # latent cell (1, 2) is the mean of neck cells [4:8, 8:12]
    assert torch.allclose(out[1, :, 1, 2], neck[1, :, 4:8, 8:12].mean(dim=(-1, -2)), atol=1e-5)
    assert torch.allclose(out, F.avg_pool2d(neck, 4), atol=1e-5)
    # the same image at another resolution reaches the same native input
    assert fm(x256[:, :, ::2, ::2], grid=(16, 16)).shape == (2, 16, 16, 16)
    assert torch.allclose(fm(x256, grid=(16, 16)), neck, atol=1e-5)


def test_sam_clip_weights_and_missing_file(tmp_path, x256):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    sam = FoundationModel("sam", random_init=True, model_kwargs=TINY_SAM)
    # original segment-anything release: 'image_encoder.*' keys (plus prompt encoder / decoder)
    orig = {f"image_encoder.{k}": v.clone() for k, v in sam.model.state_dict().items()}
    orig = {k.replace("mlp.fc", "mlp.lin"): v for k, v in orig.items()}
    orig["mask_decoder.iou_token.weight"] = torch.zeros(1, 16)
    torch.save(orig, tmp_path / "sam_vit_l.pth")
    torch.manual_seed(1)
    loaded = FoundationModel("sam", weights=str(tmp_path / "sam_vit_l.pth"), model_kwargs=TINY_SAM)
    assert torch.equal(loaded(x256, grid=(4, 4)), sam(x256, grid=(4, 4)))
    clip = FoundationModel("clip", random_init=True, model_kwargs=TINY)
    save_file({k: v.clone() for k, v in clip.model.state_dict().items()}, str(tmp_path / "clip.safetensors"))
    torch.manual_seed(2)
    loaded = FoundationModel("clip", weights=str(tmp_path / "clip.safetensors"), model_kwargs=TINY)
    assert torch.equal(loaded(x256), clip(x256))
    for name, hub in (("sam", "timm/samvit_large_patch16.sa1b"), ("clip", "timm/vit_base_patch16_clip_224.openai")):
        missing = tmp_path / f"{name}_missing.safetensors"
        with pytest.raises(FileNotFoundError, match=f"{missing}.*{hub}"):
            FoundationModel(name, weights=str(missing), model_kwargs=TINY_SAM if name == "sam" else TINY)


def test_sam_clip_full_size_on_meta():
    """Full-size SAM ViT-L and CLIP ViT-B/16: feature widths and parameter counts (no allocation)."""
    with torch.device("meta"):
        sam = FoundationModel("sam", random_init=True)
        clip = FoundationModel("clip", random_init=True)
    assert (sam.feature_dim, sam.native_size, sam.patch_size) == (256, (1024, 1024), 16)
    assert (clip.feature_dim, clip.patch_size) == (512, 16)
    assert round(sum(p.numel() for p in sam.parameters()) / 1e6) == 308     # SAM ViT-L image encoder
    assert round(sum(p.numel() for p in clip.parameters()) / 1e6) == 86      # CLIP ViT-B/16 image tower


#################################################################################
#               SFD's semantic encoder: DINOv2 ViT-B/14 with registers          #
#################################################################################

# Tiny DINOv2-reg: 14-px patches, positions trained on a 5 x 5 grid (70 px), run at 56 px (4 x 4),
# so the position table is resampled as at 518 -> 224 px in the real model.
TINY_REG = dict(embed_dim=32, depth=2, num_heads=2, img_size=70)


def _official_dinov2_reg(d=32, depth=2, grid=5, seed=0):
    """A state dict in the layout of the official dinov2_vitb14_reg4_pretrain.pth (keys of
    facebookresearch/dinov2's DinoVisionTransformer), with random values."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.2  # noqa: E731
    sd = {"cls_token": r(1, 1, d), "pos_embed": r(1, 1 + grid * grid, d), "register_tokens": r(1, 4, d),
          "mask_token": r(1, d), "patch_embed.proj.weight": r(d, 3, 14, 14), "patch_embed.proj.bias": r(d),
          "norm.weight": 1 + r(d), "norm.bias": r(d)}
    for i in range(depth):
        p = f"blocks.{i}."
        sd.update({p + "norm1.weight": 1 + r(d), p + "norm1.bias": r(d), p + "attn.qkv.weight": r(3 * d, d),
                   p + "attn.qkv.bias": r(3 * d), p + "attn.proj.weight": r(d, d), p + "attn.proj.bias": r(d),
                   p + "ls1.gamma": r(d), p + "norm2.weight": 1 + r(d), p + "norm2.bias": r(d),
                   p + "mlp.fc1.weight": r(4 * d, d), p + "mlp.fc1.bias": r(4 * d), p + "mlp.fc2.weight": r(d, 4 * d),
                   p + "mlp.fc2.bias": r(d), p + "ls2.gamma": r(d)})
    return sd


def _dinov2_reference(sd, x, heads=2):
    """DINOv2-with-registers forward_features written from the official model's description:
    patch embed; [cls; patches] + positions (the patch table bicubic-resized with antialias, as
    the hub's reg models do); registers inserted after cls; pre-LN blocks with layer scale;
    final norm. Returns (x_norm_clstoken, x_norm_patchtokens)."""
    B, d = x.shape[0], sd["cls_token"].shape[-1]
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=14)
    h, w = t.shape[-2:]
    t = t.flatten(2).transpose(1, 2)
    m = int((sd["pos_embed"].shape[1] - 1) ** 0.5)
    patch_pos = sd["pos_embed"][:, 1:].reshape(1, m, m, d).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos, size=(h, w), mode="bicubic", antialias=True).permute(0, 2, 3, 1).reshape(1, -1, d)
    t = torch.cat([sd["cls_token"].expand(B, -1, -1) + sd["pos_embed"][:, :1], t + patch_pos], dim=1)
    t = torch.cat([t[:, :1], sd["register_tokens"].expand(B, -1, -1), t[:, 1:]], dim=1)
    n = t.shape[1]
    for i in range(sum(k.endswith("ls1.gamma") for k in sd)):
        p = f"blocks.{i}."
        y = F.layer_norm(t, (d,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
        q, k, v = (y @ sd[p + "attn.qkv.weight"].T + sd[p + "attn.qkv.bias"]).reshape(B, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) * (d // heads) ** -0.5, dim=-1) @ v
        a = a.transpose(1, 2).reshape(B, n, d) @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
        t = t + sd[p + "ls1.gamma"] * a
        y = F.layer_norm(t, (d,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
        y = F.gelu(y @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"]) @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
        t = t + sd[p + "ls2.gamma"] * y
    t = F.layer_norm(t, (d,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)
    return t[:, 0], t[:, 5:]


def test_dinov2_reg_official_layout_gives_the_official_tokens(tmp_path):
    """The official release's keys (registers, class position inside pos_embed, mask token) load
    strictly through timm's mapping, and `tokens` equals an independent DINOv2-reg forward."""
    sd = _official_dinov2_reg()
    torch.save(sd, tmp_path / "dinov2_vitb14_reg4_pretrain.pth")
    fm = FoundationModel("dinov2_vitb14_reg", weights=str(tmp_path / "dinov2_vitb14_reg4_pretrain.pth"),
                         model_kwargs=TINY_REG)
    assert fm.model.num_prefix_tokens == 5 and fm.feature_dim == 32 and fm.patch_size == 14
    x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(1))
    cls, patches = fm.tokens(x)
    ref_cls, ref_patches = _dinov2_reference(sd, x)
    assert patches.shape == (2, 16, 32)                      # 4 x 4 patches, registers dropped
    assert torch.allclose(patches, ref_patches, atol=1e-5) and torch.allclose(cls, ref_cls, atol=1e-5)
    # timm's own layout (the hub's model.safetensors) loads too, with the same tokens
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in fm.model.state_dict().items()}, str(tmp_path / "model.safetensors"))
    again = FoundationModel("dinov2_vitb14_reg", weights=str(tmp_path / "model.safetensors"), model_kwargs=TINY_REG)
    assert torch.equal(again.tokens(x)[1], patches)
    with pytest.raises(FileNotFoundError, match="dinov2_vitb14_reg4_pretrain.pth.*facebookresearch/dinov2"):
        FoundationModel("dinov2_vitb14_reg", weights=str(tmp_path / "nope.pth"), model_kwargs=TINY_REG)


def test_dinov2_reg_b14_full_size_on_meta():
    """The real encoder: 768-d tokens, 4 registers, 256 patch tokens at 224 px (no allocation)."""
    with torch.device("meta"):
        fm = FoundationModel("dinov2_vitb14_reg", random_init=True)
        cls, patches = fm.tokens(torch.zeros(2, 3, 224, 224))
    assert fm.feature_dim == 768 and fm.model.num_prefix_tokens == 5 and fm.model.reg_token.shape == (1, 4, 768)
    assert cls.shape == (2, 768) and patches.shape == (2, 256, 768)
    block = 2 * 768 + (768 * 2304 + 2304) + (768 * 768 + 768) + 768 + 2 * 768 + (768 * 3072 + 3072) + (3072 * 768 + 768) + 768
    patch_embed, cls_reg, positions = 768 * 3 * 14 * 14 + 768, 5 * 768, 37 * 37 * 768   # positions trained at 518 px
    assert sum(p.numel() for p in fm.parameters()) == patch_embed + cls_reg + positions + 12 * block + 2 * 768


def test_the_two_semantic_views():
    from PIL import Image
    from tokenizer.foundation import semantic_latent_view, semvae_training_view

    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    # extraction view: [-1, 1] 256 px -> ImageNet-normalised 224 px, the whole image resized bicubic
    x = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = semantic_latent_view(x)
    assert out.shape == (2, 3, 224, 224)
    assert torch.allclose(out, F.interpolate(((x + 1) / 2 - mean) / std, size=(224, 224), mode="bicubic",
                                             align_corners=False), atol=1e-6)
    flat = semantic_latent_view(torch.full((1, 3, 256, 256), 0.5))   # constants stay constant: no crop, no pad
    assert torch.allclose(flat, ((0.75 - mean) / std).expand(1, 3, 224, 224), atol=1e-5)
    # training view: short side to 256 bicubic, centre 224 crop, ImageNet normalisation
    img = np.zeros((300, 400, 3), dtype=np.uint8)
    img[:, :200] = (255, 0, 0)                                       # left half red: the crop keeps the middle
    t = semvae_training_view()(Image.fromarray(img))
    assert t.shape == (3, 224, 224)
    red = (torch.tensor([1.0, 0.0, 0.0]).view(3, 1) - mean.view(3, 1)) / std.view(3, 1)
    black = -mean.view(3, 1) / std.view(3, 1)
    # 400 x 300 -> 341 x 256; the crop spans x in [58, 282) of the resized image, red up to 170.5
    assert torch.allclose(t[:, 100, :100], red.expand(3, 100), atol=1e-6)
    assert torch.allclose(t[:, 100, 124:], black.expand(3, 100), atol=1e-6)
