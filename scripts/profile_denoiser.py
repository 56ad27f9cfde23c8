"""Where a ResUNet's training step spends its time on this machine: torch.profiler over a few of the steps
`toolkit benchmark` times (forward, backward, Adam; channels-last, random inputs), the 3x3 convolutions
grouped by the resolution and width they run at, with the arithmetic rate each reaches. The per-level figures
in docs/results.md come from

    python scripts/profile_denoiser.py                                          # the default ResUNet
    python scripts/profile_denoiser.py --model_kwargs="widths=(48,96,192),blocks=2,pixel_unshuffle=True"
    python scripts/profile_denoiser.py --model_kwargs="widths=(24,48,96,192),blocks=(1,2,2,2)" --batch_size 4
    python scripts/profile_denoiser.py --precision bf16 --batch_size 4          # bf16, where the CPU has it

Run it alone on the cores: it times, it does not count.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from toolkit.benchmark import random_input_train_step
from toolkit.config import parse_kwargs
from toolkit.models.denoisers import ResUNet
from toolkit.train.precision import cpu_has_native_bf16, describe_cpu


def profile_step(model_kwargs: dict, batch: int, patch: int, steps: int,
                 precision: str = "fp32") -> tuple[float, list[tuple]]:
    """(median seconds per step, [(channels, height, width, calls, milliseconds, GFLOP/s)] per step of the 3x3
    convolutions whose input and output widths are equal, forward and backward together). The step is the one
    `toolkit benchmark` times for the denoiser (channels-last, random inputs) in `precision` (fp32 or bf16)."""
    step, _ = random_input_train_step(lambda: ResUNet(**model_kwargs), batch, patch, precision, channels_last=True,
                                      kind="denoiser")
    for _ in range(3):  # untimed: allocation and oneDNN's kernel choice
        step()
    seconds = []
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiler:
        for _ in range(steps):
            started = time.perf_counter()
            step()
            seconds.append(time.perf_counter() - started)
    spent = defaultdict(lambda: [0, 0, 0.0])  # (channels, height, width) -> [forwards, backwards, microseconds]
    for event in profiler.key_averages(group_by_input_shape=True):
        backward = event.key == "aten::convolution_backward"
        if not backward and event.key != "aten::mkldnn_convolution":
            continue
        shapes = event.input_shapes
        weight = shapes[2] if backward else shapes[1]
        if len(weight) != 4 or weight[2:] != [3, 3] or weight[0] != weight[1]:
            continue  # only the blocks' 3x3 convolutions of equal widths
        _, channels, height, width = shapes[0]
        spent[(channels, height, width)][backward] += event.count
        spent[(channels, height, width)][2] += event.self_cpu_time_total
    rows = []
    for (channels, height, width), (forwards, backwards, microseconds) in sorted(spent.items(),
                                                                                key=lambda item: -item[0][2]):
        one_forward = 2 * batch * height * width * channels * channels * 9  # multiply-adds x 2
        flops = one_forward * (forwards + 2 * backwards)  # a backward computes the input's and the weight's gradients
        rows.append((channels, height, width, (forwards + backwards) // steps, microseconds / 1e3 / steps,
                     flops / microseconds / 1e3))
    return statistics.median(seconds), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_kwargs", default="widths=(24,48,96,192),blocks=2")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--patch_size", type=int, default=96)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16: autocast, refused where the CPU would only emulate it")
    args = parser.parse_args()
    if args.precision == "bf16" and not cpu_has_native_bf16():
        sys.exit(f"[profile] this CPU has no native bf16 ({describe_cpu()}): its bf16 is emulated and times "
                 "nothing a training run would use; profile with --precision fp32")
    seconds, rows = profile_step(parse_kwargs("model_kwargs", args.model_kwargs), args.batch_size,
                                 args.patch_size, args.steps, args.precision)
    print(f"[profile] {describe_cpu()}, {torch.get_num_threads()} threads")
    print(f"[profile] ResUNet({args.model_kwargs}), {args.precision}, {args.batch_size} x {args.patch_size}px: "
          f"{seconds:.3f} s per training step (median of {args.steps}, under the profiler)")
    total = sum(row[4] for row in rows)
    print(f"{'3x3 convs at':>16}  {'per step':>8}  {'ms/step':>8}  {'share':>6}  {'GFLOP/s':>8}")
    for channels, height, width, calls, milliseconds, rate in rows:
        print(f"{f'{channels} ch {height}x{width}':>16}  {calls:>8}  {milliseconds:>8.1f}  "
              f"{milliseconds / (seconds * 1e3):>6.0%}  {rate:>8.0f}")
    print(f"{'all of them':>16}  {'':>8}  {total:>8.1f}  {total / (seconds * 1e3):>6.0%}")


if __name__ == "__main__":
    main()
