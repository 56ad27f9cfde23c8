"""Throughput of every recipe on this machine's accelerator, in a few minutes (the GPU check).

    python scripts/gpu_check.py --out=gpu-check.json

Three parts, each written to the JSON file as soon as it is measured (a timeout loses nothing):
  ceiling  the device's matmul rate (bf16 8192^3 on a GPU, fp32 1024^3 on a CPU)
  models   each recipe's model, training step alone (random inputs already on the device), per
           precision the device has in hardware, at the batch and size its recipe uses (read from the
           recipe's own Config): the model's own ceiling
  recipes  each recipe trained for --steps iterations on a generated synthetic scene set (FFCV
           loader, augmentation, optimiser; evaluation and checkpoints off), with the device and
           the precision it chose. Steady img/s leaves out the first logging window (the loader's
           numba compilation, cuDNN's autotuning), whose seconds are reported apart.
Runs on a CPU too (slowly, with --steps small): that is how it is tested.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPES = Path(__file__).resolve().parents[1] / "recipes"

CHECKS = {  # recipe: options beyond the defaults
    "cnn": [],
    "resnet18": ["--weights=none"],
    "fast_cnn": [],
    "efficientnet_lite0": [],
    "autoencoder": ["--model=AE38", "--grid_images=0"],
    "autoencoder-unet": ["--model=unet", "--crop=96", "--grid_images=0"],
    "blind_denoiser": ["--tile_size=128", "--grid_images=0"],  # the synthetic images are 150 px
}
DATA_FOLDER = {"blind_denoiser": "seg_pred"}  # a folder of clean images, not the Intel layout
WARMUP_STEPS = 10  # logged steps up to this one hold start-up costs, not steady state


def steady_throughput(metrics_path: Path, warmup_steps: int = WARMUP_STEPS) -> dict:
    """Images/s over the logged training windows after `warmup_steps`, and the seconds of those before."""
    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    windows = [r for r in records if "seconds" in r and "images" in r]
    steady = [r for r in windows if r["step"] > warmup_steps]
    seconds = sum(r["seconds"] for r in steady)
    return {"steady_images_per_s": sum(r["images"] for r in steady) / seconds if seconds else None,
            "warmup_steps": min(warmup_steps, max((r["step"] for r in windows), default=0)),
            "warmup_s": sum(r["seconds"] for r in windows if r["step"] <= warmup_steps)}


def check_models(device, steps: int, tiny: bool = False) -> dict:
    """Each recipe's model, training step alone, per precision the device runs in hardware."""
    from toolkit.benchmark import measure_train_step, recipe_models
    from toolkit.train.precision import cpu_has_native_bf16, cuda_bf16_in_hardware

    if device.type == "cuda":
        precisions = ["fp32", "bf16", "fp16"] if cuda_bf16_in_hardware() else ["fp32", "fp16"]
    else:
        precisions = ["fp32", "bf16"] if cpu_has_native_bf16() else ["fp32"]
    results = {}
    for name, entry in recipe_models(tiny).items():
        batch, size = entry["batch"], entry["image_size"]
        for precision in precisions:
            r = measure_train_step(entry["build"], batch, size, precision, channels_last=True, steps=steps,
                                   device=device, kind=entry["kind"], split=entry["split"])
            results[f"{name} | {precision}"] = {**r, "batch": batch, "image_size": size}
            print(f"  {name:40s} {precision}  {batch:4d} x {size}px  {r['images_per_s']:10.0f} img/s  "
                  f"{r['gflop_per_s'] / 1e3:7.2f} TFLOP/s", flush=True)
    return results


