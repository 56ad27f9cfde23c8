"""The `toolkit` command: everything that is not a training recipe.

    toolkit data explore ROOT        images per class, examples, split balance (PNG + W&B)
    toolkit benchmark                loader and training-step throughput, printed and as JSON
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

from toolkit.errors import UserError


def _tool_logger(out_dir: Path, name: str, wandb_mode: str, config: dict):
    """A RunLogger for a command (no training): local files in out_dir, W&B offline/online as usual."""
    from accelerate import Accelerator

    from toolkit.train.tracking import RunLogger, choose_wandb_mode

    mode, reason = choose_wandb_mode(wandb_mode)
    accelerator = Accelerator(cpu=True, log_with="wandb" if mode != "disabled" else None)
    return RunLogger(accelerator, out_dir, "scene-toolkit", name, config, mode, reason)


def command_explore(args) -> None:
    from toolkit.data.classification import find_data_root
    from toolkit.data.explore import explore_dataset

    root, synthetic = find_data_root(args.root)
    out_dir = Path(args.out or f"runs/explore-{time.strftime('%Y%m%d-%H%M%S')}")
    logger = _tool_logger(out_dir, out_dir.name, args.wandb_mode, {"root": str(root), "command": "data explore"})
    report = explore_dataset(root, out_dir, args.val_fraction, args.holdout_fraction, args.seed)
    logger.log_images({f"data/{k}": Path(v) for k, v in report["figures"].items()}, step=0)
    for split, per_class in report["counts"].items():
        logger.log_table(f"data/counts_{split}", ["class", "images"], [[k, v] for k, v in per_class.items()], step=0)
    logger.finish()
    print(f"figures and exploration.json written to {out_dir}" + (" (SYNTHETIC data)" if synthetic else ""))


def command_benchmark(args) -> None:
    from toolkit.benchmark import run_benchmark

    run_benchmark(data=args.data, images=args.images, out=Path(args.out), sections=args.only,
                  steps=args.steps, num_workers=args.num_workers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toolkit", description="scene-toolkit commands (training lives in recipes/)")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="look at a dataset").add_subparsers(dest="data_command", required=True)
    explore = data.add_parser("explore", help="images per class per split, one example per class, split balance")
    explore.add_argument("root", nargs="?", default="data/intel", help="dataset root (default data/intel; "
                         "'synthetic' for the built-in set)")
    explore.add_argument("--out", default="", help="output folder (default runs/explore-<time>)")
    explore.add_argument("--val_fraction", type=float, default=0.1)
    explore.add_argument("--holdout_fraction", type=float, default=0.1)
    explore.add_argument("--seed", type=int, default=0)
    explore.add_argument("--wandb_mode", default="auto", choices=["auto", "online", "offline", "disabled"])
    explore.set_defaults(handler=command_explore)

    bench = commands.add_parser("benchmark", help="measure loaders and training steps on this machine")
    bench.add_argument("--data", default="data/intel", help="dataset root (default data/intel, else synthetic)")
    bench.add_argument("--images", type=int, default=2400, help="images used for the loader measurements")
    bench.add_argument("--steps", type=int, default=8, help="timed training steps per model and setting")
    bench.add_argument("--num_workers", type=int, default=2, help="loader workers / FFCV threads")
    bench.add_argument("--only", nargs="*", default=[], help="sections to run: loaders steps compile")
    bench.add_argument("--out", default="bench-results.json", help="where the JSON goes")
    bench.set_defaults(handler=command_benchmark)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
