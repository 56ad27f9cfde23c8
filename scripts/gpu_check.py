"""Throughput of every recipe on this machine's accelerator, in a few minutes (the GPU check).

    python scripts/gpu_check.py --steps=40 --out=gpu-check.json

Each recipe trains for --steps iterations on a generated synthetic scene set (no dataset needed)
with evaluation and checkpoints switched off; the table reports the training images/s that the
recipe itself measured (data loading included), the device and the mixed precision it chose.
Runs on a CPU too (slowly): that is how it is tested.
"""

from __future__ import annotations

import argparse
import json
import os
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
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="training iterations per recipe")
    parser.add_argument("--images_per_class", type=int, default=400, help="synthetic training images per class")
    parser.add_argument("--only", nargs="*", default=[], help=f"recipes to check: {', '.join(CHECKS)}")
    parser.add_argument("--out", default="gpu-check.json")
    args = parser.parse_args()

    from toolkit.data.synthetic import write_synthetic_scenes

    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    data = write_synthetic_scenes(work / "data", train_per_class=args.images_per_class, test_per_class=20,
                                  pred_images=args.images_per_class * 6)
    env = {**os.environ, "WANDB_MODE": "disabled", "SCENE_TOOLKIT_CACHE": str(work / "cache")}
    results = {}
    for name in args.only or CHECKS:
        recipe = name.split("-")[0]
        run_dir = work / "runs" / name
        command = [sys.executable, str(RECIPES / f"{recipe}.py"), f"--data={data}", f"--run_dir={run_dir}",
                   f"--max_steps={args.steps}", "--eval_every=0", "--checkpoint_every=0", "--log_every=10",
                   *CHECKS[name]]
        started = time.perf_counter()
        finished = subprocess.run(command, capture_output=True, text=True, env=env)
        if finished.returncode != 0:
            results[name] = {"error": finished.stderr.strip().splitlines()[-1:] or ["failed"]}
            print(f"{name}: FAILED: {results[name]['error'][0]}")
            continue
        summary = json.loads((run_dir / "summary.json").read_text())
        config = json.loads((run_dir / "config.json").read_text())
        results[name] = {"train_images_per_s": summary["train_images_per_s"], "steps": summary["steps"],
                         "device": config["device"], "mixed_precision": config["mixed_precision_used"],
                         "wall_seconds": round(time.perf_counter() - started, 1)}
        print(f"{name:20s} {summary['train_images_per_s']:9.1f} img/s  on {config['device']} "
              f"({config['mixed_precision_used']}), {summary['steps']} steps, "
              f"{results[name]['wall_seconds']:.0f}s with start-up", flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"written to {args.out}")
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