def check_recipe(name: str, data: Path, work: Path, steps: int, env: dict, extra: list[str]) -> dict:
    recipe = name.split("-")[0]
    run_dir = work / "runs" / name
    folder = data / DATA_FOLDER[recipe] if recipe in DATA_FOLDER else data
    command = [sys.executable, str(RECIPES / f"{recipe}.py"), f"--data={folder}", f"--run_dir={run_dir}",
               f"--max_steps={steps}", "--eval_every=0", "--checkpoint_every=0", "--log_every=10", *CHECKS[name],
               *extra]
    started = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True, env=env)
    if finished.returncode != 0:
        return {"error": (finished.stderr.strip().splitlines() or ["failed"])[-1]}
    summary = json.loads((run_dir / "summary.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    return {"train_images_per_s": summary["train_images_per_s"], **steady_throughput(run_dir / "metrics.jsonl"),
            "steps": summary["steps"], "batch_size": config.get("batch_size"), "num_workers": config.get("num_workers"),
            "device": config["device"], "mixed_precision": config["mixed_precision_used"],
            "wall_seconds": round(time.perf_counter() - started, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="training iterations per recipe")
    parser.add_argument("--model_steps", type=int, default=20, help="timed steps per model alone (0: skip)")
    parser.add_argument("--images_per_class", type=int, default=400, help="synthetic training images per class")
    parser.add_argument("--only", nargs="*", default=[], help=f"recipes to check: {', '.join(CHECKS)}")
    parser.add_argument("--recipe_args", default="", help="options for every recipe, e.g. '--batch_size=512'")
    parser.add_argument("--tiny", action="store_true", help="models alone at small widths, batch 4, 32 px: a check "
                        "of the script (seconds on any CPU), not a measurement")
    parser.add_argument("--out", default="gpu-check.json")
    args = parser.parse_args()
    unknown = set(args.only) - set(CHECKS)
    if unknown:
        parser.error(f"unknown recipes {sorted(unknown)}; choose from {', '.join(CHECKS)}")

    import torch

    from toolkit.benchmark import TINY_CEILING_TIMING, machine_description, measure_matmul
    from toolkit.data.synthetic import write_synthetic_scenes

    out = Path(args.out)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = {"machine": machine_description(), "command": " ".join(sys.argv), "models": {}, "recipes": {}}

    def save():
        out.write_text(json.dumps(results, indent=2))

    print(f"[gpu-check] {results['machine']}", flush=True)
    timing = TINY_CEILING_TIMING if args.tiny else {}
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        results["ceiling"] = {"bf16_matmul_tflop_per_s": measure_matmul(8192, torch.bfloat16, device, **timing) / 1e3}
    else:
        results["ceiling"] = {"fp32_matmul_tflop_per_s": measure_matmul(1024, torch.float32, device, **timing) / 1e3}
    print(f"[gpu-check] matmul ceiling: {results['ceiling']}", flush=True)
    save()
    if args.model_steps:
        print("[gpu-check] training steps alone (random inputs on the device, channels_last):", flush=True)
        results["models"] = check_models(device, args.model_steps, args.tiny)
        save()

    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    data = write_synthetic_scenes(work / "data", train_per_class=args.images_per_class, test_per_class=20,
                                  pred_images=args.images_per_class * 6)
    env = {**os.environ, "WANDB_MODE": "disabled", "SCENE_TOOLKIT_CACHE": str(work / "cache")}
    recipe_args = shlex.split(args.recipe_args)
    print(f"[gpu-check] recipes, {args.steps} steps each on {args.images_per_class * 6} synthetic images:", flush=True)
    for name in args.only or CHECKS:
        result = results["recipes"][name] = check_recipe(name, data, work, args.steps, env, recipe_args)
        save()
        if "error" in result:
            print(f"  {name:20s} FAILED: {result['error']}", flush=True)
            continue
        steady = result["steady_images_per_s"]
        print(f"  {name:20s} {result['train_images_per_s']:9.1f} img/s overall, "
              f"{steady if steady is None else round(steady, 1)} steady, first {result['warmup_steps']} steps "
              f"{result['warmup_s']:.1f}s, "
              f"on {result['device']} ({result['mixed_precision']}), batch {result['batch_size']}, "
              f"{result['steps']} steps, {result['wall_seconds']:.0f}s with start-up", flush=True)
    print(f"written to {out}")
    return 0 if all("error" not in r for r in results["recipes"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
