#!/usr/bin/env bash
# Every measured figure in README.md and docs/results.md comes from this script, run on the real data:
#     bash scripts/reproduce.sh [INTEL_ROOT] [CLEAN_TRAIN_IMAGES] [CLEAN_TEST_IMAGES]
# defaults: data/intel, data/denoise/CBSD432, data/denoise/McMaster (the Intel scenes as in the README's quick
# start; CBSD432 and McMaster as any folders of clean images).
# Outputs go to $OUT (runs/readme). Each step runs alone on all cores, one after the other; a rerun after an
# interruption skips every finished step (it has a summary.json) and resumes an unfinished one from its checkpoint
# (a benchmark-denoiser from the scores it kept in its .progress.json).
# STEPS="denoiser compare" runs only those steps (names below); on 2 AVX2-only CPU cores the whole script takes ~13 hours.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-data/intel}
CLEAN=${2:-data/denoise/CBSD432}
BENCH=${3:-data/denoise/McMaster}
OUT=${OUT:-runs/readme}
ALL_STEPS="check benchmark select denoiser mcmaster gpu_denoiser compare latent use cnn_gap"
STEPS=${STEPS:-$ALL_STEPS}
for name in $STEPS; do  # a misspelt step would otherwise run nothing and say done
    [[ " $ALL_STEPS " == *" $name "* ]] || { echo "error: STEPS names '$name', which is not a step of this script:" \
        "choose from $ALL_STEPS" >&2; exit 2; }
done
export WANDB_MODE=${WANDB_MODE:-offline}
BIN=${BIN:-.venv/bin}  # the environment scripts/setup.sh made
LAUNCH="$BIN/accelerate launch --config_file accelerate_config.yaml"
mkdir -p "$OUT"
step() { printf '\n=== %s (%s; %s)\n' "$1" "$(date +%H:%M:%S)" "$($BIN/python -c 'from toolkit.train.precision import describe_cpu; print(describe_cpu())')"; }
wanted() { [[ " $STEPS " == *" $1 "* ]]; }
finished() { [[ -f "$OUT/$1/summary.json" || -f "$OUT/$1/comparison.json" || -f "$OUT/$1/latent_study.json" ]] \
    && echo "[reproduce] $1 already finished, skipped"; }

# a study is finished when its JSON holds exactly the seeds asked for (more seeds: it resumes, reusing sub-runs)
seeds_done() { [[ -f "$OUT/$1" ]] && $BIN/python -c "import json, sys; sys.exit(json.load(open('$OUT/$1'))['seeds']
    != [int(s) for s in '$2'.split(',')])" && echo "[reproduce] $1 already finished at seeds $2, skipped"; }

if wanted check; then
    step "data check"
    [[ -f "$OUT/data-check.json" ]] || $BIN/toolkit data check "$DATA" --json "$OUT/data-check.json" | tee "$OUT/data-check.txt" || true
fi

if wanted benchmark; then
    step "benchmark (all cores, nothing else running)"
    [[ -f "$OUT/benchmark.json" ]] || $BIN/toolkit benchmark --data="$DATA" --out "$OUT/benchmark.json" | tee "$OUT/benchmark.txt"
fi

# The blind denoiser's architecture, chosen on a validation split of CBSD432 (32 held-out images' tiles at
# sigma 15/25/50): each candidate gets about 12 minutes of these 2 cores (epochs set from measured throughput).
BLIND="recipes/blind_denoiser.py --data=$CLEAN --eval_every=400"
if wanted select; then
    step "blind denoiser: architecture selection on CBSD432 validation images"
    finished select/resunet-16-128-b2 || $LAUNCH $BLIND --resume --run_dir="$OUT/select/resunet-16-128-b2" \
        --model_kwargs="widths=(16,32,64,128),blocks=2" --epochs=8 2>&1 | tee "$OUT/select-resunet-16-128-b2.log"
    finished select/resunet-24-192-b2 || $LAUNCH $BLIND --resume --run_dir="$OUT/select/resunet-24-192-b2" \
        --model_kwargs="widths=(24,48,96,192),blocks=2" --epochs=4 2>&1 | tee "$OUT/select-resunet-24-192-b2.log"
    finished select/resunet-32-256-b1 || $LAUNCH $BLIND --resume --run_dir="$OUT/select/resunet-32-256-b1" \
        --model_kwargs="widths=(32,64,128,256),blocks=1" --epochs=3 2>&1 | tee "$OUT/select-resunet-32-256-b1.log"
    finished select/dncnn-17x64 || $LAUNCH $BLIND --resume --run_dir="$OUT/select/dncnn-17x64" --model=dncnn \
        --model_kwargs="depth=17,width=64" --epochs=1 --eval_every=0 2>&1 | tee "$OUT/select-dncnn-17x64.log"
