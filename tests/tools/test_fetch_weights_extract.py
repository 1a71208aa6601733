"""tools/fetch_weights.py --extract: the released latents are one tar.gz cut into split_* parts; a
tiny archive made and cut the same way (`split -b`) unpacks to the same bytes, and a missing part,
a member leaving the output folder or an existing output stop with one line and leave nothing."""
import hashlib
import io
import tarfile
from pathlib import Path

import pytest

import tools.fetch_weights as F


def make_parts(tmp_path: Path, members: dict, part_size: int = 4096, mode: str = "w:gz") -> Path:
    """members {name: bytes} as one tar (gzip by default), cut into split_aa, split_ab, ..."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    blob = buf.getvalue()
    folder = tmp_path / "parts"
    folder.mkdir()
    for i, start in enumerate(range(0, len(blob), part_size)):
        (folder / f"split_a{chr(ord('a') + i)}").write_bytes(blob[start:start + part_size])
    assert len(list(folder.iterdir())) >= 3, "the archive should span several parts"
    return folder


def shard_bytes(seed: int, n: int = 20000) -> bytes:
    """Incompressible bytes (so that the gzip stream spans several parts)."""
    out, block = b"", str(seed).encode()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block
    return out[:n]


MEMBERS = {"imagenet_train_256/latents_rank00_shard000.safetensors": shard_bytes(0),
           "imagenet_train_256/latents_rank01_shard000.safetensors": shard_bytes(1),
           "imagenet_train_256/latents_stats.pt": b"stats"}


def test_parts_unpack_to_the_archived_bytes_and_the_override_is_printed(tmp_path, capsys):
    parts = make_parts(tmp_path, MEMBERS)
    out = tmp_path / "latents"
    assert F.main(["--extract", str(parts), str(out)]) == 0
    for name, data in MEMBERS.items():
        assert (out / name).read_bytes() == data
    printed = capsys.readouterr().out
    assert f"data.data_path={out / 'imagenet_train_256'}" in printed and "(2 shards)" in printed
    assert "latents_stats.pt" not in printed                  # present: no note
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latents", "parts"]   # no merged copy, no .partial


def test_parts_are_read_in_name_order(tmp_path):
    parts = F.split_parts(make_parts(tmp_path, MEMBERS))
    assert [p.name for p in parts] == sorted(p.name for p in parts) and parts[0].name == "split_aa"
    reader = F.PartsReader(parts)
    joined = b"".join(iter(lambda: reader.read(1000), b""))
    reader.close()
    assert joined == b"".join(p.read_bytes() for p in parts)


def test_an_uncompressed_tar_without_stats_gets_a_note(tmp_path, capsys):
    members = {"shards/a.safetensors": shard_bytes(2, 9000)}
    parts = make_parts(tmp_path, members, mode="w")
    assert F.main(["--extract", str(parts), str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "no latents_stats.pt beside the shards" in printed and "--stats-only" in printed


def test_a_missing_part_stops_with_one_line_and_leaves_nothing(tmp_path, capsys):
    parts = make_parts(tmp_path, MEMBERS)
    (parts / "split_ab").unlink()
    out = tmp_path / "latents"
    assert F.main(["--extract", str(parts), str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: cannot unpack the ")
    assert "split_aa .. " in err and "a part is missing, incomplete or out of order" in err
    assert not out.exists() and not (tmp_path / "latents.partial").exists()


@pytest.mark.parametrize("name", ["../evil.safetensors", "/tmp/evil.safetensors", "a/../../evil.safetensors"])
def test_a_member_outside_the_output_is_refused(tmp_path, capsys, name):
    parts = make_parts(tmp_path, {**MEMBERS, name: shard_bytes(3)})
    out = tmp_path / "deep" / "latents"
    assert F.main(["--extract", str(parts), str(out)]) == 1
    err = capsys.readouterr().err
    assert f"refusing archive member {name!r}" in err
    assert not out.exists() and not (tmp_path / "deep" / "latents.partial").exists()
    assert not (tmp_path / "deep" / "evil.safetensors").exists() and not (tmp_path / "evil.safetensors").exists()


def test_links_and_devices_are_not_unpacked(tmp_path, capsys):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        link = tarfile.TarInfo("shards/link.safetensors")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        data = shard_bytes(4, 3000)
        info = tarfile.TarInfo("shards/real.safetensors")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "split_aa").write_bytes(buf.getvalue())
    out = tmp_path / "out"
    assert F.main(["--extract", str(tmp_path / "parts"), str(out)]) == 0
    assert not (out / "shards" / "link.safetensors").exists() and (out / "shards" / "real.safetensors").is_file()
    assert "skipped 1 archive members" in capsys.readouterr().err


def test_an_existing_output_or_no_parts_is_refused(tmp_path, capsys):
    parts = make_parts(tmp_path, MEMBERS)
    (tmp_path / "taken").mkdir()
    assert F.main(["--extract", str(parts), str(tmp_path / "taken")]) == 1
    assert "already exists" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert F.main(["--extract", str(tmp_path / "empty"), str(tmp_path / "x")]) == 1
    assert f"no split_* parts in {tmp_path / 'empty'}" in capsys.readouterr().err


def test_an_interrupted_extraction_is_redone(tmp_path):
    parts = make_parts(tmp_path, MEMBERS)
    (tmp_path / "latents.partial" / "stale").mkdir(parents=True)
    assert F.main(["--extract", str(parts), str(tmp_path / "latents")]) == 0
    assert not (tmp_path / "latents" / "stale").exists() and not (tmp_path / "latents.partial").exists()
