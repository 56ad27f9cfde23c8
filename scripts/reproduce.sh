#!/usr/bin/env bash
# Every measured figure in the README comes from this script, run on the real data:
#     bash scripts/reproduce.sh [INTEL_ROOT] [CLEAN_IMAGES]
# defaults: ../shared/data/intel and ../shared/data/denoise/McMaster. Outputs go to $OUT (runs/readme).
# Timing-critical recipes (the 15-minute targets, the benchmark) run alone on all cores; the two
# long studies run side by side, one core each, and say so in their logs.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/intel}
CLEAN=${2:-../shared/data/denoise/McMaster}
OUT=${OUT:-runs/readme}
export WANDB_MODE=${WANDB_MODE:-offline}
BIN=.venv/bin
LAUNCH="$BIN/accelerate launch --config_file accelerate_config.yaml"
mkdir -p "$OUT"
step() { printf '\n=== %s (%s)\n' "$1" "$(date +%H:%M:%S)"; }

step "data check and exploration"
$BIN/toolkit data check "$DATA" --json "$OUT/data-check.json" | tee "$OUT/data-check.txt" || true
$BIN/toolkit data explore "$DATA" --out "$OUT/explore" --wandb_mode=disabled

step "benchmark (all cores, nothing else running)"
$BIN/toolkit benchmark --data="$DATA" --out "$OUT/benchmark.json" | tee "$OUT/benchmark.txt"

step "fast_cnn (all cores)"
$LAUNCH recipes/fast_cnn.py --data="$DATA" --run_dir="$OUT/fast_cnn" 2>&1 | tee "$OUT/fast_cnn.log"
step "efficientnet_lite0 fine-tuning (all cores)"
$LAUNCH recipes/efficientnet_lite0.py --data="$DATA" --run_dir="$OUT/efficientnet_lite0" 2>&1 | tee "$OUT/efficientnet.log"
step "efficientnet_lite0 linear probe (all cores)"
$LAUNCH recipes/efficientnet_lite0.py --data="$DATA" --mode=linear_probe --run_dir="$OUT/efficientnet_probe" \
    2>&1 | tee "$OUT/efficientnet_probe.log"

step "the two studies side by side, one core each"
OMP_NUM_THREADS=1 $LAUNCH recipes/compare_classifiers.py --data="$DATA" --run_dir="$OUT/compare" \
    > "$OUT/compare.log" 2>&1 &
OMP_NUM_THREADS=1 $LAUNCH recipes/latent_study.py --data="$DATA" --run_dir="$OUT/latent_study" \
    > "$OUT/latent_study.log" 2>&1 &
wait

step "a blind, noise-conditioned U-Net for the published benchmark protocol (all cores)"
$LAUNCH recipes/autoencoder.py --data="$DATA" --model=unet --conditioned --sigma=0 --sigma_max=0.2 \
    --clip_noise=false --crop=64 --epochs=4 --run_dir="$OUT/unet_blind" 2>&1 | tee "$OUT/unet_blind.log"
$BIN/toolkit benchmark-denoiser "$OUT/unet_blind" --clean "$CLEAN" --sigmas 15 25 50 --nlm \
    --out "$OUT/mcmaster.json" | tee "$OUT/mcmaster.txt"

step "using the models: evaluate on the held-out split, predict a folder, reports"
$BIN/toolkit evaluate "$OUT/efficientnet_lite0" "$DATA" --holdout_fraction=0.1 --out "$OUT/evaluate_efficientnet"
$BIN/toolkit predict "$OUT/efficientnet_lite0" "$DATA/seg_train/glacier" --top_k 2 --out "$OUT/predictions.csv"
$BIN/toolkit report "$OUT/compare" "$OUT/fast_cnn" "$OUT/efficientnet_lite0" "$OUT/efficientnet_probe" \
    "$OUT/evaluate_efficientnet" --out "$OUT/report_classifiers" --title "Intel scenes: classifiers"
$BIN/toolkit report "$OUT/latent_study" "$OUT/unet_blind" --out "$OUT/report_denoising" \
    --title "Intel scenes: denoising"
step "done"