fi

# The default (10 epochs: ~31 training minutes on 2 AVX2-only cores in fp32, ~13 on 2 AVX512-BF16 cores in bf16;
# the latent study starts from it), twice its iterations at the same peak, and the long run: 60 training minutes
# at half the peak in batches of 4 (--train_minutes=60: the epochs that fit on this machine, measured at its start,
# and a limit; batches of 16 until 8 scored 0.48 dB higher on the validation tiles of an Intel Xeon's hour, 8 until
# 4 scored 0.04 higher in 43 training minutes than 8 in 57 on an AMD EPYC's, in bf16), on CBSD432's tiles and
# their halves (--reductions=1,2: CBSD432's JPEG colour is at half resolution, full once halved; level on the
# held-out images whole, +0.09-0.23 dB on them halved; the halves twice per epoch: +0.49 dB at sigma 0-2 on the
# held-out images, level at 15-50; a tenth of the patches at sigma 0-5: +1.50 dB at sigma 0-2, -0.004 at 15-50),
# on the L1 loss (the squared error: +0.02 dB at sigma 15-50, -1.45 at sigma 0-2
# on the held-out images), compared on CBSD432's held-out tiles; then the x8
# self-ensemble of the default and of the long run measured on CBSD432's held-out images (whole, and the long run's
# halved too), before anything touches McMaster.
if wanted denoiser; then
    step "the blind denoiser: the default, twice its iterations, and 60 minutes in batches of 4"
    finished blind_denoiser || $LAUNCH $BLIND --resume --run_dir="$OUT/blind_denoiser" 2>&1 | tee "$OUT/blind_denoiser.log"
    finished blind_denoiser-18ep || $LAUNCH $BLIND --resume --run_dir="$OUT/blind_denoiser-18ep" --epochs=18 2>&1 \
        | tee -a "$OUT/blind_denoiser-18ep.log"
    finished blind_denoiser-60min || $LAUNCH $BLIND --resume --run_dir="$OUT/blind_denoiser-60min" \
        --train_minutes=60 --lr=7e-4 --batch_size=4 --eval_every=4400 --reductions=1,2 --reduced_tile_repeats=2 \
        --light_noise_share=0.1 --light_noise_max=5 2>&1 \
        | tee -a "$OUT/blind_denoiser-60min.log"
    for run in blind_denoiser blind_denoiser-60min; do
        for ensemble in "" "--self_ensemble"; do
            name="cbsd432-held-out${run#blind_denoiser}${ensemble:+-x8}"
            [[ -f "$OUT/$name.json" ]] || $BIN/toolkit benchmark-denoiser "$OUT/$run" --clean "$CLEAN" \
                --validation_images $ensemble --sigmas 15 25 50 --out "$OUT/$name.json" | tee "$OUT/$name.txt"
        done
    done
    name="cbsd432-held-out-60min-halved"
    [[ -f "$OUT/$name.json" ]] || $BIN/toolkit benchmark-denoiser "$OUT/blind_denoiser-60min" --clean "$CLEAN" \
        --validation_images --reduce 2 --sigmas 15 25 50 --out "$OUT/$name.json" | tee "$OUT/$name.txt"
    # light noise on the same held-out images, told the noise level and blind (what the noise estimator costs); at
    # sigma 0, what the network does to a clean image
    for option in "" --blind; do
        name="cbsd432-held-out-60min-low-sigma${option:+-blind}"
        [[ -f "$OUT/$name.json" ]] || $BIN/toolkit benchmark-denoiser "$OUT/blind_denoiser-60min" --clean "$CLEAN" \
            --validation_images --sigmas 0 1 2 5 15 $option --out "$OUT/$name.json" | tee "$OUT/$name.txt"
    done
    name="cbsd432-held-out-60min-halved-low-sigma"  # colour at every pixel: where light noise is hardest
    [[ -f "$OUT/$name.json" ]] || $BIN/toolkit benchmark-denoiser "$OUT/blind_denoiser-60min" --clean "$CLEAN" \
        --validation_images --reduce 2 --sigmas 0 1 2 5 15 --out "$OUT/$name.json" | tee "$OUT/$name.txt"
    # what the network changes in a clean image, in brightness (Y) and in colour (Cb, Cr)
    [[ -f "$OUT/colour-changes-cbsd432-held-out.json" ]] || $BIN/python scripts/colour_changes.py \
        "$OUT/blind_denoiser-60min" "$CLEAN" --validation_images_of "$OUT/blind_denoiser-60min" \
        --out "$OUT/colour-changes-cbsd432-held-out.json" | tee "$OUT/colour-changes-cbsd432-held-out.txt"
    # the blind noise estimator on the same held-out images (where it was chosen), σ 0-75, clipped 8-bit and not
    name="noise-estimates-cbsd432-held-out"
    [[ -f "$OUT/$name.json" ]] || $BIN/python scripts/noise_estimates.py "$CLEAN" \
        --validation_images_of "$OUT/blind_denoiser-60min" --sigmas 0 2 5 10 15 25 30 35 50 75 \
        --out "$OUT/$name.json" | tee "$OUT/$name.txt"
    # large images in tiles (toolkit denoise --tile_size): what each margin of context changes against one pass over
    # the whole image, on the same held-out images in small tiles (where the margin was chosen), and the memory and
    # time tiles of the default size take on synthetic photographs of 1 to 24 megapixels
    name="tile-seams-cbsd432-held-out"
    [[ -f "$OUT/$name.json" ]] || $BIN/python scripts/tile_seams.py "$OUT/blind_denoiser-60min" "$CLEAN" \
        --validation_images_of "$OUT/blind_denoiser-60min" --tile_size 128 --margins 0 16 32 64 \
        --out "$OUT/$name.json" | tee "$OUT/$name.txt"
    [[ -f "$OUT/denoise-memory.json" ]] || $BIN/python scripts/denoise_memory.py "$OUT/blind_denoiser-60min" \
        --megapixels 1 4 12 24 --out "$OUT/denoise-memory.json" | tee "$OUT/denoise-memory.txt"
    # served in 8-bit integers (toolkit export --int8, calibrated on CBSD432's training images): the hour three ways
    # (PyTorch, its fp32 graph, its int8 graph) on the held-out images at each level, with each one's speed
    for sigma in 15 25 50; do
        name="onnx-int8-cbsd432-held-out-$sigma"
        [[ -f "$OUT/$name.txt" ]] || $BIN/python scripts/onnx_check.py "$OUT/blind_denoiser-60min" "$CLEAN" --held_out \
            --int8 "$CLEAN" --sigma $sigma | tee "$OUT/$name.txt"
    done
