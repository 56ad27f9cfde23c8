"""What every recipe does around its loop: settings shared by recipes, starting a run, error exits.

A recipe's Config inherits the shared keys and adds its own hyper-parameters:

    @dataclass
    class Config(ClassificationDataSettings, RunSettings):
        lr: float = 9e-4  # Adam learning rate

    if __name__ == "__main__":
        run_recipe(main, Config)
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from toolkit.config import (
    check_fraction,
    check_non_negative,
    check_positive,
    config_to_dict,
    format_config,
    parse_config,
)
from toolkit.data.classification import DEFAULT_DATA
from toolkit.errors import ConfigError, UserError
from toolkit.train.checkpoint import latest_checkpoint
from toolkit.train.precision import choose_mixed_precision, training_device_type
from toolkit.train.tracking import RunLogger, choose_wandb_mode


@dataclass
class ClassificationDataSettings:
    data: str = DEFAULT_DATA  # a folder with seg_train[/seg_test] or <class>/<image>; 'synthetic' = built-in set
    train_split: str = "seg_train"  # training folder below --data
    test_split: str = "seg_test"  # test folder below --data, scored once at the end if present
    holdout_fraction: float = 0.1  # without a test folder: share of training held out as the test set
    val_fraction: float = 0.1  # share of the remaining training images used for validation
    max_train_images: int = 0  # >0: a stratified subset of this many training images (0 = all)
    resolution: int = 80  # images are squashed to resolution x resolution pixels
    storage: Literal["raw", "jpg"] = "raw"  # .beton storage: raw pixels at store size, or JPEG
    store_size: int = 0  # side length stored in the .beton; 0 = --resolution
    drop_conflicting_duplicates: bool = False  # leave out identical images that carry different labels


@dataclass
class DenoisingDataSettings:
    data: str = DEFAULT_DATA  # a folder of images; 'synthetic' = built-in set
    pool_split: str = "seg_pred"  # images below --data to denoise (labels ignored); falls back to seg_train
    image_size: int = 150  # images are squashed to image_size x image_size pixels
    holdout_fraction: float = 0.1  # share of the pool held out as the test set (fixed seed)
    val_fraction: float = 0.1  # share of the remaining images used for validation
    max_train_images: int = 0  # >0: a random subset of this many training images (0 = all)
    storage: Literal["raw", "jpg"] = "raw"  # .beton storage: raw pixels or JPEG


@dataclass
class RunSettings:
    seed: int = 0  # seeds model init, validation split, data order and augmentation
    run_dir: str = ""  # where the run writes; default runs/<recipe>-<date>-<time>
    resume: bool = False  # continue from the newest checkpoint in --run_dir (default: this recipe's newest run)
    # auto: the launcher's choice, else bf16 on GPUs and on CPUs with native bf16 (AMX), else fp32
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"  # auto, no, fp16 or bf16 (see above)
    force_precision: bool = False  # use bf16 even on a CPU that only emulates it (about 10x slower)
    eval_every: int = 25  # iterations between validation passes (0 = only at the end)
    log_every: int = 1  # iterations between training-loss log lines
    checkpoint_every: int = 25  # iterations between checkpoints (0 = only at the end)
    keep_checkpoints: int = 2  # newest checkpoints kept on disk
    grad_accumulation: int = 1  # batches whose gradients are summed before each optimizer step
    max_steps: int = 0  # >0: stop after this many iterations (smoke tests, benchmarks)
    num_workers: int = 0  # FFCV decoding threads per process (0 = this machine's cores, shared by its processes)
    cache_dir: str = ""  # where .beton files are cached; default $SCENE_TOOLKIT_CACHE or ~/.cache/scene-toolkit
    wandb_project: str = "scene-toolkit"  # W&B project name
    wandb_mode: Literal["auto", "online", "offline", "disabled"] = "auto"  # auto: online given a key and network


def default_num_workers() -> int:
    """FFCV threads per process: the cores this process may use, shared by the processes on this machine
    (2 on a 2-core laptop; 16 for one process on a 16-core GPU machine, 2 each for 8 processes there)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def check_run_settings(cfg) -> None:
    """Range checks for the shared keys (types are checked by the parser)."""
    check_non_negative(cfg, "eval_every", "checkpoint_every", "max_steps", "keep_checkpoints", "num_workers")
    check_positive(cfg, "log_every", "grad_accumulation")
    if hasattr(cfg, "val_fraction"):
        check_fraction(cfg, "val_fraction", "holdout_fraction")
        check_non_negative(cfg, "max_train_images")
        if cfg.val_fraction == 0:
            raise ConfigError("--val_fraction must be above 0: validation drives the learning curves")
    for name in ("resolution", "image_size"):
        if hasattr(cfg, name):
            check_positive(cfg, name)
    if hasattr(cfg, "store_size"):
        check_non_negative(cfg, "store_size")


