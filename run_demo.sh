#!/usr/bin/env bash
# The main job: the whole system end to end on the built-in toy dataset, on CPU (time: README).
#
#   bash run_demo.sh                 # full demo (its measured time: README, "The demo")
#   DEMO_SMOKE=1 bash run_demo.sh    # the same pipeline at tiny sizes (run by the tests)
#
# Stages, each a call of the real scripts with a config under configs/demo/:
#   1 toy ImageFolder (datasets/toy.py)          5 guided class-conditional grid (run_fast_inference.sh)
#   2 tokenizer training (run_train_tokenizer.sh) 6 class-balanced samples, with and without guidance
#   3 latent extraction, 2 processes              (run_inference.sh)
#     (run_extraction.sh)                         7 evaluation: tokenizer PSNR/SSIM (run_tokenizer_eval.sh),
#   4 LightningDiT training (run_train.sh)          colour error at shape edges (analyse_reconstruction.py),
#                                                   toy-classifier accuracy of samples, FID if weights given
#                                                 8 summary table + demo_output/summary.json
# Optional weights (the demo downloads nothing; `python tools/fetch_weights.py dinov2-vitl14
# inception-fid vgg16-lpips` fetches them, see docs/weights.md):
#   DINOV2_WEIGHTS=/path/dinov2.safetensors  -> the tokenizer trains with the VF (DINOv2) loss
#   ADM_INCEPTION_WEIGHTS=/path/pt_inception-2015-12-05-6726825d.pth -> FID of the samples
#   LPIPS_VGG_WEIGHTS=/path/vgg16-397923af.pth -> LPIPS in the tokenizer evaluation
# Re-running continues where a previous run stopped (every stage resumes or skips finished work);
# remove demo_output/ (or set DEMO_OUT) for a fresh run.
set -euo pipefail
if [[ " $* " == *" --help "* || " $* " == *" -h "* ]]; then  # usage only: no venv, no output
    sed -n '2,/^set -/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0
fi
cd "$(dirname "$0")"
source tools/setup_venv.sh

OUT="${DEMO_OUT:-demo_output}"
# Progress bars update every 30 s when the output is a log file rather than a terminal.
[ -t 1 ] || export TQDM_MININTERVAL="${TQDM_MININTERVAL:-30}"
if [ "${DEMO_SMOKE:-0}" = "1" ]; then
    PER_CLASS=24; VAL_PER_CLASS=6; TOK_STEPS=40; TOK_DECAY=20; DIT_STEPS=120; NUM_SAMPLES=40; SAMPLE_STEPS=20
    CLF_EPOCHS=3; TOK_EVERY=20; DIT_EVERY=60; LOG_EVERY=10
else
    PER_CLASS=300; VAL_PER_CLASS=30; TOK_STEPS=1200; TOK_DECAY=600; DIT_STEPS=3000; NUM_SAMPLES=200; SAMPLE_STEPS=50
    CLF_EPOCHS=6; TOK_EVERY=300; DIT_EVERY=1000; LOG_EVERY=50
fi
mkdir -p "$OUT"
TIMES="$OUT/stage_seconds.txt"
: > "$TIMES"
stage_start() { STAGE="$1"; STAGE_T0=$SECONDS; echo; echo "=== [$(date +%H:%M:%S)] stage: $STAGE"; }
stage_end() { echo "$STAGE $(( SECONDS - STAGE_T0 ))" >> "$TIMES"; }

TOK_YAML="$OUT/tokenizer/export/vavae.yaml"
DIT_CKPT="$OUT/dit/checkpoints/$(printf %07d "$DIT_STEPS").pt"
DIT_ARGS=(data.data_path="$OUT/latents" vae.config_path="$TOK_YAML" train.output_dir="$OUT"
          ckpt_path="$DIT_CKPT" sample.num_sampling_steps="$SAMPLE_STEPS")

stage_start data
python -m datasets.toy --root "$OUT/toy/train" --num-per-class "$PER_CLASS" --image-size 32 --split train
python -m datasets.toy --root "$OUT/toy/val" --num-per-class "$VAL_PER_CLASS" --image-size 32 --split val
python -c "from datasets.toy import CLASS_NAMES; print('\n'.join(CLASS_NAMES))" > "$OUT/toy/class_names.txt"
stage_end

