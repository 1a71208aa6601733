"""SFD's shard format: the composite latent [texture ; DINO PCA ; semantic] against a direct
computation from the shard tensors and both stats files, one flip decision for every part, the
REPA target beside it, the semantic statistics, header errors, the one LatentNormalizer and the
tiny SFD writer."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from datasets.img_latent_dataset import (ImgLatentDataset, LatentShards, compute_latent_stats, load_normalizer,
                                         load_semantic_stats, normalizer_from_config, save_latent_stats,
                                         shard_name, validate_latents)
from datasets.latent_norm import LatentNormalizer
from datasets.order import SeededItems
from datasets.tiny_latents import write_tiny_latents

CT, CD, CS, D, H, W = 4, 2, 3, 5, 3, 3      # texture, DINO PCA, semantic channels; REPA width; grid
PARTS = {"latents": (CT, torch.float32), "latents_dino": (CD, torch.float16),
         "latents_sv": (CS, torch.float32), "feats_dino": (D, torch.float16)}


def write_shards(d, sizes, parts=PARTS, seed=0):
    """Shards holding `parts` (+ flips and labels); returns {key: (n, ...) tensor} in global order.
    Stored and flipped rows are independent draws, so every part's choice is visible."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, n in enumerate(sizes):
        tensors = {"labels": torch.randint(0, 10, (n,), generator=g)}
        for key, (c, dtype) in parts.items():
            for suffix in ("", "_flip"):
                tensors[key + suffix] = (torch.randn(n, c, H, W, generator=g) * 2 + 1).to(dtype)
        save_file(tensors, str(d / shard_name(0, k)))
        for key, value in tensors.items():
            out.setdefault(key, []).append(value)
    return {key: torch.cat(values) for key, values in out.items()}


def random_stats(c, seed):
    g = torch.Generator().manual_seed(seed)
    return {"mean": torch.randn(1, c, 1, 1, generator=g), "std": torch.rand(1, c, 1, 1, generator=g) + 0.5}


@pytest.fixture
def sfd_dir(tmp_path):
    tensors = write_shards(tmp_path, [5, 0, 4])
    tex, sem = random_stats(CT, 1), random_stats(CS, 2)
    save_latent_stats(tex, tmp_path)
    save_latent_stats(sem, tmp_path, key="latents_sv")
    return tmp_path, tensors, tex, sem


def expected_item(tensors, i, suffix, tex, sem, multiplier, latent_norm=True, sv_norm=True):
    """SFD's dataset in its own order: normalise the texture, append DINO, normalise and append
    the semantic latents, then scale the whole composite."""
    z = tensors["latents" + suffix][i]
    if latent_norm:
        z = (z - tex["mean"][0]) / tex["std"][0]
    s = tensors["latents_sv" + suffix][i]
    if sv_norm:
        s = (s - sem["mean"][0]) / sem["std"][0]
    return torch.cat([z, tensors["latents_dino" + suffix][i].float(), s]) * multiplier


@pytest.mark.parametrize("latent_norm,sv_norm", [(True, True), (False, True), (True, False), (False, False)])
def test_composite_equals_direct_computation(sfd_dir, latent_norm, sv_norm):
    d, tensors, tex, sem = sfd_dir
    ds = ImgLatentDataset(d, latent_norm, 0.7, latent_sv_norm=sv_norm, semantic_chans=CD + CS, repa=True)
    assert len(ds) == 9
    seen = set()
    for seed in range(6):
        for i in range(len(ds)):
            x, y, extras = SeededItems(ds)[(i, seed * 100 + i)]
            assert x.dtype == torch.float32 and x.shape == (CT + CD + CS, H, W)
            assert int(y) == int(tensors["labels"][i]) and set(extras) == {"repa_target"}
            matches = [s for s in ("", "_flip") if torch.equal(
                x, expected_item(tensors, i, s, tex, sem, 0.7, latent_norm, sv_norm))]
            assert len(matches) == 1, (i, seed)
            # the REPA target comes from the same (stored or flipped) row, as float32
            target = extras["repa_target"]
            assert target.dtype == torch.float32
            assert torch.equal(target, tensors["feats_dino" + matches[0]][i].float())
            seen.add(matches[0])
    assert seen == {"", "_flip"}


