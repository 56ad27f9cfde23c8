#!/usr/bin/env bash
# Every measured figure in the README comes from this script, run on the real data:
#     bash scripts/reproduce.sh [INTEL_ROOT] [CLEAN_IMAGES]
# defaults: ../shared/data/intel and ../shared/data/denoise/McMaster. Outputs go to $OUT (runs/readme).
# Every step runs alone on all cores, one after the other (on 2 CPU cores: about 3 hours).
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
# A rerun after an interruption skips every run that already finished (it has a summary.json);
# an unfinished recipe run resumes from its latest checkpoint (--resume starts afresh when there is none).
finished() { [[ -f "$OUT/$1/summary.json" ]] && echo "[reproduce] $1 already finished, skipped"; }

step "data check and exploration"
[[ -f "$OUT/data-check.json" ]] || $BIN/toolkit data check "$DATA" --json "$OUT/data-check.json" | tee "$OUT/data-check.txt" || true
[[ -d "$OUT/explore" ]] || $BIN/toolkit data explore "$DATA" --out "$OUT/explore" --wandb_mode=disabled

step "benchmark (all cores, nothing else running)"
[[ -f "$OUT/benchmark.json" ]] || $BIN/toolkit benchmark --data="$DATA" --out "$OUT/benchmark.json" | tee "$OUT/benchmark.txt"

step "fast_cnn (all cores)"
finished fast_cnn || $LAUNCH recipes/fast_cnn.py --resume --data="$DATA" --run_dir="$OUT/fast_cnn" 2>&1 | tee "$OUT/fast_cnn.log"
step "efficientnet_lite0 fine-tuning (all cores)"
finished efficientnet_lite0 || $LAUNCH recipes/efficientnet_lite0.py --resume --data="$DATA" --run_dir="$OUT/efficientnet_lite0" 2>&1 | tee "$OUT/efficientnet.log"
step "efficientnet_lite0 linear probe (all cores)"
finished efficientnet_probe || $LAUNCH recipes/efficientnet_lite0.py --resume --data="$DATA" --mode=linear_probe --run_dir="$OUT/efficientnet_probe" \
    2>&1 | tee "$OUT/efficientnet_probe.log"

step "the study's classifier comparison (all cores)"
finished compare || $LAUNCH recipes/compare_classifiers.py --resume --data="$DATA" --run_dir="$OUT/compare" \
    2>&1 | tee "$OUT/compare.log"
step "the latent-size study (all cores)"
finished latent_study || $LAUNCH recipes/latent_study.py --resume --data="$DATA" --run_dir="$OUT/latent_study" \
    2>&1 | tee "$OUT/latent_study.log"

step "a blind, noise-conditioned U-Net for the published benchmark protocol (all cores)"
finished unet_blind || $LAUNCH recipes/autoencoder.py --resume --data="$DATA" --model=unet --conditioned --sigma=0 --sigma_max=0.2 \
    --clip_noise=false --crop=64 --epochs=2 --run_dir="$OUT/unet_blind" 2>&1 | tee "$OUT/unet_blind.log"
$BIN/toolkit benchmark-denoiser "$OUT/unet_blind" --clean "$CLEAN" --sigmas 15 25 50 --nlm \
    --out "$OUT/mcmaster.json" | tee "$OUT/mcmaster.txt"

step "using the models: evaluate on the held-out split, predict a folder, reports"
$BIN/toolkit evaluate "$OUT/efficientnet_lite0" "$DATA" --holdout_fraction=0.1 --out "$OUT/evaluate_efficientnet"
$BIN/toolkit evaluate "$OUT/fast_cnn" "$DATA" --holdout_fraction=0.1 --out "$OUT/evaluate_fast_cnn"
$BIN/toolkit predict "$OUT/efficientnet_lite0" "$DATA/seg_train/glacier" --top_k 2 --out "$OUT/predictions.csv"
$BIN/toolkit report "$OUT/compare" "$OUT/fast_cnn" "$OUT/efficientnet_lite0" "$OUT/efficientnet_probe" \
    "$OUT/evaluate_efficientnet" --out "$OUT/report_classifiers" --title "Intel scenes: classifiers"
$BIN/toolkit report "$OUT/latent_study" "$OUT/unet_blind" --out "$OUT/report_denoising" \
    --title "Intel scenes: denoising"
step "done"