@dataclass
class Run:
    accelerator: object
    run_dir: Path
    logger: RunLogger
    resume_from: Path | None  # the checkpoint to restore, if resuming
    say: object  # print on the main process only


def _newest_run(recipe: str) -> Path | None:
    runs = sorted(Path("runs").glob(f"{recipe}-*"), key=lambda path: path.stat().st_mtime)
    return runs[-1] if runs else None


def start_run(cfg, recipe: str) -> Run:
    """Create the Accelerator (precision, trackers), seed everything, pick the run directory."""
    from accelerate import Accelerator
    from accelerate.utils import broadcast_object_list, set_seed

    check_run_settings(cfg)
    if cfg.num_workers == 0:  # recorded in the config as the number used
        cfg.num_workers = default_num_workers()
    device_type = training_device_type()
    precision = choose_mixed_precision(cfg.mixed_precision, device_type, cfg.force_precision,
                                       log=lambda message: _print_once(message),
                                       cpu_bf16_pays=getattr(cfg, "cpu_bf16_pays", True))
    wandb_mode, wandb_reason = choose_wandb_mode(cfg.wandb_mode)
    accelerator = Accelerator(mixed_precision=precision, log_with="wandb" if wandb_mode != "disabled" else None,
                              gradient_accumulation_steps=cfg.grad_accumulation)
    say = accelerator.print
    set_seed(cfg.seed)

    run_dir = Path(cfg.run_dir) if cfg.run_dir else None
    if cfg.resume and run_dir is None:
        run_dir = _newest_run(recipe)
    if run_dir is None:
        run_dir = Path("runs") / f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(broadcast_object_list([str(run_dir)])[0])  # every process agrees on the folder
    if not cfg.resume and latest_checkpoint(run_dir) is not None:
        raise UserError(f"{run_dir} already holds a run with checkpoints: pass --resume to continue it, "
                        "or choose another --run_dir (nothing was changed)")
    resume_from = latest_checkpoint(run_dir) if cfg.resume else None
    if cfg.resume and resume_from is None:
        say(f"[run] --resume: no checkpoint in {run_dir} yet; starting from the beginning")
    resume_step = None
    if resume_from is not None:
        resume_step = int(resume_from.name.split("-")[1])

    say(f"[run] {recipe}: run directory {run_dir}")
    say(f"[run] device {accelerator.device} x {accelerator.num_processes} process(es), "
        f"mixed precision {precision}, {os.cpu_count()} CPU cores")
    say(f"[run] config:\n{format_config(cfg)}")
    config = {**config_to_dict(cfg), "recipe": recipe, "mixed_precision_used": precision,
              "num_processes": accelerator.num_processes, "device": str(accelerator.device)}
    logger = RunLogger(accelerator, run_dir, cfg.wandb_project, run_dir.name, config, wandb_mode, wandb_reason,
                       resume_step=resume_step, log=say)
    return Run(accelerator=accelerator, run_dir=run_dir, logger=logger, resume_from=resume_from, say=say)


def _print_once(message: str) -> None:
    if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0:
        print(message, flush=True)


def run_recipe(main, config_class, argv: list[str] | None = None) -> None:
    """Parse the command line into `config_class`, call main(cfg), turn user errors into one line."""
    argv = sys.argv[1:] if argv is None else argv
    program = Path(sys.argv[0]).name
    try:
        cfg = parse_config(config_class, argv, program)
        main(cfg)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("\ninterrupted: rerun with --resume (and the same --run_dir) to continue from the last checkpoint",
              file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    except Exception:
        traceback.print_exc()
        raise SystemExit(1) from None
