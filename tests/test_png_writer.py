"""sampling.loop.PNGWriter: the background writer of the FID loop writes exactly what save_png writes."""
import numpy as np
import pytest

from sampling.loop import PNGWriter, save_png


def test_writer_output_identical_to_direct_writes(tmp_path):
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8) for _ in range(3)]
    direct, threaded = tmp_path / "direct", tmp_path / "threaded"
    direct.mkdir()
    threaded.mkdir()
    with PNGWriter(workers=2) as writer:
        for k, batch in enumerate(batches):
            writer.submit(batch, [threaded / f"{k}_{i}.png" for i in range(len(batch))])
    for k, batch in enumerate(batches):
        for i, image in enumerate(batch):
            save_png(image, direct / f"{k}_{i}.png")
    names = sorted(p.name for p in direct.iterdir())
    assert names == sorted(p.name for p in threaded.iterdir()) and len(names) == 9
    for name in names:
        assert (direct / name).read_bytes() == (threaded / name).read_bytes(), name


def test_writer_raises_write_errors(tmp_path):
    image = np.zeros((1, 4, 4, 3), dtype=np.uint8)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(OSError):  # the parent is a file: the worker's error reaches the caller
        with PNGWriter() as writer:
            writer.submit(image, [tmp_path / "a_file" / "0.png"])