stage_start tokenizer
# lr 1e-3 until TOK_DECAY, then a cosine decay to 0 at the last step (configs/demo/tokenizer.yaml): a
# short run that ends at a high constant LR leaves a colour fringe at shape edges (docs/demo.md)
TOK_ARGS=(train.output_dir="$OUT" train.max_steps="$TOK_STEPS" train.val_every="$TOK_EVERY" train.log_every="$LOG_EVERY"
          train.sample_every="$TOK_EVERY" train.ckpt_every="$TOK_EVERY"
          train.lr_schedule.decay_start="$TOK_DECAY" train.lr_schedule.total_steps="$TOK_STEPS"
          data.params.train.data_root="$OUT/toy/train" data.params.validation.data_root="$OUT/toy/val")
if [ -n "${DINOV2_WEIGHTS:-}" ]; then
    echo "DINOV2_WEIGHTS=$DINOV2_WEIGHTS: training the tokenizer with the VF (DINOv2) alignment loss"
    TOK_ARGS+=(model.params.use_vf=dinov2 model.params.foundation.weights="$DINOV2_WEIGHTS")
else
    echo "No DINOV2_WEIGHTS: training the tokenizer with the LDM objective (no VF loss)."
fi
bash run_train_tokenizer.sh configs/demo/tokenizer.yaml "${TOK_ARGS[@]}"
stage_end

stage_start extraction
GPUS_PER_NODE=2 bash run_extraction.sh --data-path "$OUT/toy/train" --output-path "$OUT/latents" \
    --tokenizer-config "$TOK_YAML" --image-size 32 --batch-size 50 --num-workers 0 --shard-size 1000
stage_end

stage_start lightningdit
# train.resume=true: a re-run continues (or, when finished, keeps) the run instead of being refused
bash run_train.sh configs/demo/lightningdit.yaml "${DIT_ARGS[@]}" train.max_steps="$DIT_STEPS" \
    train.ckpt_every="$DIT_EVERY" train.log_every="$LOG_EVERY" train.resume=true
stage_end

stage_start grid
bash run_fast_inference.sh configs/demo/lightningdit.yaml "${DIT_ARGS[@]}" --demo-config-sampling \
    --demo-classes 0,1,2,3,4,5,6,7 --class-names "$OUT/toy/class_names.txt" --demo-out "$OUT/demo_samples.png"
stage_end

stage_start sampling
for scale in 1.0 3.0; do
    bash run_inference.sh configs/demo/lightningdit.yaml "${DIT_ARGS[@]}" sample.fid_num="$NUM_SAMPLES" \
        sample.cfg_scale="$scale"
done
stage_end

stage_start evaluation
EVAL_ARGS=(--skip-fid)
if [ -n "${ADM_INCEPTION_WEIGHTS:-}" ]; then EVAL_ARGS=(--inception-weights "$ADM_INCEPTION_WEIGHTS"); fi
if [ -z "${LPIPS_VGG_WEIGHTS:-}" ]; then EVAL_ARGS+=(--skip-lpips); fi
bash run_tokenizer_eval.sh --config "$TOK_YAML" --data-path "$OUT/toy/val" --image-size 32 \
    --batch-size 50 --num-workers 0 --output "$OUT/tokenizer_eval.json" "${EVAL_ARGS[@]}"
python tools/analyse_reconstruction.py --images "$OUT/toy/val" --tokenizer "$TOK_YAML" --size 32 \
    --json "$OUT/tokenizer_edges.json" > /dev/null   # colour error at shape edges (the summary shows it)
python -m evaluation.toy_classifier train --train-root "$OUT/toy/train" --val-root "$OUT/toy/val" \
    --out "$OUT/classifier.pt" --image-size 32 --epochs "$CLF_EPOCHS"
if [ -n "${ADM_INCEPTION_WEIGHTS:-}" ]; then
    python tools/make_reference_batch.py "$OUT/toy/val" "$OUT/toy_val_reference.npz" --image-size 32 \
        --inception-weights "$ADM_INCEPTION_WEIGHTS"
fi
stage_end

python -m tools.demo_summary "$OUT" --classifier "$OUT/classifier.pt" --stage-times "$TIMES"
