#!/usr/bin/env bash
# One command to check a commit on one GPU: the GPU tests (marker `gpu`) and a short GPU benchmark,
# then a summary table. Target: under 8 minutes on one H100/H200-class GPU.
#
#     bash tools/gpu_check.sh                  # in an environment that already has a CUDA torch
#     PYTHON=/opt/conda/bin/python bash tools/gpu_check.sh
#     BENCH_ARGS="--models LightningDiT-XL/1 --batches 32 64 128" bash tools/gpu_check.sh
#     GPU_CHECK_NO_INSTALL=1 bash tools/gpu_check.sh   # install nothing, only report what is missing
#
# It uses the current Python and its torch (a site's CUDA build) and never installs or upgrades
# torch: missing required packages are installed with torch pinned to the installed version, the
# repository itself with `pip install -e . --no-deps`. Optional packages (lpips, torch-fidelity,
# diffusers, matplotlib) are only reported, with the command that adds them.
# Exit status: 0 all passed, 1 a test or benchmark failed, 3 no CUDA torch here.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
OUT="${GPU_CHECK_OUT:-output/gpu_check}"

# 1. A CUDA torch (fails fast on a machine without one).
if ! "$PY" - <<'EOF'
import sys
try:
    import torch
except ImportError:
    sys.exit("gpu_check: torch is not installed for this Python; install the CUDA build for your "
             "driver first (https://pytorch.org/get-started/locally/), then rerun")
if not torch.cuda.is_available():
    sys.exit(f"gpu_check: torch {torch.__version__} sees no CUDA device (CUDA build: "
             f"{torch.version.cuda}); run this on a GPU node")
