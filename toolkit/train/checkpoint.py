"""Atomic checkpoints with Accelerate's save_state, and resuming from the newest complete one.

    <run_dir>/checkpoints/step-00000125/   model.safetensors, optimizer.bin, random_states_*.pkl,
                                           scheduler.bin, trainer_state.json (step, epoch, classes,
                                           model spec, preprocessing, config)

A checkpoint is written to .partial-step-N and renamed into place only when every process has
finished writing, so a run killed mid-write leaves the previous checkpoint as the newest
complete one. trainer_state.json makes each checkpoint self-contained for predict/evaluate.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from toolkit.errors import CheckpointError

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def complete_checkpoints(run_dir: Path | str) -> list[Path]:
    """Finished checkpoints of a run, oldest first."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [path for path in folder.iterdir()
             if _STEP_DIR.match(path.name) and (path / STATE_FILE).is_file()]
    return sorted(found, key=lambda path: int(_STEP_DIR.match(path.name).group(1)))


def latest_checkpoint(run_dir: Path | str) -> Path | None:
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def read_trainer_state(checkpoint: Path | str) -> dict:
    path = Path(checkpoint) / STATE_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{checkpoint} is not a checkpoint of this toolkit (no {STATE_FILE})") from None
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is corrupt ({error}); delete that checkpoint folder to fall back "
                              "to the previous one") from None


def save_checkpoint(accelerator, run_dir: Path | str, step: int, trainer_state: dict, keep: int = 2) -> Path:
    """Save model, optimizer, scheduler and RNG states plus `trainer_state`; keep the newest `keep`.

    Every process must call this (each saves its own RNG state). On failure (e.g. a full disk)
    the partial folder is removed, the previous checkpoint is untouched, and CheckpointError says why.
    """
    folder = Path(run_dir) / CHECKPOINTS
    partial = folder / f".partial-{checkpoint_name(step)}"
    final = folder / checkpoint_name(step)
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(partial), safe_serialization=True)
        if accelerator.is_main_process:
            (partial / STATE_FILE).write_text(json.dumps(trainer_state, indent=1))
    except OSError as error:
        shutil.rmtree(partial, ignore_errors=True)
        free = shutil.disk_usage(folder).free / 1e6
        raise CheckpointError(f"could not write checkpoint {final} ({error.strerror or error}; {free:.0f} MB free). "
                              f"The previous checkpoint is intact: free some space, then rerun with --resume") from None
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _fsync_tree(partial)
        if final.exists():  # the same step saved again after a resume: swap, never delete first
            stale = folder / f".stale-{checkpoint_name(step)}"
            shutil.rmtree(stale, ignore_errors=True)
            os.replace(final, stale)
            os.replace(partial, final)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            os.replace(partial, final)
        for old in complete_checkpoints(run_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def ensure_final_checkpoint(accelerator, run_dir: Path | str, step: int, trainer_state: dict, keep: int = 2) -> Path:
    """The checkpoint of the last step: the one already saved at `step`, or a new one."""
    newest = latest_checkpoint(run_dir)
    if newest is not None and newest.name == checkpoint_name(step):
        return newest
    return save_checkpoint(accelerator, run_dir, step, trainer_state, keep)


def _fsync_tree(folder: Path) -> None:
    """Flush a checkpoint's files to disk before the rename that publishes it."""
    for path in folder.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


def load_checkpoint(accelerator, checkpoint: Path | str, expected: dict) -> dict:
    """Restore states saved by save_checkpoint; returns the trainer state.

    `expected` holds what must match (e.g. {'model': 'SceneCNN', 'classes': [...]}): a checkpoint
    from another model or class list is refused with a message naming both.
    """
    checkpoint = Path(checkpoint)
    state = read_trainer_state(checkpoint)
    for key, wanted in expected.items():
        if state.get(key) != wanted:
            raise CheckpointError(f"checkpoint {checkpoint} has {key}={state.get(key)!r} but this run has "
                                  f"{key}={wanted!r}; resume with the same settings or start a new --run_dir")
    try:
        accelerator.load_state(str(checkpoint))
    except Exception as error:  # mismatched tensors, missing files, unpickling errors
        raise CheckpointError(f"could not restore {checkpoint}: {type(error).__name__}: {error}") from None
    return state