def test_one_flip_decision_for_every_part(sfd_dir):
    """Each part on its own: texture, DINO, semantic and REPA rows all come from the same key."""
    d, tensors, _, _ = sfd_dir
    ds = ImgLatentDataset(d, latent_norm=False, latent_multiplier=1.0, semantic_chans=CD + CS, repa=True)
    bounds = {"latents": (0, CT), "latents_dino": (CT, CT + CD), "latents_sv": (CT + CD, CT + CD + CS)}
    flips = []
    for seed in range(40):
        x, _, extras = SeededItems(ds)[(3, seed)]
        choice = {key: [s for s in ("", "_flip") if torch.equal(x[lo:hi], tensors[key + s][3].float())]
                  for key, (lo, hi) in bounds.items()}
        choice["feats_dino"] = [s for s in ("", "_flip")
                                if torch.equal(extras["repa_target"], tensors["feats_dino" + s][3].float())]
        assert all(len(c) == 1 for c in choice.values()) and len({c[0] for c in choice.values()}) == 1, choice
        flips.append(choice["latents"][0] == "_flip")
        assert torch.equal(SeededItems(ds)[(3, seed)][0], x)           # the seed decides
    assert 10 < sum(flips) < 30


def test_the_config_picks_the_parts(sfd_dir):
    d, tensors, tex, _ = sfd_dir
    # semantic_chans 0 and no REPA: LightningDiT on the texture part of SFD's shards
    x, _, extras = SeededItems(ImgLatentDataset(d, True, 1.0))[(2, 0)]
    assert x.shape == (CT, H, W) and extras == {}
    assert any(torch.equal(x, (tensors["latents" + s][2] - tex["mean"][0]) / tex["std"][0]) for s in ("", "_flip"))
    # only the semantic VAE latents: their channels must be what the shards hold
    with pytest.raises(ValueError, match=r"semantic latents have 5 channels \(latents_dino 2, latents_sv 3\), "
                                         r"model.semantic_chans = 3"):
        ImgLatentDataset(d, True, 1.0, semantic_chans=CS)
    with pytest.raises(ValueError, match="latent_sv_norm is true but model.semantic_chans is 0"):
        ImgLatentDataset(d, True, 1.0, latent_sv_norm=True)


def test_header_errors_name_the_shard_and_key(tmp_path):
    write_shards(tmp_path, [3, 2])
    bad = tmp_path / shard_name(0, 1)
    original = load_file(str(bad))

    def rewrite(**changes):
        tensors = dict(original, **changes)
        save_file({k: v for k, v in tensors.items() if v is not None}, str(bad))

    cases = [
        (dict(latents_sv_flip=None), "has latents_sv but not latents_sv_flip"),
        (dict(feats_dino=None), "has feats_dino_flip but not feats_dino"),
        (dict(latents_sv=original["latents_sv"][:1]), r"latents_sv \[1, 3, 3, 3\]"),
        (dict(latents_sv=original["latents_sv"].long(), latents_sv_flip=original["latents_sv_flip"].long()),
         "latents_sv / latents_sv_flip dtypes I64"),
        (dict(latents_dino=None, latents_dino_flip=None), "latents_dino absent differs from shape"),
        (dict(latents_sv=torch.zeros(2, 4, H, W), latents_sv_flip=torch.zeros(2, 4, H, W)),
         r"latents_sv shape \(4, 3, 3\) differs from shape \(3, 3, 3\)"),
    ]
    for changes, message in cases:
        rewrite(**changes)
        with pytest.raises(ValueError, match=f"^{bad}: {message}"):
            LatentShards(tmp_path)
    rewrite()
    assert LatentShards(tmp_path).parts == {"latents_dino": (CD, H, W), "latents_sv": (CS, H, W),
                                            "feats_dino": (D, H, W)}


