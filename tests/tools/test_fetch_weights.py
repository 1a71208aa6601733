"""tools/fetch_weights.py, offline only: a fabricated Hugging Face cache (HF_HUB_OFFLINE) and a local
HTTP server on 127.0.0.1 with Range support (resume, sha256 mismatch, a server that ignores Range)."""
import hashlib
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import huggingface_hub.constants
import pytest
from omegaconf import OmegaConf

import tools.fetch_weights as F

REPO = Path(__file__).resolve().parents[2]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


#################################################################################
#                      A fabricated Hugging Face cache                          #
#################################################################################

def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def put_in_hf_cache(cache: Path, repo: str, path: str, data: bytes, lfs: bool = True, blob_name: str = None,
                    repo_type: str = "model") -> Path:
    """The layout huggingface_hub writes: blobs named by hash, snapshot links, refs/main."""
    folder = cache / f"{repo_type}s--{repo.replace('/', '--')}"
    name = blob_name or (hashlib.sha256(data).hexdigest() if lfs else git_sha1(data))
    blob = folder / "blobs" / name
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    link = folder / "snapshots" / COMMIT / path
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(COMMIT)
    return blob


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def _src(entry_name: str, index: int = 0) -> F.Source:
    return F.BY_NAME[entry_name].files[index]


def test_hub_file_from_the_cache_is_checked_placed_and_its_overrides_printed(hf_cache, tmp_path, capsys):
    stats = b"fake latents_stats.pt bytes"
    src = _src("latents-stats-vavae-f16d32")
    put_in_hf_cache(hf_cache, src.repo, src.path, stats)
    root = tmp_path / "weights"
    assert F.main(["latents-stats-vavae-f16d32", "--root", str(root), "--offline"]) == 0
    dest = root / src.dest
    assert dest.read_bytes() == stats
    out = capsys.readouterr().out
    assert f"sha256 {hashlib.sha256(stats).hexdigest()}" in out
    assert f"data.data_path={dest.parent}" in out
    # a second run finds it in place and downloads nothing; with a checkpoint, one line for the run
    ckpt = _src("lightningdit-xl-800ep")
    put_in_hf_cache(hf_cache, ckpt.repo, ckpt.path, b"dit")
    assert F.main(["latents-stats-vavae-f16d32", "lightningdit-xl-800ep", "--root", str(root), "--offline"]) == 0
    out = capsys.readouterr().out
    assert "already present" in out
    assert f"together: data.data_path={dest.parent} ckpt_path={root / ckpt.dest}" in out


def test_tokenizer_entries_write_a_yaml_naming_the_weights(hf_cache, tmp_path, capsys):
    weights, config, model = b"not really a VA-VAE", b'{"_class_name": "AutoencoderKL"}', b"sd-vae bytes"
    put_in_hf_cache(hf_cache, _src("vavae-f16d32").repo, _src("vavae-f16d32").path, weights)
    put_in_hf_cache(hf_cache, _src("sdvae-ft-ema", 0).repo, "config.json", config, lfs=False)   # git sha1 blob
    put_in_hf_cache(hf_cache, _src("sdvae-ft-ema", 1).repo, "diffusion_pytorch_model.safetensors", model)
    root = tmp_path / "w"
    assert F.main(["vavae-f16d32", "sdvae-ft-ema", "--root", str(root), "--offline"]) == 0
    out = capsys.readouterr().out

    vavae = root / "pretrained_models" / "vavae-imagenet256-f16d32-dinov2.pt"
    yaml = root / "pretrained_models" / "vavae_f16d32.yaml"
    cfg, template = OmegaConf.load(yaml), OmegaConf.load(REPO / "configs/tokenizer/vavae_f16d32.yaml")
    assert cfg.ckpt_path == str(vavae) and vavae.read_bytes() == weights
    assert OmegaConf.to_container(cfg.model) == OmegaConf.to_container(template.model)  # the rest unchanged
    assert f"vae.config_path={yaml}" in out and f"--tokenizer-config {yaml}" in out
    assert "together:" not in out                      # two tokenizers are alternatives, not one run

    folder = root / "pretrained_models" / "sd-vae-ft-ema"
    assert (folder / "config.json").read_bytes() == config
    assert (folder / "diffusion_pytorch_model.safetensors").read_bytes() == model
    assert OmegaConf.load(root / "pretrained_models" / "sdvae_ft_ema.yaml").ckpt_path == str(folder)


def test_corrupted_cache_blob_is_refused_and_removed(hf_cache, tmp_path, capsys):
    src = _src("ldm-f16d32-50ep")
    good = hashlib.sha256(b"the real bytes").hexdigest()
    blob = put_in_hf_cache(hf_cache, src.repo, src.path, b"truncated", blob_name=good)
    assert F.main(["ldm-f16d32-50ep", "--root", str(tmp_path / "w"), "--offline"]) == 1
    err = capsys.readouterr().err
    assert "checksum mismatch" in err and good in err and not blob.exists()
    assert not (tmp_path / "w" / src.dest).exists()