fi

if wanted mcmaster; then
    step "McMaster: the published protocol, beside CBM3D and non-local means measured here"
    # each model told the noise level (the default's run also measures CBM3D and non-local means), blind, and x8
    for run in blind_denoiser blind_denoiser-60min; do
        for option in "" --blind --self_ensemble; do
            case $option in --blind) suffix=-blind ;; --self_ensemble) suffix=-x8 ;; *) suffix= ;; esac
            baselines=; if [[ $run == blind_denoiser && -z $option ]]; then baselines="--baselines bm3d nlm"; fi
            name="mcmaster${run#blind_denoiser}$suffix"
            [[ -f "$OUT/$name.json" ]] || $BIN/toolkit benchmark-denoiser "$OUT/$run" --clean "$BENCH" \
                --sigmas 15 25 50 $option $baselines --out "$OUT/$name.json" | tee "$OUT/$name.txt"
        done
    done
    # the hour against CBM3D image by image (CBM3D's rows are in the default's file; every file holds the same noisy
    # images): the mean difference per level with its 95% interval over the 18 images, and how many images gained
    name="mcmaster-60min-against-bm3d"
    [[ -f "$OUT/$name.json" ]] || $BIN/toolkit compare-benchmarks "$OUT/mcmaster.json" "$OUT/mcmaster-60min.json" \
        "$OUT/mcmaster-60min-blind.json" "$OUT/mcmaster-60min-x8.json" --base_method bm3d --out "$OUT/$name.json" \
        | tee "$OUT/$name.txt"
    # light noise and none (what the network does to McMaster's own images), told and blind: reported, not tuned on
    for option in "" --blind; do
        name="mcmaster-60min-low-sigma${option:+-blind}"
        [[ -f "$OUT/$name.json" ]] || $BIN/toolkit benchmark-denoiser "$OUT/blind_denoiser-60min" --clean "$BENCH" \
            --sigmas 0 1 2 5 $option --out "$OUT/$name.json" | tee "$OUT/$name.txt"
    done
    [[ -f "$OUT/colour-changes-mcmaster.json" ]] || $BIN/python scripts/colour_changes.py "$OUT/blind_denoiser-60min" \
        "$BENCH" --out "$OUT/colour-changes-mcmaster.json" | tee "$OUT/colour-changes-mcmaster.txt"
    # bf16 inference against the fp32 x8 row above, only where the CPU computes bf16 faster than fp32 (elsewhere it is
    # emulated, or native but slower: Intel without AMX)
    if $BIN/python -c "import sys; from toolkit.train.precision import cpu_bf16_is_faster; sys.exit(not cpu_bf16_is_faster())"; then
        [[ -f "$OUT/mcmaster-60min-x8-bf16.json" ]] || $BIN/toolkit benchmark-denoiser "$OUT/blind_denoiser-60min" \
            --clean "$BENCH" --sigmas 15 25 50 --self_ensemble --mixed_precision=bf16 \
            --out "$OUT/mcmaster-60min-x8-bf16.json" | tee "$OUT/mcmaster-60min-x8-bf16.txt"
    fi
    # served without PyTorch: the hour as an ONNX file, the same noisy McMaster images denoised both ways, and speed
    [[ -f "$OUT/blind_denoiser-60min.onnx" ]] || $BIN/toolkit export "$OUT/blind_denoiser-60min" \
        "$OUT/blind_denoiser-60min.onnx"
    [[ -f "$OUT/onnx-check-mcmaster.txt" ]] || $BIN/python scripts/onnx_check.py "$OUT/blind_denoiser-60min" "$BENCH" \
        --onnx "$OUT/blind_denoiser-60min.onnx" --sigma 25 | tee "$OUT/onnx-check-mcmaster.txt"
    # and in 8-bit integers, calibrated on CBSD432's training images: the file, then McMaster three ways (PyTorch, the
    # fp32 graph, the int8 graph) at each level, after the same check on CBSD432's held-out images (step denoiser)
    [[ -f "$OUT/blind_denoiser-60min-int8.onnx" ]] || $BIN/toolkit export "$OUT/blind_denoiser-60min" \
        "$OUT/blind_denoiser-60min-int8.onnx" --int8 "$CLEAN"
    # the int8 file scored as its run is (PSNR and SSIM on the same noisy images), then against the fp32 hour image by
    # image and against CBM3D's rows of the default's file
    [[ -f "$OUT/mcmaster-60min-int8.json" ]] || $BIN/toolkit benchmark-denoiser "$OUT/blind_denoiser-60min-int8.onnx" \
        --clean "$BENCH" --sigmas 15 25 50 --out "$OUT/mcmaster-60min-int8.json" | tee "$OUT/mcmaster-60min-int8.txt"
    [[ -f "$OUT/mcmaster-60min-int8-against-fp32.json" ]] || $BIN/toolkit compare-benchmarks \
        "$OUT/mcmaster-60min.json" "$OUT/mcmaster-60min-int8.json" --out "$OUT/mcmaster-60min-int8-against-fp32.json" \
        | tee "$OUT/mcmaster-60min-int8-against-fp32.txt"
    [[ -f "$OUT/mcmaster-60min-int8-against-bm3d.json" ]] || $BIN/toolkit compare-benchmarks "$OUT/mcmaster.json" \
        "$OUT/mcmaster-60min-int8.json" --base_method bm3d --out "$OUT/mcmaster-60min-int8-against-bm3d.json" \
        | tee "$OUT/mcmaster-60min-int8-against-bm3d.txt"
    for sigma in 15 25 50; do
        [[ -f "$OUT/onnx-int8-mcmaster-$sigma.txt" ]] || $BIN/python scripts/onnx_check.py "$OUT/blind_denoiser-60min" \
            "$BENCH" --onnx "$OUT/blind_denoiser-60min.onnx" --int8 "$CLEAN" --sigma $sigma \
            | tee "$OUT/onnx-int8-mcmaster-$sigma.txt"
    done
    [[ -f "$OUT/noise-estimates.json" ]] || $BIN/python scripts/noise_estimates.py "$BENCH" \
        --out "$OUT/noise-estimates.json" | tee "$OUT/noise-estimates.txt"
