"""Sample folder -> ADM sample batch (tools/save_npz.py) and the streaming .npz reader/writer."""
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from evaluation.npz import NpzArrayReader, StreamedArray, create_npz_from_sample_folder, read_batch_images, write_npz_atomic
from tools.save_npz import main


def _write_samples(folder, n, h=6, w=5, seed=0, skip=()):
    folder.mkdir(exist_ok=True)
    imgs = np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    for i in range(n):
        if i not in skip:
            Image.fromarray(imgs[i]).save(folder / f"{i:06d}.png")
    return imgs


def _leftovers(folder):
    return [p for p in os.listdir(folder) if p.startswith(".tmp-")]


def test_folder_round_trip_sorted_by_index(tmp_path):
    folder = tmp_path / "samples"
    imgs = _write_samples(folder, 12)
    (folder / "notes.txt").write_text("ignored")
    path = create_npz_from_sample_folder(str(folder))
    assert path == str(tmp_path / "samples.npz")
    with np.load(path) as f:
        assert f.files == ["arr_0"]
        assert f["arr_0"].dtype == np.uint8 and f["arr_0"].shape == (12, 6, 5, 3)
        np.testing.assert_array_equal(f["arr_0"], imgs)
    assert not _leftovers(tmp_path)


def test_num_takes_the_first_indices_and_labels_become_arr_1(tmp_path):
    folder = tmp_path / "s"
    imgs = _write_samples(folder, 6)
    labels = np.array([5, 3, 9, 1, 0, 7], dtype=np.int64)
    np.save(folder / "labels.npy", labels)
    path = main([str(folder), "--num", "4"])
    with np.load(path) as f:
        np.testing.assert_array_equal(f["arr_0"], imgs[:4])
        np.testing.assert_array_equal(f["arr_1"], labels[:4])
        assert f["arr_1"].dtype == np.int64


def test_missing_index_is_refused(tmp_path):
    folder = tmp_path / "s"
    _write_samples(folder, 5, skip={3})
    with pytest.raises(ValueError, match="000003.png"):
        create_npz_from_sample_folder(str(folder))
    with pytest.raises(ValueError, match="missing"):
        create_npz_from_sample_folder(str(folder), num=5)
    assert create_npz_from_sample_folder(str(folder), num=3)  # indices 0..2 are all there


def test_mixed_sizes_are_refused_without_leaving_files(tmp_path):
    folder = tmp_path / "s"
    _write_samples(folder, 4)
    Image.fromarray(np.zeros((7, 5, 3), np.uint8)).save(folder / "000002.png")
    with pytest.raises(ValueError, match="000002.png"):
        create_npz_from_sample_folder(str(folder))
    assert not (tmp_path / "s.npz").exists() and not _leftovers(tmp_path)


def test_non_rgb_and_missing_folder_are_refused(tmp_path):
    folder = tmp_path / "s"
    _write_samples(folder, 2)
    Image.fromarray(np.zeros((6, 5), np.uint8)).save(folder / "000001.png")
    with pytest.raises(ValueError, match="RGB"):
        create_npz_from_sample_folder(str(folder))
    with pytest.raises(FileNotFoundError):
        create_npz_from_sample_folder(str(tmp_path / "absent"))
    with pytest.raises(ValueError, match="labels"):
        _write_samples(folder, 2)
        np.save(folder / "labels.npy", np.zeros(1, np.int64))
        create_npz_from_sample_folder(str(folder))


def test_streamed_writer_is_byte_identical_to_np_savez(tmp_path):
    arr = np.random.default_rng(1).integers(0, 256, (9, 4, 3, 3), dtype=np.uint8)
    labels = np.arange(9, dtype=np.int64)
    ours, theirs = tmp_path / "ours.npz", tmp_path / "theirs.npz"
    write_npz_atomic(str(ours), {"arr_0": StreamedArray(arr.shape, np.uint8, (arr[i: i + 4] for i in range(0, 9, 4))),
                                 "arr_1": labels})
    np.savez(theirs, arr, labels)
    with zipfile.ZipFile(ours) as a, zipfile.ZipFile(theirs) as b:
        for name in ("arr_0.npy", "arr_1.npy"):
            assert a.read(name) == b.read(name)
    with pytest.raises(ValueError, match="rows"):
        write_npz_atomic(str(tmp_path / "short.npz"), {"arr_0": StreamedArray((5, 2), np.uint8, [np.zeros((3, 2))])})
    assert not (tmp_path / "short.npz").exists() and not _leftovers(tmp_path)


@pytest.mark.parametrize("writer", ["savez", "savez_compressed", "fortran"])
def test_streaming_reader_matches_np_load(tmp_path, writer):
    arr = np.random.default_rng(2).integers(0, 256, (11, 5, 4, 3), dtype=np.uint8)
    path = tmp_path / "b.npz"
    if writer == "fortran":
        np.savez(path, np.asfortranarray(arr))
    else:
        getattr(np, writer)(path, arr)
    reader = read_batch_images(str(path))
    assert len(reader) == 11
    batches = list(reader.iter_batches(4))
    assert [len(b) for b in batches] == [4, 4, 3]
    np.testing.assert_array_equal(np.concatenate(batches), arr)
    assert all(b.flags.writeable for b in batches)


def test_reader_rejects_bad_batches(tmp_path):
    np.savez(tmp_path / "float.npz", np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        read_batch_images(str(tmp_path / "float.npz"))
    np.savez(tmp_path / "nchw.npz", np.zeros((2, 3, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="NHWC|N, H, W, 3"):
        read_batch_images(str(tmp_path / "nchw.npz"))
    np.savez(tmp_path / "named.npz", images=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="arr_0"):
        NpzArrayReader(str(tmp_path / "named.npz"))
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="not an .npz"):
        NpzArrayReader(str(tmp_path / "junk.npz"))
    with pytest.raises(FileNotFoundError):
        NpzArrayReader(str(tmp_path / "absent.npz"))
