"""What every recipe does around its loop: the shared run keys, starting a run, error exits.

A recipe's Config inherits the shared keys and adds its own hyper-parameters:

    @dataclass
    class Config(ClassificationDataSettings, RunSettings):
        lr: float = 9e-4  # Adam learning rate

    def main(cfg):
        run = start_run(cfg, "cnn")                       # run directory, logging, seeds, processes
        ...                                               # data, model, optimizer
        model, optimizer = run.prepare(model, optimizer, batch_size=..., image_size=...)   # precision, devices

    if __name__ == "__main__":
        run_recipe(main, Config)
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from toolkit.config import check_non_negative, check_positive, config_to_dict, format_config, parse_config
from toolkit.errors import CheckpointError, ConfigError, UserError, report_failure, say_once_per_machine
from toolkit.progress import say as print_line
from toolkit.runs import (
    CHANGEABLE_ON_RESUME,
    config_differences,
    describe_differences,
    file_in_the_way,
    newest_run,
    read_config,
)
from toolkit.train.checkpoint import agreed_latest_checkpoint
from toolkit.train.precision import choose_mixed_precision, describe_cpu, launcher_precision, training_device_type
from toolkit.train.tracking import RunLogger, choose_wandb_mode


class Preempted(Exception):
    """The run was asked to stop (SIGTERM, as spot and preemptible machines send) and saved a checkpoint."""


@dataclass
class RunSettings:
    seed: int = 0  # seeds model init, validation split, data order and augmentation
    run_dir: str = ""  # where the run writes; default runs/<recipe>-<date>-<time>
    resume: bool = False  # continue from the newest checkpoint in --run_dir (default: this recipe's newest run)
    # auto: the launcher's explicit choice, else bf16 on CPUs with native bf16 (AMX), fp32 with TF32 on GPUs for
    # small steps and bf16 (fp16 before Ampere) for large ones, fp32 elsewhere (toolkit/train/precision.py)
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"  # auto, no (fp32), fp16 or bf16 (see above)
    eval_every: int = 25  # iterations between validation passes (0 = only at the end)
    log_every: int = 1  # iterations between training-loss log lines
    checkpoint_every: int = 25  # iterations between checkpoints (0 = only at the end)
    keep_checkpoints: int = 2  # newest checkpoints kept on disk (0 = keep them all)
    grad_accumulation: int = 1  # batches whose gradients are summed before each optimizer step
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"  # scale --lr with the global batch's growth over one process
    max_steps: int = 0  # >0: stop after this many iterations (smoke tests, benchmarks); --resume continues
    num_workers: int = 0  # FFCV decoding threads per process, and PyTorch's (0 = the cores, shared by the processes)
    cache_dir: str = ""  # where .beton files are cached; default $SCENE_TOOLKIT_CACHE or ~/.cache/scene-toolkit
    wandb_project: str = "scene-toolkit"  # W&B project name
    wandb_mode: Literal["auto", "online", "offline", "disabled"] = "auto"  # auto: online given a key and network
    wandb_group: str = ""  # W&B group (studies group their runs; W&B then draws mean and spread)
    wandb_tags: str = ""  # comma-separated W&B tags
    # W&B groups a study's runs by recipe and variant, so two variants of one recipe are two groups
    variant: str = ""  # a study's name for this run where not its recipe's (compare_classifiers' --models=NAME=RECIPE)
    figures: bool = True  # the PNG figures a run draws at its end, also logged to W&B (false: scalars and tables only)

    def check_run_settings(self) -> None:
        check_non_negative(self, "seed", "eval_every", "checkpoint_every", "max_steps", "keep_checkpoints",
                           "num_workers")
        check_positive(self, "log_every", "grad_accumulation")
        most = int(os.environ.get("NUMBA_NUM_THREADS") or os.cpu_count() or 1)  # numba's threads, FFCV's limit
        if self.num_workers > most:
            raise ConfigError(f"--num_workers={self.num_workers}: FFCV decodes with at most {most} threads on this "
                              f"machine (its cores, or NUMBA_NUM_THREADS): give {most} or fewer, or 0 for the "
                              "cores shared by the processes")


def default_num_workers(local_processes: int | None = None) -> int:
    """FFCV threads per process: the cores this process may use, shared by the processes on this machine
    (2 on a 2-core laptop; 16 for one process on a 16-core GPU machine, 2 each for 8 processes there)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = local_processes or int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, cores // max(1, local))