fi

# On a CUDA GPU only (skipped elsewhere): the blind denoiser at a GPU's budget, against FFDNet's published McMaster
# figures. The CPU's network with every width times 8/3 (64-512 channels, DRUNet's widths; 17.0 M parameters),
# patches of 128 in batches of 32 (bf16 under auto: 1,138 GFLOP of forward work per step), half the CPU default's
# peak for the 7x larger network, 6.5 training minutes (the epochs set from the measured step time; the target
# allows 10), checkpoints only at the validation passes. Then McMaster on the GPU in exact fp32 (no TF32): told the
# noise level, x8, and blind.
# GPU_REDUCTIONS=1,2 trains on CBSD432's tiles and their halves, as the CPU hour does (a run and files of their own,
# "-reductions12"; the README's GPU rows are of the default, the images as they are). Each run's held-out CBSD432
# images are scored whole and halved (to choose on) before McMaster.
GPU_REDUCTIONS=${GPU_REDUCTIONS:-1}
if wanted gpu_denoiser; then
    if $BIN/python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
        step "the blind denoiser on a CUDA GPU: 6.5 training minutes (--reductions=$GPU_REDUCTIONS), then McMaster"
        gpu=gpu; [[ $GPU_REDUCTIONS == 1 ]] || gpu=gpu-reductions${GPU_REDUCTIONS//,/}
        finished blind_denoiser-$gpu || $LAUNCH $BLIND --resume --run_dir="$OUT/blind_denoiser-$gpu" \
            --model_kwargs="widths=(64,128,256,512),blocks=2" --patch_size=128 --batch_size=32 --lr=5e-4 \
            --train_minutes=6.5 --eval_every=2000 --checkpoint_every=2000 --reductions="$GPU_REDUCTIONS" 2>&1 \
            | tee -a "$OUT/blind_denoiser-$gpu.log"
        for reduction in 1 2; do
            name="cbsd432-held-out-$gpu-reduce$reduction"
            [[ -f "$OUT/$name.json" ]] || $BIN/toolkit benchmark-denoiser "$OUT/blind_denoiser-$gpu" --clean "$CLEAN" \
                --validation_images --reduce $reduction --sigmas 15 25 50 --device cuda --out "$OUT/$name.json" \
                | tee "$OUT/$name.txt"
        done
        for option in "" --self_ensemble --blind; do
            case $option in --blind) suffix=-blind ;; --self_ensemble) suffix=-x8 ;; *) suffix= ;; esac
            [[ -f "$OUT/mcmaster-$gpu$suffix.json" ]] || $BIN/toolkit benchmark-denoiser "$OUT/blind_denoiser-$gpu" \
                --clean "$BENCH" --sigmas 15 25 50 $option --device cuda --out "$OUT/mcmaster-$gpu$suffix.json" \
                | tee "$OUT/mcmaster-$gpu$suffix.txt"
        done
    else
        echo "[reproduce] gpu_denoiser: torch sees no CUDA GPU here, skipped"
    fi
