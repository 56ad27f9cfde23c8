"""What a classifier run's end-of-run figures cost: a tiny CNN run on synthetic scenes, in this process, with
--figures=true and --figures=false in alternating pairs (the first pair untimed: it pays the imports and the
compiling). Prints the seconds of each and the medians.

    python scripts/figures_cost.py [--pairs 3] [--untimed 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from toolkit.config import parse_config
from toolkit.data.synthetic import write_synthetic_scenes
from toolkit.recipes import recipe_module

TINY_RUN = ["--width=4", "--epochs=2", "--image_size=32", "--batch_size=16", "--eval_batch_size=32", "--eval_every=4",
            "--checkpoint_every=3", "--num_workers=1", "--wandb_mode=disabled"]


def timed_run(data: Path, run_dir: Path, figures: str) -> float:
    """One run in this process (each run's Accelerator starts afresh, as a study's runs do)."""
    recipe = recipe_module("cnn")
    start = time.perf_counter()
    recipe.main(parse_config(recipe.Config, [f"--data={data}", f"--run_dir={run_dir}", *TINY_RUN,
                                             f"--figures={figures}"]))
    return time.perf_counter() - start


def figure_seconds(folder: Path, pairs: int, untimed: int) -> dict[str, list[float]]:
    """Seconds of each timed run, by --figures value; the runs' folders are left in `folder`."""
    data = write_synthetic_scenes(folder / "scenes", train_per_class=16, test_per_class=6, pred_images=12, size=64)
    seconds = {"true": [], "false": []}
    for pair in range(untimed + pairs):
        for figures in seconds:
            took = timed_run(data, folder / f"run-{pair}-{figures}", figures)
            if pair >= untimed:
                seconds[figures].append(took)
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3, help="timed pairs")
    parser.add_argument("--untimed", type=int, default=1, help="pairs run first and not timed")
    args = parser.parse_args(argv)
    if args.pairs < 1 or args.untimed < 0:
        parser.error("--pairs must be at least 1 and --untimed at least 0")
    os.environ.setdefault("WANDB_SILENT", "true")
    with tempfile.TemporaryDirectory() as folder:
        seconds = figure_seconds(Path(folder), args.pairs, args.untimed)
    for figures, times in seconds.items():
        print(f"--figures={figures}: {' '.join(f'{t:.2f}' for t in times)} s; median {statistics.median(times):.2f} s")
    saved = statistics.median(seconds["true"]) - statistics.median(seconds["false"])
    print(f"the figures: {saved:.2f} s of a {statistics.median(seconds['true']):.2f} s run")


if __name__ == "__main__":
    main()
