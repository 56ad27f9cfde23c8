"""What keeping freed memory in the process (toolkit.memory.keep_freed_memory) and the batch size do to a
classifier's scoring on this CPU: a trained run's model scores random images (each with its mirror, as predict and
evaluate do) in batches of 4 to 64, in a fresh process as glibc leaves it and in one that keeps freed memory.
Prints milliseconds per image (wall, user, system) and each as a ratio to the old default, batches of 64 as glibc
leaves it.

    python scripts/inference_memory.py RUN [--batches 4 8 16 32 64] [--images 256]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def measure(run: str, keep: bool, batches: list[int], images: int) -> dict:
    """In this process: {batch: (wall, user, system) ms per image}."""
    import torch

    from toolkit.inference import load_trained_model
    from toolkit.memory import keep_freed_memory
    from toolkit.train.evaluate import classifier_outputs

    if keep and not keep_freed_memory():
        raise SystemExit("no glibc here: nothing to compare")
    model, state = load_trained_model(run, "cpu")
    model.eval()
    pre, size, found = state.preprocessing, state.image_size, {}
    for batch in batches:
        inputs = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8).permute(0, 3, 1, 2)  # as predicted
        repeats = max(2, images // batch)
        with torch.no_grad():
            classifier_outputs(model, inputs, pre["mean"], pre["std"], True)  # untimed: the first batch's set-up
            before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            for _ in range(repeats):
                classifier_outputs(model, inputs, pre["mean"], pre["std"], True)
        after, scored = resource.getrusage(resource.RUSAGE_SELF), repeats * batch / 1000
        found[batch] = ((time.perf_counter() - started) / scored, (after.ru_utime - before.ru_utime) / scored,
                        (after.ru_stime - before.ru_stime) / scored)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a classifier's run directory or checkpoint")
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    parser.add_argument("--images", type=int, default=256, help="images scored per batch size")
    parser.add_argument("--inside", choices=["plain", "keep"], help=argparse.SUPPRESS)  # the measuring process
    args = parser.parse_args()
    if args.inside:
        print(json.dumps(measure(args.run, args.inside == "keep", args.batches, args.images)))
        return
    results = {}
    for mode in ("plain", "keep"):  # each in a fresh process: glibc's settings hold for a whole process
        command = [sys.executable, __file__, args.run, "--inside", mode, "--images", str(args.images),
                   "--batches", *map(str, args.batches)]
        results[mode] = {int(k): v for k, v in json.loads(subprocess.run(command, check=True, capture_output=True,
                                                                        text=True).stdout.splitlines()[-1]).items()}
    baseline = results["plain"].get(64) or results["plain"][max(args.batches)]
    print(f"{'memory':14} {'batch':>5}  {'ms/image':>8}  {'user':>6}  {'system':>6}  {'speed vs plain, batch 64':>25}")
    for mode, label in (("plain", "as glibc does"), ("keep", "kept freed")):
        for batch, (wall, user, system) in results[mode].items():
            print(f"{label:14} {batch:5d}  {wall:8.2f}  {user:6.2f}  {system:6.2f}  {baseline[0] / wall:24.2f}x")


if __name__ == "__main__":
    main()