class Run:
    """One training run: its processes, directory, logger and (after `prepare`) its Accelerator."""

    def __init__(self, cfg: RunSettings, recipe: str, state, run_dir: Path, logger: RunLogger,
                 resume_from: Path | None, shared_run_dir: bool):
        self.cfg = cfg
        self.recipe = recipe
        self.state = state  # accelerate's PartialState: processes, device
        self.run_dir = run_dir
        self.logger = logger
        self.resume_from = resume_from  # the checkpoint to restore, if resuming
        self.shared_run_dir = shared_run_dir  # False: node-local run directories, one checkpoint copy per node
        self.accelerator = None
        self.mixed_precision = None

    @property
    def rank(self) -> int:
        return self.state.process_index

    @property
    def world(self) -> int:
        return self.state.num_processes

    @property
    def device(self) -> torch.device:
        return self.state.device

    @property
    def is_main(self) -> bool:
        return self.state.is_main_process

    def say(self, message: str) -> None:
        """Print on the main process only, without breaking a progress bar."""
        print_line(message, self.is_main)

    @contextmanager
    def main_process_first(self):
        """One process per machine writes shared files (.beton caches) first; the others then reuse them."""
        with self.state.local_main_process_first():
            yield

    def scale_lr(self, lr: float) -> float:
        """--lr as given for one process, scaled to the global batch by --lr_scaling (none, linear, sqrt)."""
        growth = self.world * self.cfg.grad_accumulation
        return lr * {"none": 1.0, "linear": growth, "sqrt": math.sqrt(growth)}[self.cfg.lr_scaling]

    def prepare(self, model: torch.nn.Module, *objects, batch_size: int, image_size: int,
                prefer_bf16_on_cpu: bool = True):
        """Choose the precision for this model and batch, create the Accelerator, check the image size
        fits the network, and hand model and optimizer to Accelerate (devices, DDP).

        prefer_bf16_on_cpu=False: `--mixed_precision=auto` keeps fp32 on CPUs for a network measured
        slower in bf16 there, even where the CPU has native bf16.
        """
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState, GradientState
        from accelerate.utils import ProjectConfiguration, set_seed

        check_fits(model, image_size)
        device_type = training_device_type()
        precision = choose_mixed_precision(
            self.cfg.mixed_precision, device_type, launcher=launcher_precision(),
            prefer_bf16_on_cpu=prefer_bf16_on_cpu,
            forward_gflop_per_step=lambda: model_forward_gflop(model, image_size) * batch_size,
            log=self.say)
        if device_type == "cuda" and precision == "no":
            torch.backends.cuda.matmul.allow_tf32 = True  # fp32 storage, TF32 tensor-core matmuls
            torch.backends.cudnn.allow_tf32 = True
        # an earlier run in this process (a study's sub-run) may have used another precision: start afresh,
        # keeping the processes (PartialState)
        AcceleratorState._reset_state(reset_partial_state=False)
        GradientState._reset_state()
        self.accelerator = Accelerator(
            cpu=device_type == "cpu", mixed_precision=precision, gradient_accumulation_steps=self.cfg.grad_accumulation,
            project_config=ProjectConfiguration(save_on_each_node=not self.shared_run_dir))
        self.mixed_precision = precision
        # torch.compile, when launched with `accelerate launch --dynamo_backend=inductor` (Accelerate compiles in
        # prepare; checkpoints keep the plain model's keys): recorded, since it changes every timing
        compiled_with = self.accelerator.state.dynamo_plugin.backend.value.lower()
        prepared = self.accelerator.prepare(model, *objects)
        set_seed(self.cfg.seed, device_specific=True)  # each process its own dropout stream; init was shared
        global_batch = batch_size * self.world * self.cfg.grad_accumulation
        self.say(f"[run] device {self.device} x {self.world} process(es), mixed precision {precision}"
                 + (" (fp32 with TF32 matmuls)" if device_type == "cuda" and precision == "no" else "")
                 + f"; global batch {global_batch} = {batch_size} per process x {self.world} process(es) x "
                 f"{self.cfg.grad_accumulation} accumulated; lr scaling {self.cfg.lr_scaling}"
                 + (f"; torch.compile backend {compiled_with}" if compiled_with != "no" else ""))
        self.logger.update_config({"mixed_precision_used": precision, "global_batch": global_batch,
                                   "torch_compile": compiled_with})
        return prepared

    def prepare_evaluation(self):
        """An fp32 Accelerator for a run that only scores models (a study's summary step)."""
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=False)
        GradientState._reset_state()
        self.accelerator = Accelerator(cpu=training_device_type() == "cpu", mixed_precision="no")
        self.mixed_precision = "no"
        return self.accelerator