print(f"gpu_check: torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
EOF
then
    exit 3
fi
mkdir -p "$OUT"

# 2. What is missing: required packages (installed unless GPU_CHECK_NO_INSTALL=1), optional ones (reported).
"$PY" - "$OUT/missing.txt" <<'EOF'
import importlib.util, sys
required = {"omegaconf": "omegaconf>=2.3", "timm": "timm>=1.0.9", "accelerate": "accelerate>=0.30",
            "safetensors": "safetensors>=0.4", "scipy": "scipy>=1.10", "PIL": "pillow>=9.4",
            "tqdm": "tqdm>=4.60", "einops": "einops>=0.7", "torchdiffeq": "torchdiffeq>=0.2.3",
            "torchvision": "torchvision>=0.19", "pytest": "pytest>=7.4"}
optional = {"lpips": ("lpips>=0.1.4", "tokenizer training's LPIPS loss and its tests"),
            "torch_fidelity": ("torch-fidelity>=0.3", "the FID Inception network definition"),
            "diffusers": ("diffusers", "the SD-VAE tokenizer wrapper's cross-check tests"),
            "matplotlib": ("matplotlib>=3.7", "loss curves and sample grids")}
missing = [spec for mod, spec in required.items() if importlib.util.find_spec(mod) is None]
with open(sys.argv[1], "w") as f:
    f.write("\n".join(missing) + ("\n" if missing else ""))
for mod, (spec, use) in optional.items():
    if importlib.util.find_spec(mod) is None:
        print(f"gpu_check: optional package missing: {spec} ({use}); add it with: "
              f"{sys.executable} -m pip install '{spec}'")
EOF
TORCH_PIN="torch==$("$PY" -c 'import torch; print(torch.__version__)')"
if [ -s "$OUT/missing.txt" ]; then
    if [ "${GPU_CHECK_NO_INSTALL:-0}" = "1" ]; then
        echo "gpu_check: missing required packages: $(tr '\n' ' ' < "$OUT/missing.txt")" >&2
        echo "gpu_check: add them with: $PY -m pip install $(tr '\n' ' ' < "$OUT/missing.txt")" >&2
        exit 1
    fi
    echo "gpu_check: installing missing packages (torch stays $TORCH_PIN): $(tr '\n' ' ' < "$OUT/missing.txt")"
    echo "$TORCH_PIN" > "$OUT/constraints.txt"
    "$PY" -m pip install --quiet -c "$OUT/constraints.txt" -r "$OUT/missing.txt" || exit 1
fi
if ! (cd /tmp && "$PY" -c "import configs.schema, models.kernels" 2>/dev/null); then
    if [ "${GPU_CHECK_NO_INSTALL:-0}" = "1" ]; then
        export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    else
        "$PY" -m pip install --quiet --no-deps -e . || exit 1
    fi
fi

# 3. GPU tests, then the benchmark (each under its own time limit).
status=0
timeout 240 "$PY" -m pytest -m gpu tests/gpu tests/tools/test_adm_metrics.py -q -p no:cacheprovider \
    --junitxml="$OUT/gpu_tests.xml" 2>&1 | tee "$OUT/gpu_tests.log" || status=1
# shellcheck disable=SC2086
timeout 270 "$PY" tools/bench/bench_gpu.py ${BENCH_ARGS:---models LightningDiT-XL/1 --batches 64 \
    --steps 10 --warmup 3 --sample-batch 64 --sample-images 64 --ref-images 8} \
    > "$OUT/bench_gpu.jsonl" 2> "$OUT/bench_gpu.err" || { status=1; tail -20 "$OUT/bench_gpu.err"; }

# 4. Summary table.
"$PY" - "$OUT" <<'EOF'
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path
out = Path(sys.argv[1])
print("\n== GPU tests ==")
try:
    root = ET.parse(out / "gpu_tests.xml").getroot()
    for case in root.iter("testcase"):
        state = "FAIL" if case.find("failure") is not None or case.find("error") is not None else \
            "skip" if case.find("skipped") is not None else "pass"
        print(f"  {state:4s}  {case.get('classname', '').split('.')[-1]}::{case.get('name')}  ({float(case.get('time', 0)):.1f} s)")
except (OSError, ET.ParseError):
    print("  (no test report: see gpu_tests.log)")
print("\n== GPU benchmark (bench_gpu.jsonl) ==")
rows = [json.loads(l) for l in (out / "bench_gpu.jsonl").read_text().splitlines() if l.startswith("{")] \
    if (out / "bench_gpu.jsonl").is_file() else []
for r in rows:
    if r["bench"] == "env":
        print(f"  {r['device']}, torch {r['torch']}, measured bf16 matmul {r['bf16_matmul_peak_tflops']:.0f} TFLOP/s")
print(f"  {'train':8s} {'model':18s} {'variant':8s} {'batch':>5s} {'img/s':>8s} {'TFLOP/s':>8s} {'MFU':>6s} {'peak GB':>8s}")
for r in rows:
    if r["bench"] == "train":
        if r.get("oom"):
            print(f"  {'':8s} {r['model']:18s} {r['variant']:8s} {r['batch']:5d}  out of memory")
            continue
        print(f"  {'':8s} {r['model']:18s} {r['variant']:8s} {r['batch']:5d} {r['images_per_s']:8.1f} "
              f"{r['tflops']:8.1f} {r['mfu']:6.1%} {r.get('peak_mem_gb', 0):8.1f}")
    elif r["bench"] == "train_ratio":
        print(f"  {'':8s} {r['model']:18s} ours / authors img/s at batch {r['batch']}: {r['speedup_ours_over_authors']:.2f}x"
              "  (target >= 1.5x)")
print(f"  {'sample':8s} {'variant':12s} {'batch':>5s} {'prec':>5s} {'skip':>5s} {'img/s':>8s}")
ref = None
for r in rows:
    if r["bench"] == "sample":
        ref = r["images_per_s"] if r["variant"] == "reference" else ref
        ratio = f"  {r['images_per_s'] / ref:.2f}x reference" if ref and r["variant"] != "reference" else ""
        print(f"  {'':8s} {r['variant']:12s} {r['per_proc_batch']:5d} {r['precision']:>5s} {str(r['skip_uncond']):>5s} "
              f"{r['images_per_s']:8.2f}{ratio}")
    elif r["bench"] == "sample_check":
        print(f"  max pixel difference reference vs ours over {r['images_compared']} images: fp32 "
              f"{r['max_pixel_diff_fp32']} (target <= 2), bf16 {r['max_pixel_diff_bf16']}")
EOF
echo "gpu_check: outputs in $OUT/ (exit status $status)"
exit $status
