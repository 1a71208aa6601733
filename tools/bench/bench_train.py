"""End-to-end training throughput: the real train.py loop (data loading, step-keyed draws, AdamW,
EMA, logging) on the tiny config, launched through tools/launch.sh with 1 and 2 processes.

    python tools/bench/bench_train.py [--steps 120] [--batch 32] [--threads 1]

Prints one JSON line: steps/s and images/s (median over the log windows after the first, which
holds start-up), per process count, and the 2-vs-1 ratio. Uses a synthetic latent directory
(datasets/tiny_latents.py) in a temporary folder.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

from datasets.tiny_latents import write_tiny_latents

LINE = re.compile(r"Train Steps/Sec: ([\d.]+), Images/Sec: ([\d.]+)")


def run(nproc: int, data: str, out: str, args) -> dict:
    env = dict(os.environ, GPUS_PER_NODE=str(nproc), OMP_NUM_THREADS=str(args.threads),
               MASTER_PORT=str(29600 + nproc), PYTHONPATH=str(REPO))
    overrides = [f"data.data_path={data}", f"train.output_dir={out}", f"train.exp_name=bench{nproc}",
                 f"train.max_steps={args.steps}", f"train.global_batch_size={args.batch}",
                 f"train.log_every={args.log_every}", f"train.ckpt_every={10 * args.steps}"]
    cmd = ["bash", "-c", f'source "{REPO}/tools/launch.sh"; launch "$@"', "launch",
           str(REPO / "train.py"), str(REPO / "configs/tiny/lightningdit_tiny.yaml"), *overrides]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout[-2000:] + proc.stderr[-2000:])
    windows = [(float(a), float(b)) for a, b in LINE.findall(proc.stdout)][1:]
    return {"steps_per_sec": statistics.median(w[0] for w in windows),
            "images_per_sec": statistics.median(w[1] for w in windows), "windows": len(windows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="OMP threads per process")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = str(write_tiny_latents(os.path.join(tmp, "latents"), num_items=512))
        results = {n: run(n, data, os.path.join(tmp, "out"), args) for n in (1, 2)}
    import torch
    print(json.dumps({
        "bench": "train", "config": "configs/tiny/lightningdit_tiny.yaml", "global_batch": args.batch,
        "steps": args.steps, "threads_per_process": args.threads,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "procs1": results[1], "procs2": results[2],
        "ratio_2_vs_1": round(results[2]["images_per_sec"] / results[1]["images_per_sec"], 3),
    }))


if __name__ == "__main__":
    main()
