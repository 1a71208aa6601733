"""Tokenizer training and latent extraction check the folders and files they are given before the
run / output directory exists."""
import pytest

import extract_features
import train_tokenizer

from conftest import REPO, TOKENIZER_CONFIG, error_of


@pytest.fixture
def images(tmp_path):
    from PIL import Image
    folder = tmp_path / "images" / "class0"
    folder.mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(folder / "a.png")
    return tmp_path / "images"


@pytest.mark.parametrize("case, overrides, culprit", [
    ("train root missing", ["data.params.train.data_root=nowhere"], "image folder not found: nowhere"),
    ("train root without images", ["data.params.train.data_root=empty"], "empty: no images"),
    ("validation root missing", ["data.params.validation.data_root=nowhere"], "image folder not found: nowhere"),
    ("init_weight is text", ["init_weight=notes.pt"], "not a PyTorch checkpoint: notes.pt"),
    ("resume_from missing", ["train.resume_from=gone.pt"], "train.resume_from checkpoint not found: gone.pt"),
])
def test_train_tokenizer_checks_inputs_before_the_run_dir(case, overrides, culprit, images, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.pt").write_text("hello\n")
    argv = [TOKENIZER_CONFIG, "train.output_dir=tokout", "data.params.train.data_root=images",
            "data.params.validation.data_root=images", *overrides]
    message = error_of(train_tokenizer.main, argv)
    assert culprit in message, message
    assert not (tmp_path / "tokout").exists()


@pytest.mark.parametrize("case, args, culprit", [
    ("data path missing", ["--data-path", "nowhere"], "--data-path image folder not found: nowhere"),
    ("tokenizer config missing", ["--tokenizer-config", "tok.yaml"], "--tokenizer-config file not found: tok.yaml"),
])
def test_extraction_checks_inputs_before_the_output_dir(case, args, culprit, images, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = {"--data-path": "images", "--tokenizer-config": str(REPO / "configs/tiny/tiny_vavae_f4d4.yaml")}
    base.update(dict(zip(args[::2], args[1::2])))
    argv = ["--output-path", "ext", "--image-size", "16", "--random-init-tokenizer"] + [x for kv in base.items() for x in kv]
    with pytest.raises(FileNotFoundError, match=culprit.replace(".", r"\.")):
        extract_features.main(argv)
    assert not (tmp_path / "ext").exists()
