"""AutoGuidance through inference.py on CPU (tiny random LightningDiT, random tiny tokenizer): the
guide network comes from `sample.autoguidance_config` (its YAML and checkpoint, the main config's
size overrides applied), protocol.json binds its weights by content, the folder name says which
guide was used, and a guide equal to the main network gives the unguided images bit for bit."""
import json
from pathlib import Path

import pytest
import torch

import inference
from configs.schema import load_config
from datasets.tiny_latents import write_tiny_latents
from models.build import build_model
from sampling.networks import guide_config
from sampling.protocol import folder_name, settings
from utils.digest import module_digest

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs/tiny/lightningdit_tiny.yaml"


def random_model(seed: int):
    torch.manual_seed(seed)
    model = build_model(load_config(str(CONFIG)), training=False)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def guide_yaml(path: Path, ckpt: Path, extra: str = "") -> Path:
    """The tiny config as a guide's YAML: its model section and its ckpt_path."""
    text = CONFIG.read_text().replace("ckpt_path: null", f"ckpt_path: '{ckpt}'") + extra
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("autoguidance")
    data = write_tiny_latents(str(root / "latents"), num_items=16, shape=(4, 4, 4), num_classes=10)
    main, weak = random_model(0), random_model(1)
    for name, model in (("main.pt", main), ("weak.pt", weak)):
        torch.save({"ema": model.state_dict()}, root / name)
    args = [str(CONFIG), f"data.data_path={data}", f"ckpt_path={root / 'main.pt'}", f"train.output_dir={root / 'out'}",
            "sample.fid_num=4", "sample.per_proc_batch_size=4", "sample.num_sampling_steps=6", "--vae-random-init"]
    yield {"root": root, "args": args, "weak": weak}
    torch.set_num_threads(old)


def pngs(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def test_guide_equal_to_the_main_network_gives_the_unguided_images(run):
    root = run["root"]
    plain = inference.main(run["args"] + ["sample.cfg_scale=1.0", "train.exp_name=plain"])
    same = guide_yaml(root / "same.yaml", root / "main.pt")
    auto = inference.main(run["args"] + ["sample.autoguidance=true", f"sample.autoguidance_config={same}",
                                         "train.exp_name=same"])
    assert auto.name.endswith("-interval0.10-cfg4.00-shift0.30-agmain")
    assert pngs(auto) == pngs(plain) and len(pngs(plain)) == 4
    weak = guide_yaml(root / "weak.yaml", root / "weak.pt")
    guided = inference.main(run["args"] + ["sample.autoguidance=true", f"sample.autoguidance_config={weak}",
                                           "train.exp_name=weak"])
    assert guided.name.endswith("-agweak") and pngs(guided) != pngs(plain)
    proto = json.loads((guided / "protocol.json").read_text())
    assert proto["autoguidance"] is True and proto["guide_sha256"] == module_digest(run["weak"])
    assert proto["guide_ckpt_path"] == str((root / "weak.pt").resolve()) and proto["guide_model_type"] == "LightningDiT-B/1"


def test_changed_guide_weights_are_refused(run):
    root = run["root"]
    weak = guide_yaml(root / "weak2.yaml", root / "weak2.pt")
    torch.save({"ema": run["weak"].state_dict()}, root / "weak2.pt")
    args = run["args"] + ["sample.autoguidance=true", f"sample.autoguidance_config={weak}", "train.exp_name=refuse"]
    folder = inference.main(args)
    sd = {k: v + 0.01 if v.is_floating_point() else v for k, v in run["weak"].state_dict().items()}
    torch.save({"ema": sd}, root / "weak2.pt")
    (folder / "000003.png").unlink()
    with pytest.raises(ValueError, match=r"guide weights \(.*weak2.pt: sha256"):
        inference.main(args)


def test_guide_config_takes_the_size_overrides_and_checks_the_latent_space(run, tmp_path):
    root = run["root"]
    big = guide_yaml(tmp_path / "big.yaml", root / "weak.pt").read_text().replace("hidden_size: 64", "hidden_size: 128")
    (tmp_path / "big.yaml").write_text(big)
    cfg = load_config(str(CONFIG), ["sample.autoguidance=true", f"sample.autoguidance_config={tmp_path / 'big.yaml'}",
                                    "model.hidden_size=32", "model.depth=1"])
    guide = guide_config(cfg)
    assert (guide.model.hidden_size, guide.model.depth, guide.model.num_heads) == (32, 1, 2)
    assert settings(cfg)["guide_ckpt_path"] == str((root / "weak.pt").resolve())
    (tmp_path / "other.yaml").write_text(big.replace("in_chans: 4", "in_chans: 8"))
    with pytest.raises(ValueError, match=r"other.yaml: 'model.in_chans' is 8, the sampled model's is 4"):
        guide_config(load_config(str(CONFIG), ["sample.autoguidance=true",
                                               f"sample.autoguidance_config={tmp_path / 'other.yaml'}"]))
    (tmp_path / "nockpt.yaml").write_text(CONFIG.read_text())
    with pytest.raises(ValueError, match="nockpt.yaml: ckpt_path is not set"):
        guide_config(load_config(str(CONFIG), ["sample.autoguidance=true",
                                               f"sample.autoguidance_config={tmp_path / 'nockpt.yaml'}"]))
    with pytest.raises(ValueError, match="needs sample.autoguidance_config"):
        guide_config(load_config(str(CONFIG), ["sample.autoguidance=true"]))


def test_missing_guide_checkpoint_stops_at_the_door(run, tmp_path):
    yaml = guide_yaml(tmp_path / "g.yaml", tmp_path / "absent.pt")
    with pytest.raises(SystemExit, match="guide checkpoint not found: .*absent.pt"):
        inference.main(run["args"] + ["sample.autoguidance=true", f"sample.autoguidance_config={yaml}"])
    # unguided (cfg_scale 1): AutoGuidance is off and its files are not needed
    cfg = load_config(str(CONFIG), ["sample.autoguidance=true", f"sample.autoguidance_config={yaml}",
                                    "sample.cfg_scale=1.0"])
    assert settings(cfg)["autoguidance"] is False and "-ag" not in folder_name(settings(cfg))
