"""The GPU check command and benchmark on a machine without CUDA: a clear message and a non-zero
exit, quickly (the GPU figures themselves need a GPU: tools/gpu_check.sh)."""
import os
import subprocess
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA behaviour")


def test_bench_gpu_without_cuda_exits_2(capsys):
    from tools.bench import bench_gpu

    assert bench_gpu.main([]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_gpu_check_without_cuda_exits_3(tmp_path):
    env = dict(os.environ, GPU_CHECK_OUT=str(tmp_path / "out"))
    proc = subprocess.run(["bash", str(REPO / "tools/gpu_check.sh")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "no CUDA device" in proc.stderr
    assert not (tmp_path / "out").exists()  # nothing installed or written


@pytest.mark.slow
def test_bench_gpu_smoke_runs_on_cpu(capsys):
    """--smoke: every result kind is produced, and the reference-vs-ours fp32 images agree."""
    import json

    from tools.bench import bench_gpu

    assert bench_gpu.main(["--smoke"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    kinds = [r["bench"] for r in rows]
    assert kinds.count("train") == 2 and kinds.count("sample") == 3 and "train_ratio" in kinds
    check = next(r for r in rows if r["bench"] == "sample_check")
    assert check["max_pixel_diff_fp32"] <= 2