fi

if wanted compare; then
    step "the classifier comparison: fast_cnn and EfficientNet-Lite0, three seeds each (COMPARE_SEEDS)"
    seeds_done compare/comparison.json "${COMPARE_SEEDS:-0,1,2}" || $LAUNCH recipes/compare_classifiers.py --resume \
        --data="$DATA" --run_dir="$OUT/compare" --models=fast_cnn,efficientnet_lite0 --seeds="${COMPARE_SEEDS:-0,1,2}" \
        2>&1 | tee -a "$OUT/compare.log"
fi

# The latent-size study at a 2-core CPU's budget: the autoencoder family at 2 epochs (the study trained 8), the
# U-Net and the blind denoiser fine-tuned on this noise at 1 epoch of 64 px crops; the blind denoiser also as is;
# BM3D and non-local means on 300 held-out images spread over the set (every row rescored on them). LATENT_SEEDS=0
# runs one seed; 0,1 (the default, what docs/results.md shows) reuses seed 0's runs and trains seed 1.
if wanted latent; then
    step "the latent-size study: the autoencoder family, a U-Net, the blind denoiser, BM3D"
    seeds_done latent_study/latent_study.json "${LATENT_SEEDS:-0,1}" || $LAUNCH recipes/latent_study.py --resume \
        --data="$DATA" --run_dir="$OUT/latent_study" --seeds="${LATENT_SEEDS:-0,1}" \
        --models=AE5,AE10,AE19,AE38,AE75,AE71,AE146,unet,resunet --ae_args="--epochs=2" \
        --other_args="--crop=64 --epochs=1" --bm3d --baseline_images=300 --pretrained="$OUT/blind_denoiser" \
        --model_args="resunet: --init_from=$OUT/blind_denoiser --conditioned --model_kwargs=widths=(24,48,96,192),blocks=2 --lr=2e-4" \
        2>&1 | tee "$OUT/latent_study.log"