def test_offline_and_missing_says_where_to_get_each_file(hf_cache, tmp_path, capsys):
    root = tmp_path / "w"
    assert F.main(["sfd-xl-4m", "inception-fid", "--root", str(root), "--offline"]) == 1
    err = capsys.readouterr().err
    sfd, inception = F.BY_NAME["sfd-xl-4m"].files[0], F.BY_NAME["inception-fid"].files[0]
    assert f"https://huggingface.co/SFD-Project/SFD/resolve/main/{sfd.path}" in err
    assert str(root / sfd.dest) in err
    assert inception.url in err and str(root / inception.dest) in err
    assert "missing: sfd-xl-4m, inception-fid" in err


def test_pickle_entries_carry_a_warning(hf_cache, tmp_path, capsys):
    src = _src("sfd-guide-b-70k")
    put_in_hf_cache(hf_cache, src.repo, src.path, b"guide")
    assert F.main(["sfd-guide-b-70k", "--root", str(tmp_path), "--offline"]) == 0
    captured = capsys.readouterr()
    assert "WARNING: sfd-guide-b-70k is a pickle" in captured.err
    assert f"ckpt_path={tmp_path / 'outputs/train/sfd_autoguidance_b/checkpoints/0070000.pt'}" in captured.out


def test_environment_offline_mode_and_cache_in_a_fresh_process(tmp_path):
    """What a user does: HF_HUB_OFFLINE=1 and HF_HUB_CACHE in the environment, the command line."""
    cache = tmp_path / "hf"
    src = _src("latents-stats-vavae-f16d32")
    put_in_hf_cache(cache, src.repo, src.path, b"stats")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "tools/fetch_weights.py", "latents-stats-vavae-f16d32", "dinov2-vitl14",
                           "--root", str(tmp_path / "w")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert (tmp_path / "w" / src.dest).read_bytes() == b"stats"
    assert "dinov2-vitl14: MISSING" in proc.stderr and "timm/vit_large_patch14_dinov2.lvd142m" in proc.stderr


#################################################################################
#                        A local HTTP server with Range                         #
#################################################################################

class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        srv = self.server
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        rng = self.headers.get("Range")
        srv.ranges.append(rng)
        start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1)) if rng and srv.honour_range else 0
        if start >= len(data) and rng:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        srv.sent += len(body)            # before writing: the client may finish before this thread
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.ranges, srv.sent, srv.honour_range = {}, [], 0, True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


PAYLOAD = bytes(range(256)) * 4099   # ~1 MB, not a multiple of the read chunk


def _http_source(server, sha256=None, name="w.pth") -> F.Source:
    server.files[f"/{name}"] = PAYLOAD
    return F.Source(dest=f"pretrained_models/{name}", url=f"{server.base}/{name}", sha256=sha256)


def test_http_download_checks_the_published_digest(server, tmp_path):
    src = _http_source(server, sha256=hashlib.sha256(PAYLOAD).hexdigest()[:8])   # a published prefix
    dest = tmp_path / src.dest
    assert F.fetch_url(src, dest) == hashlib.sha256(PAYLOAD).hexdigest()
    assert dest.read_bytes() == PAYLOAD and server.ranges == [None]
    assert not dest.with_name("w.pth.part").exists()


def test_http_resume_asks_only_for_the_rest(server, tmp_path):
    src = _http_source(server, sha256=hashlib.sha256(PAYLOAD).hexdigest())
    dest = tmp_path / src.dest
    dest.parent.mkdir(parents=True)
    cut = 300_001
    dest.with_name("w.pth.part").write_bytes(PAYLOAD[:cut])          # an interrupted earlier run
    F.fetch_url(src, dest)
    assert dest.read_bytes() == PAYLOAD
    assert server.ranges == [f"bytes={cut}-"] and server.sent == len(PAYLOAD) - cut


def test_http_complete_part_and_a_server_that_ignores_ranges(server, tmp_path):
    src = _http_source(server)
    dest = tmp_path / src.dest
    dest.parent.mkdir(parents=True)
    dest.with_name("w.pth.part").write_bytes(PAYLOAD)                  # whole file, rename was lost
    F.fetch_url(src, dest)
    assert dest.read_bytes() == PAYLOAD and server.sent == 0           # answered 416, nothing sent
    dest.unlink()
    dest.with_name("w.pth.part").write_bytes(PAYLOAD + b"extra")       # longer than the server's file
    with pytest.raises(F.FetchError, match="does not match the file on the server"):
        F.fetch_url(src, dest)
    assert not dest.exists() and not dest.with_name("w.pth.part").exists()
    server.honour_range = False
    dest.with_name("w.pth.part").write_bytes(b"stale prefix")
    F.fetch_url(src, dest)                                             # 200 instead of 206: start over
    assert dest.read_bytes() == PAYLOAD