def model_forward_gflop(model: torch.nn.Module, image_size: int) -> float:
    """Forward GFLOP of one image (noise-conditioned denoisers are given a noise level)."""
    from toolkit.models.summary import forward_flops

    extra = (torch.full((1,), 0.1),) if getattr(model, "conditioned", False) else ()
    return forward_flops(model, (3, image_size, image_size), *extra) / 1e9


def check_fits(model: torch.nn.Module, image_size: int) -> None:
    """One image of image_size through the network, so that a size it cannot take is a one-line error."""
    extra = (torch.full((1,), 0.1),) if getattr(model, "conditioned", False) else ()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size), *extra)
    except (RuntimeError, ValueError) as error:
        raise ConfigError(f"images of {image_size} x {image_size} pixels are too small for "
                          f"{type(model).__name__} ({str(error).splitlines()[0]}); raise the image size") from None
    finally:
        model.train(was_training)


def start_run(cfg: RunSettings, recipe: str) -> Run:
    """Processes, seed, run directory (resumed or new), logger. The Accelerator comes with `Run.prepare`."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list, set_seed

    from toolkit.memory import keep_freed_memory

    cfg.check_run_settings()
    check_data = getattr(cfg, "check_data_settings", None)  # a recipe's data keys (toolkit.data.settings)
    if check_data is not None:
        check_data()  # a missing data folder stops the run before its folder and W&B run are made
    state = PartialState(cpu=training_device_type() == "cpu")
    # a step's activations stay in the process for the next step instead of going back to the system and being
    # faulted in again: a run's first training steps 1.12-1.19x faster on 2 AMD EPYC cores, whole runs level
    # (toolkit.memory)
    kept = keep_freed_memory()
    set_seed(cfg.seed)  # the same on every process: identical model initialisation
    if cfg.num_workers == 0:  # recorded in the config as the number used
        cfg.num_workers = default_num_workers()
    # PyTorch's threads: as many as FFCV's (each process's share of the cores by default). FFCV's loaders used to set
    # this themselves, which toolkit.data.ffcv_parts stopped; accelerate launch starts every process at one thread
    # (OMP_NUM_THREADS=1)
    torch.set_num_threads(cfg.num_workers)

    run_dir = Path(cfg.run_dir) if cfg.run_dir else None
    if cfg.resume and run_dir is None:
        run_dir = newest_run("runs", recipe)
    if run_dir is None:
        run_dir = Path("runs") / f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(broadcast_object_list([str(run_dir)])[0])  # every process agrees on the folder
    check_run_folder(run_dir)
    shared = run_dir_is_shared(state, run_dir)
    resume_from = agreed_latest_checkpoint(state, run_dir)
    if not cfg.resume and resume_from is not None:
        raise UserError(f"{run_dir} already holds a run with checkpoints: pass --resume to continue it, "
                        "or choose another --run_dir (nothing was changed)")
    if not cfg.resume:
        resume_from = None
    config = {**config_to_dict(cfg), "recipe": recipe, "num_processes": state.num_processes,
              "device": str(state.device), "cpu": describe_cpu(), "torch_threads": torch.get_num_threads()}
    if resume_from is not None:
        stored = read_config(run_dir)
        if stored and stored.get("recipe") not in (None, recipe):
            raise CheckpointError(f"{run_dir} holds a {stored['recipe']} run, not a {recipe} run: resume it with its "
                                  "own recipe, or start a new --run_dir")
        differences = config_differences(stored, config, defaults=config_to_dict(type(cfg)())) if stored else {}
        changed = {k: v for k, v in differences.items() if k in CHANGEABLE_ON_RESUME}
        refused = {k: v for k, v in differences.items() if k not in CHANGEABLE_ON_RESUME}
        if refused:
            raise UserError(f"{run_dir} was started with other settings ({describe_differences(refused)}); "
                            "resume with the same settings, or start a new --run_dir")
        if changed and state.is_main_process:
            print_line(f"[run] NOTE: resuming with changed settings ({describe_differences(changed)}): the run "
                       "continues from its checkpoint with the new values")
    if cfg.resume and resume_from is None and state.is_main_process:
        print_line(f"[run] --resume: no checkpoint in {run_dir} yet; starting from the beginning")

    if state.is_main_process:
        print_line(f"[run] {recipe}: run directory {run_dir}" + ("" if shared else " (local to each machine)"))
        print_line(f"[run] CPU: {describe_cpu()}" + ("; freed memory kept in the process for the next step" if kept
                                                      else ""))
        print_line(f"[run] config:\n{format_config(cfg)}")
    wandb_mode, wandb_reason = choose_wandb_mode(cfg.wandb_mode)
    resume_step = int(resume_from.name.split("-")[1]) if resume_from is not None else None
    tags = [tag.strip() for tag in cfg.wandb_tags.split(",") if tag.strip()]
    logger = RunLogger(state.is_main_process, run_dir, cfg.wandb_project, run_dir.name, config, wandb_mode,
                       wandb_reason, resume_step=resume_step, log=print_line, group=cfg.wandb_group or None,
                       job_type=recipe, tags=tags)
    return Run(cfg, recipe, state, run_dir, logger, resume_from, shared)


def check_run_folder(run_dir: Path) -> None:
    """--run_dir names a folder this process can make or write into: a UserError now, not a traceback later."""
    blocking = file_in_the_way(run_dir)
    if blocking is not None:
        raise UserError(f"--run_dir={run_dir}: {blocking} is a file, not a folder; choose another --run_dir")
    existing = next(path for path in (run_dir, *run_dir.parents) if path.exists())  # '.' or '/' at last
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--run_dir={run_dir}: this user cannot write in {existing}; choose another --run_dir")


def run_dir_is_shared(state, run_dir: Path) -> bool:
    """True when every machine sees the same --run_dir (one filesystem), False when each has its own.

    The main process leaves a marker file; every machine's first process looks for it. With one machine
    the answer is always True.
    """
    from accelerate.utils import broadcast_object_list, gather_object

    if state.num_processes == 1 or int(os.environ.get("WORLD_SIZE", "1")) == int(os.environ.get("LOCAL_WORLD_SIZE",
                                                                                                 "1")):
        return True
    token = broadcast_object_list([uuid.uuid4().hex])[0]
    marker = run_dir / f".shared-check-{token}"
    if state.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(token)
    state.wait_for_everyone()
    sees = marker.is_file() if state.is_local_main_process else True
    everyone = gather_object([sees])
    state.wait_for_everyone()
    if state.is_main_process:
        marker.unlink(missing_ok=True)
    return all(everyone)


def run_recipe(main, config_class, argv: list[str] | None = None) -> None:
    """Parse the command line into `config_class`, call main(cfg), turn user errors into one line."""
    argv = sys.argv[1:] if argv is None else argv
    program = Path(sys.argv[0]).name
    code = 0
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        cfg = parse_config(config_class, argv, program)
        main(cfg)
        _end_processes()
    except Preempted as stop:
        say_once_per_machine(f"stopped: {stop}")
        code = 143
    except UserError as error:
        say_once_per_machine(f"error: {error}")
        code = 2
    except KeyboardInterrupt:
        say_once_per_machine("\ninterrupted: rerun with --resume (and the same --run_dir) to continue from the last "
                             "checkpoint")
        code = 130
    except Exception as error:  # a closed output pipe, a file system's refusal, a bug
        code = report_failure(error)
    finally:
        restore_sigterm(sigterm)  # a recipe run inside a program leaves its SIGTERM as it found it
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        # after an error: never linger in a collective another process will not join; after success (the process
        # group closed, every file written and the W&B run finished): skip the interpreter's teardown, where a
        # native thread a library left behind can abort a process whose work is done and fail the whole launch
        os._exit(code)
    if code:
        raise SystemExit(code)


def _end_processes() -> None:
    """After a successful run with several processes: meet, then close the process group, so that no
    communication thread is left to be torn down at interpreter exit (which aborts the process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def install_stop_handler() -> list[bool]:
    """SIGTERM (spot/preemptible machines, SLURM, torchrun passing it on) asks the loop to stop at the next
    step boundary; returns the flag the handler sets. SIGINT keeps its usual KeyboardInterrupt."""
    flag = [False]

    def request_stop(signum, frame):
        flag[0] = True

    try:
        signal.signal(signal.SIGTERM, request_stop)
    except ValueError:  # not the main thread (e.g. a notebook's worker): no graceful stop there
        pass
    return flag


def restore_sigterm(handler) -> None:
    """Put back the SIGTERM handler found before install_stop_handler (once training is over, SIGTERM ends
    the process again, and processes forked later do not inherit a handler that ignores it)."""
    try:
        signal.signal(signal.SIGTERM, handler if handler is not None else signal.SIG_DFL)
    except ValueError:  # not the main thread: nothing was installed
        pass
