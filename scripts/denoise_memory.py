"""Peak memory and time of `toolkit denoise` on large images, whole against in tiles (--tile_size): each command
runs in a fresh process on a synthetic noisy photograph of the given size, and its peak resident memory is read from
the operating system (wait4). The figures in docs/commands.md
(`toolkit denoise`, "Large images") come from

    python scripts/denoise_memory.py RUN --megapixels 1 4 12

A whole-image pass that would need more memory than this machine has free (about 0.7 GB per megapixel in fp32) is
left out and said, instead of being killed half-way.
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

import numpy as np
from PIL import Image

GB_PER_MEGAPIXEL_WHOLE = 0.7  # the blind denoiser, fp32: 8.2 GB at 12 MP, measured by this script (the guard's)


def synthetic_photograph(megapixels: float, path: Path, seed: int = 0) -> tuple[int, int]:
    """A 4:3 8-bit RGB image of about `megapixels`: smooth colour gradients and edges plus Gaussian noise (sigma 25)."""
    width = int(round((megapixels * 1e6 * 4 / 3) ** 0.5))
    height = int(round(width * 3 / 4))
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    edges = np.sign(np.sin((x + y) / 211))
    clean = np.stack([128 + 100 * np.sin(x / 97), 128 + 100 * np.cos(y / 61), 128 + 60 * edges], axis=2)
    noisy = clean + np.random.default_rng(seed).normal(0, 25, clean.shape).astype(np.float32)
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path)
    return width, height


def free_memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1e6
    except OSError:
        pass
    return None


def measure(checkpoint: str, image: Path, output: Path, tile_size: int, sigma: float) -> dict:
    """Peak resident memory (GB) and wall-clock seconds of one `toolkit denoise` in its own process."""
    command = [sys.executable, "-c", "import sys; from toolkit.cli import main; sys.exit(main())", "denoise",
               checkpoint, str(image), str(output), "--sigma", str(sigma), "--tile_size", str(tile_size),
               "--device", "cpu"]
    log = output.with_suffix(".log")
    with log.open("w") as said:  # a file, not a pipe: a pipe nobody reads until the end can fill and block
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=said, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"toolkit denoise failed ({os.waitstatus_to_exitcode(status)}):\n{log.read_text()[-2000:]}")
    return {"peak_gb": usage.ru_maxrss / 1e6, "seconds": seconds}  # ru_maxrss: kilobytes on Linux


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a blind denoiser's run directory or checkpoint")
    parser.add_argument("--megapixels", type=float, nargs="+", default=[1, 4, 12], help="image sizes")
    parser.add_argument("--tile_sizes", type=int, nargs="+", default=[0, 1024], help="0: the whole image at once")
    parser.add_argument("--sigma", type=float, default=25, help="the noise level the model is told (0-255)")
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    if not Path(args.checkpoint).exists():
        print(f"error: {args.checkpoint} does not exist: give a blind denoiser's run directory", file=sys.stderr)
        return 2
    if min(args.megapixels) <= 0 or min(args.tile_sizes) < 0:
        print("error: --megapixels must be positive and --tile_sizes at least 0", file=sys.stderr)
        return 2
    results = []
    print(f"toolkit denoise, fp32 on the CPU ({os.cpu_count()} cores seen), one process per command")
    print("| megapixels | image | --tile_size | peak memory GB | seconds | memory / whole | time / whole |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for megapixels in args.megapixels:
            image = Path(folder) / f"noisy-{megapixels:g}mp.png"
            width, height = synthetic_photograph(megapixels, image)
            whole = None
            for tile_size in args.tile_sizes:
                free = free_memory_gb()
                needed = GB_PER_MEGAPIXEL_WHOLE * width * height / 1e6
                if tile_size == 0 and free is not None and needed > 0.8 * free:
                    print(f"| {megapixels:g} | {width}x{height} | 0 | left out: would need about {needed:.0f} GB, "
                          f"{free:.0f} GB free | | | |")
                    continue
                try:
                    figures = measure(args.checkpoint, image, Path(folder) / "out.png", tile_size, args.sigma)
                except RuntimeError as error:
                    print(f"error: {error}", file=sys.stderr)
                    return 1
                whole = figures if tile_size == 0 else whole
                ratios = (f"{figures['peak_gb'] / whole['peak_gb']:.2f}x | {figures['seconds'] / whole['seconds']:.2f}x"
                          if whole else "| ")
                print(f"| {megapixels:g} | {width}x{height} | {tile_size} | {figures['peak_gb']:.2f} | "
                      f"{figures['seconds']:.1f} | {ratios} |", flush=True)
                results.append({"megapixels": megapixels, "width": width, "height": height, "tile_size": tile_size,
                                **figures})
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
