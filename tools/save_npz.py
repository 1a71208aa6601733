"""Pack a folder of sample PNGs into an ADM sample batch (`{folder}.npz`): the command line for
`evaluation.npz.create_npz_from_sample_folder`.

`{i:06d}.png` for i = 0..N-1 are stacked, sorted by index, as uint8 (N, H, W, 3) under `arr_0`;
`{folder}/labels.npy`, when present, goes to `arr_1`.

    python tools/save_npz.py SAMPLE_DIR [--num 50000]
"""
from __future__ import annotations

import argparse
import logging
import sys

from evaluation.npz import create_npz_from_sample_folder


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description="Pack {i:06d}.png samples into an ADM sample batch {folder}.npz")
    parser.add_argument("sample_dir")
    parser.add_argument("--num", type=int, default=None, help="pack indices 0..num-1 (default: all, contiguous)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return create_npz_from_sample_folder(args.sample_dir, args.num)


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as err:  # no samples, a gap in the indices, a bad PNG
        raise SystemExit(f"error: {err}") from None