def test_door_checks(sfd_dir, tmp_path):
    d, _, _, _ = sfd_dir
    ok = dict(semantic_chans=CD + CS, latent_sv_norm=True, repa=True)
    assert len(validate_latents(d, CT + CD + CS, 3, 10, True, **ok)) == 9
    with pytest.raises(ValueError, match=r"does not match the model's \(5, 3, 3\) "
                                         r"\(model.in_chans - model.semantic_chans"):
        validate_latents(d, CT + CD + CS + 1, 3, 10, True, **ok)
    (d / "latents_sv_stats.pt").unlink()
    with pytest.raises(FileNotFoundError, match="latents_sv_stats.pt"):
        validate_latents(d, CT + CD + CS, 3, 10, True, **ok)
    save_latent_stats(random_stats(CS + 1, 0), d, key="latents_sv")
    with pytest.raises(ValueError, match="latents_sv_stats.pt: stats have 4 channels, latents_sv's channels = 3"):
        validate_latents(d, CT + CD + CS, 3, 10, True, **ok)
    # texture-only shards: no semantic part, no REPA targets
    plain = tmp_path / "plain"
    plain.mkdir()
    write_shards(plain, [4], parts={"latents": (CT, torch.float32)})
    with pytest.raises(ValueError, match=r"model.semantic_chans = 3 but the shards hold no semantic latents"):
        validate_latents(plain, CT + CS, 3, 10, False, semantic_chans=CS)
    with pytest.raises(ValueError, match="model.use_repa needs REPA targets.*no feats_dino"):
        validate_latents(plain, CT, 3, 10, False, repa=True)


def test_semantic_stats_match_direct_computation(sfd_dir):
    d, tensors, _, _ = sfd_dir
    sv = tensors["latents_sv"].double()
    full = compute_latent_stats(d, key="latents_sv")
    torch.testing.assert_close(full["mean"], sv.mean((0, 2, 3), keepdim=True).float())
    torch.testing.assert_close(full["std"], sv.std((0, 2, 3), keepdim=True).float())     # unbiased
    # the same seeded rows as the texture stats: randperm(N)[:k] of a generator seeded with `seed`
    idx = torch.randperm(9, generator=torch.Generator().manual_seed(3))[:5]
    sub = compute_latent_stats(d, num_samples=5, seed=3, key="latents_sv")
    torch.testing.assert_close(sub["mean"], tensors["latents_sv"][idx].mean((0, 2, 3), keepdim=True))
    torch.testing.assert_close(sub["std"], tensors["latents_sv"][idx].std((0, 2, 3), keepdim=True))
    tex = compute_latent_stats(d, num_samples=5, seed=3)
    torch.testing.assert_close(tex["std"], tensors["latents"][idx].std((0, 2, 3), keepdim=True))
    assert save_latent_stats(sub, d, key="latents_sv").name == "latents_sv_stats.pt"
    mean, std = load_semantic_stats(d, channels=CS)
    assert torch.equal(mean, sub["mean"]) and torch.equal(std, sub["std"]) and mean.shape == (1, CS, 1, 1)
    with pytest.raises(ValueError, match="no latents_missing to compute statistics of"):
        compute_latent_stats(d, key="latents_missing")


def decoder_formula(x, mean, std, multiplier, texture_chans):
    """sampling/pipeline.py's Decoder (and SFD's inference): drop the semantic channels, then
    z = x * std / multiplier + mean with (1, C, 1, 1) stats."""
    return x[:, :texture_chans] * std / multiplier + mean


def test_normalizer_inverse_and_decoder_formula():
    tex, sem = random_stats(CT, 4), random_stats(CS, 5)
    norm = LatentNormalizer(tex["mean"], tex["std"], 0.8, sem["mean"], sem["std"], channels=CT + CD + CS,
                            texture_chans=CT)
    x = torch.randn(6, CT + CD + CS, H, W, generator=torch.Generator().manual_seed(0)) * 3
    model_space = norm.normalize(x)
    # an independent per-part formulation, bit for bit
    direct = torch.cat([(x[:, :CT] - tex["mean"]) / tex["std"], x[:, CT:CT + CD],
                        (x[:, CT + CD:] - sem["mean"]) / sem["std"]], dim=1) * 0.8
    assert torch.equal(model_space, direct)
    decoded = decoder_formula(model_space, tex["mean"], tex["std"], 0.8, CT)
    assert torch.equal(norm.denormalize(model_space), decoded)
    torch.testing.assert_close(norm.denormalize(model_space), x[:, :CT])      # the inverse, texture part
    # no stats: a pure scale, and back
    plain = LatentNormalizer(None, None, 0.5, channels=CT, texture_chans=CT)
    assert torch.equal(plain.normalize(x[:, :CT]), x[:, :CT] * 0.5)
    assert torch.equal(plain.denormalize(x[:, :CT]), x[:, :CT] / 0.5)
    # semantic stats only: the texture channels are just scaled
    sv_only = LatentNormalizer(None, None, 2.0, sem["mean"], sem["std"], channels=CT + CS, texture_chans=CT)
    out = sv_only.normalize(x[:, :CT + CS])
    assert torch.equal(out[:, :CT], x[:, :CT] * 2.0)
    assert torch.equal(out[:, CT:], (x[:, CT:CT + CS] - sem["mean"]) / sem["std"] * 2.0)
    with pytest.raises(ValueError, match=r"expected 9 channels"):
        norm.normalize(x[:, :CT])
    with pytest.raises(ValueError, match="do not fit"):
        LatentNormalizer(tex["mean"], tex["std"], 1.0, sem["mean"], sem["std"], channels=CT + 1, texture_chans=CT)
    # unbatched items (the dataset) and batches (validation, decoding) agree
    assert torch.equal(norm.normalize(x[2]), model_space[2])