fi

if wanted use; then  # needs the compare step's runs only, so it comes before the long cnn_gap step
    step "using the models: evaluate the held-out images, predict a folder, export to ONNX, reports"
    FAST="$OUT/compare/fast_cnn/seed-0"
    # runs trained before calibration hold temperature 1; for a newer run this refits the same temperature
    $BIN/toolkit calibrate "$FAST" "$DATA"
    $BIN/toolkit evaluate "$FAST" "$DATA" --held_out --out "$OUT/evaluate_fast_cnn"
    $BIN/toolkit predict "$FAST" "$DATA/seg_train/glacier" --top_k 2 --out "$OUT/predictions.csv"
    # EfficientNet-Lite0's seeds together (the mean of their probabilities) on the held-out images they share
    EFFICIENTNET="$OUT/compare/efficientnet_lite0"
    mapfile -t OTHER_SEEDS < <(find "$EFFICIENTNET" -mindepth 1 -maxdepth 1 -name 'seed-*' ! -name seed-0 | sort)
    EVALUATIONS=("$OUT/evaluate_fast_cnn")
    if [[ ${#OTHER_SEEDS[@]} -gt 0 ]]; then
        $BIN/toolkit evaluate "$EFFICIENTNET/seed-0" "$DATA" --held_out --out "$OUT/evaluate_efficientnet_seeds" \
            --ensemble "${OTHER_SEEDS[@]}"
        EVALUATIONS+=("$OUT/evaluate_efficientnet_seeds")
    fi
    # served without PyTorch: seed 0 as an ONNX file, and all seeds as one (the mean of their probabilities); their
    # predictions and speed against PyTorch's on 400 images
    $BIN/toolkit export "$EFFICIENTNET/seed-0" "$OUT/efficientnet_lite0.onnx"
    $BIN/python scripts/onnx_check.py "$EFFICIENTNET/seed-0" "$DATA/seg_train" --onnx "$OUT/efficientnet_lite0.onnx"
    # the same in 8-bit integers (calibrated on training images, the held-out ones skipped), scored on the held-out
    # images beside PyTorch and the fp32 graph: accuracy and speed
    $BIN/toolkit export "$EFFICIENTNET/seed-0" "$OUT/efficientnet_lite0_int8.onnx" --int8 "$DATA/seg_train"
    $BIN/python scripts/onnx_check.py "$EFFICIENTNET/seed-0" "$DATA" --held_out --images 2000 \
        --onnx "$OUT/efficientnet_lite0.onnx" --int8 "$DATA/seg_train"
    # and the int8 file itself by evaluate's report on the held-out images (per class, calibration, mistakes)
    $BIN/toolkit evaluate "$OUT/efficientnet_lite0_int8.onnx" "$DATA" --held_out --out "$OUT/evaluate_efficientnet_int8"
    EVALUATIONS+=("$OUT/evaluate_efficientnet_int8")
    if [[ ${#OTHER_SEEDS[@]} -gt 0 ]]; then
        $BIN/toolkit export "$EFFICIENTNET/seed-0" "$OUT/efficientnet_lite0_seeds.onnx" --ensemble "${OTHER_SEEDS[@]}"
        $BIN/python scripts/onnx_check.py "$EFFICIENTNET/seed-0" "$DATA/seg_train" \
            --onnx "$OUT/efficientnet_lite0_seeds.onnx" --ensemble "${OTHER_SEEDS[@]}"
    fi
    $BIN/toolkit report "$OUT/compare" "${EVALUATIONS[@]}" --out "$OUT/report_classifiers" \
        --title "Intel scenes: classifiers" --wandb_mode=disabled
    $BIN/toolkit report "$OUT/latent_study" "$OUT/blind_denoiser" --out "$OUT/report_denoising" \
        --title "Intel scenes: denoising" --wandb_mode=disabled
    $BIN/toolkit wandb-report "$OUT/compare" --out "$OUT/wandb_report_compare"
    $BIN/toolkit wandb-report "$OUT/latent_study" --out "$OUT/wandb_report_latent"
fi

# About 55 minutes per run on 2 AVX2 cores (10 epochs at 80 px in fp32): the study CNN at this toolkit's training
# share (90%; seeds CNN_GAP_SEEDS, default 0,1) and at the study's (99%; CNN_GAP_STUDY_SHARE_SEEDS, default 0).
# More seeds later reuse the finished runs.
if wanted cnn_gap; then
    step "the study CNN's gap to the study: repeats at this toolkit's training share and at the study's"
    for share_seeds in "90:${CNN_GAP_SEEDS:-0,1}" "99:${CNN_GAP_STUDY_SHARE_SEEDS:-0}"; do
        share=${share_seeds%%:*} seeds=${share_seeds#*:}
        seeds_done "cnn_gap/share-$share/comparison.json" "$seeds" || $LAUNCH \
            recipes/compare_classifiers.py --resume --data="$DATA" --models=cnn --seeds="$seeds" \
            --val_fraction="$([[ $share == 99 ]] && echo 0.01 || echo 0.1)" --run_dir="$OUT/cnn_gap/share-$share" \
            2>&1 | tee -a "$OUT/cnn_gap-share-$share.log"
    done
    # bf16 rounding alone: the fp32 seed-0 model scored under bf16 autocast (emulated on AVX2 CPUs: ~4 minutes)
    [[ -f "$OUT/cnn_gap/evaluate-seed-0-bf16/metrics.json" ]] || $BIN/toolkit evaluate "$OUT/cnn_gap/share-90/cnn/seed-0" \
        "$DATA" --held_out --mixed_precision=bf16 --no-calibrated --out "$OUT/cnn_gap/evaluate-seed-0-bf16"
fi

step "done"