def test_http_sha256_mismatch_removes_the_download(server, tmp_path):
    src = _http_source(server, sha256="0" * 64)
    dest = tmp_path / src.dest
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    with pytest.raises(F.FetchError, match=f"sha256 mismatch .* expected 0{{64}}, got {digest}"):
        F.fetch_url(src, dest)
    assert not dest.exists() and not dest.with_name("w.pth.part").exists()
    # a file already in place is checked too
    dest.write_bytes(b"wrong")
    with pytest.raises(F.FetchError, match="sha256 mismatch"):
        F.check_sha256(dest, "0" * 64, str(dest))


def test_http_errors_are_one_line(server, tmp_path):
    src = F.Source(dest="x.bin", url=f"{server.base}/absent.bin")
    with pytest.raises(F.FetchError, match=r"absent.bin: HTTP 404"):
        F.fetch_url(src, tmp_path / "x.bin")
    closed = F.Source(dest="x.bin", url="http://127.0.0.1:9/x.bin")                 # nothing listens there
    with pytest.raises(F.FetchError, match="cannot download .*rerun to resume"):
        F.fetch_url(closed, tmp_path / "x.bin", timeout=5)


#################################################################################
#                       The registry against the configs                        #
#################################################################################

def _yaml(rel: str):
    return OmegaConf.load(REPO / rel)


def test_registry_puts_files_where_the_shipped_configs_look():
    dest = {e.name: [s.dest for s in e.files] for e in F.REGISTRY}
    assert _yaml("configs/tokenizer/vavae_f16d32.yaml").ckpt_path == dest["vavae-f16d32"][0]
    assert _yaml("configs/tokenizer/sdvae_ft_ema.yaml").ckpt_path == str(Path(dest["sdvae-ft-ema"][1]).parent)
    assert _yaml("configs/tokenizer/sdvae_ft_mse.yaml").ckpt_path == str(Path(dest["sdvae-ft-mse"][1]).parent)
    assert _yaml("configs/tokenizer/sdvae_f16d32.yaml").ckpt_path == dest["ldm-f16d32-50ep"][0]
    sem = _yaml("configs/tokenizer/sdvae_f16d32_semvaebasech16.yaml")
    assert sem.ckpt_path == dest["ldm-f16d32-50ep"][0] and sem.semvae.semvae_ckpt_path == dest["sfd-semvae"][0]
    assert _yaml("configs/tokenizer/f16d32_vfdinov2.yaml").model.params.foundation.weights == dest["dinov2-vitl14"][0]
    assert _yaml("configs/tokenizer/f16d32_vfmae.yaml").model.params.foundation.weights == dest["mae-vitl16"][0]
    assert _yaml("configs/tokenizer/f16d32_vfsam.yaml").model.params.foundation.weights == dest["sam-vitl"][0]
    assert _yaml("configs/tokenizer/f16d32_vfclip.yaml").model.params.foundation.weights == dest["clip-vitb16"][0]
    for size, name in (("xl", "sfd-xl"), ("1p0", "sfd-1p0")):
        for stem, suffix in (("inference_400k", "400k"), ("inference_4m", "4m")):
            cfg = _yaml(f"configs/sfd/lightningdit_{size}/{stem}.yaml")
            assert cfg.ckpt_path == dest[f"{name}-{suffix}"][0]
            assert cfg.data.data_path == str(Path(dest["sfd-latents-stats"][0]).parent)
            assert cfg.data.fid_reference_file == dest["adm-ref-imagenet256"][0]
    assert _yaml("configs/sfd/autoguidance_b/inference.yaml").ckpt_path == dest["sfd-guide-b-70k"][0]


def test_registry_is_well_formed_and_listed(tmp_path, capsys):
    for e in F.REGISTRY:
        assert e.files and e.use and e.licence, e.name
        for s in e.files:
            assert (s.url is None) != (s.repo is None), e.name               # exactly one source
            assert s.repo is None or s.path, e.name
            assert not Path(s.dest).is_absolute() and ".." not in Path(s.dest).parts, e.name
        assert e.tokenizer_yaml is None or (REPO / e.tokenizer_yaml).is_file(), e.name
    assert {e.name for e in F.REGISTRY if e.pickle} >= {"sfd-xl-4m", "sfd-semvae"}
    (tmp_path / "pretrained_models").mkdir()
    (tmp_path / "pretrained_models" / "vgg16-397923af.pth").write_bytes(b"x")
    assert F.main(["--list", "--root", str(tmp_path)]) == 0
    lines = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines()}
    assert set(F.BY_NAME) <= set(lines)
    assert " yes " in lines["vgg16-lpips"] and "553 MB" in lines["vgg16-lpips"]
    assert " missing " in lines["vavae-f16d32"] and "2.15 GB" in lines["vavae-f16d32"]
    assert "[pickle]" in lines["sfd-1p0-4m"] and "[pickle]" not in lines["vavae-f16d32"]
    with pytest.raises(SystemExit, match="unknown name.*nope"):
        F.main(["nope"])