def test_normalizer_from_the_stats_files_alone(tmp_path):
    """Sampling has the stats files and no shards."""
    from configs.schema import load_config

    tex, sem = random_stats(32, 6), random_stats(16, 7)
    save_latent_stats(tex, tmp_path)
    save_latent_stats(sem, tmp_path, key="latents_sv")
    cfg = load_config("configs/sfd/lightningdit_xl/train.yaml", [f"data.data_path={tmp_path}"])
    norm = normalizer_from_config(cfg)
    assert (norm.channels, norm.texture_chans, norm.sv_chans, norm.multiplier) == (48, 32, 16, 1.0)
    x = torch.randn(2, 48, 4, 4)
    assert torch.equal(norm.denormalize(x), decoder_formula(x, tex["mean"], tex["std"], 1.0, 32))
    with pytest.raises(ValueError, match=r"latents_stats.pt: stats have 32 channels, "
                                         r"model.in_chans - model.semantic_chans = 40"):
        load_normalizer(tmp_path, True, 1.0, in_chans=48, semantic_chans=8, latent_sv_norm=True)
    with pytest.raises(ValueError, match="latents_sv_stats.pt: stats have 16 channels, more than "
                                         "model.semantic_chans = 8"):
        load_normalizer(tmp_path, False, 1.0, in_chans=48, semantic_chans=8, latent_sv_norm=True)


def test_tiny_writer_sfd_format(tmp_path):
    plain = write_tiny_latents(str(tmp_path / "plain"), num_items=40, shape=(4, 4, 4), num_classes=5)
    sfd = write_tiny_latents(str(tmp_path / "sfd"), num_items=40, shape=(4, 4, 4), num_classes=5,
                             semantic_chans=3, repa_dim=6)
    for name in ("latents_rank00_shard000.safetensors", "latents_rank00_shard001.safetensors"):
        a, b = load_file(str(plain / name)), load_file(str(sfd / name))
        assert set(a) == {"latents", "latents_flip", "labels"}
        assert set(b) == set(a) | {"latents_sv", "latents_sv_flip", "feats_dino", "feats_dino_flip"}
        assert all(torch.equal(a[k], b[k]) for k in a)                 # the texture part is unchanged
        assert b["latents_sv"].dtype == torch.float32 and b["latents_sv"].shape[1:] == (3, 4, 4)
        assert b["feats_dino"].dtype == torch.float16 and b["feats_dino"].shape[1:] == (6, 4, 4)
    for key, file in (("latents", "latents_stats.pt"), ("latents_sv", "latents_sv_stats.pt")):
        stored = torch.load(sfd / file, weights_only=True)
        direct = compute_latent_stats(sfd, key=key)
        assert torch.equal(stored["mean"], direct["mean"]) and torch.equal(stored["std"], direct["std"])
    ds = ImgLatentDataset(sfd, True, 1.0, latent_sv_norm=True, semantic_chans=3, repa=True)
    x, _, extras = ds[0]
    assert x.shape == (7, 4, 4) and extras["repa_target"].shape == (6, 4, 4)
    # class structure survives in the semantic part: items of one class are closer than others
    shards = LatentShards(sfd)
    sv = torch.stack([shards.read("latents_sv", i) for i in range(40)])
    labels = torch.stack([shards.read("labels", i) for i in range(40)])
    dist = torch.cdist(sv.flatten(1), sv.flatten(1))
    same = labels[:, None] == labels[None, :]
    assert dist[same & ~torch.eye(40, dtype=torch.bool)].mean() < 0.5 * dist[~same].mean()
