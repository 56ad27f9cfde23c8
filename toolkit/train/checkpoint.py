"""Atomic checkpoints with Accelerate's save_state, and resuming from the newest complete one.

    <run_dir>/checkpoints/step-00000125/   model.safetensors, optimizer.bin, random_states_*.pkl,
                                           trainer_state.json (toolkit.train.state.TrainerState)

A checkpoint is written to .partial-step-N and renamed into place only when every process has
finished writing, so a run killed mid-write leaves the previous checkpoint as the newest
complete one. trainer_state.json makes each checkpoint self-contained for predict/evaluate.

Several processes: every process saves its own random state, so all of them take part; if any of
them fails (a full disk), all of them stop with that process's message instead of waiting for it.
Several machines without a shared filesystem (`per_node`): each machine's first process writes
and publishes its own copy, and a resume starts from the newest step every machine holds.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from toolkit.errors import CheckpointError
from toolkit.train.state import STATE_FILE, TrainerState

CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def checkpoint_step(checkpoint: Path) -> int:
    return int(_STEP_DIR.match(Path(checkpoint).name).group(1))


def complete_checkpoints(run_dir: Path | str) -> list[Path]:
    """Finished checkpoints of a run, oldest first."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [path for path in folder.iterdir()
             if _STEP_DIR.match(path.name) and (path / STATE_FILE).is_file()]
    return sorted(found, key=checkpoint_step)


def older_checkpoint(checkpoint: Path | str) -> Path | None:
    """The finished checkpoint of the same run just before `checkpoint` (to fall back to when it is damaged)."""
    checkpoint = Path(checkpoint)
    earlier = [path for path in complete_checkpoints(checkpoint.parent.parent)
               if checkpoint_step(path) < checkpoint_step(checkpoint)]
    return earlier[-1] if earlier else None


def latest_checkpoint(run_dir: Path | str) -> Path | None:
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def agreed_latest_checkpoint(state, run_dir: Path) -> Path | None:
    """The newest checkpoint that every machine holds (one filesystem: simply the newest), or None.

    `state` is accelerate's PartialState. Raises when the machines hold no step in common.
    """
    from accelerate.utils import gather_object

    mine = [checkpoint_step(path) for path in complete_checkpoints(run_dir)]
    if state.num_processes == 1:
        return Path(run_dir) / CHECKPOINTS / checkpoint_name(mine[-1]) if mine else None
    everyone = gather_object([mine])
    common = set(everyone[0]).intersection(*everyone[1:])
    if not any(everyone):
        return None
    if not common:
        raise CheckpointError(f"the processes' copies of {run_dir} hold no checkpoint in common "
                              f"({sorted({s for steps in everyone for s in steps})} between them): resume needs "
                              "the same checkpoint on every machine; copy one across or start a new --run_dir")
    return Path(run_dir) / CHECKPOINTS / checkpoint_name(max(common))


def _first_error(accelerator, error: str | None) -> str | None:
    """The first error any process met (one collective: every process learns it, none waits forever)."""
    if accelerator.num_processes == 1:
        return error
    from accelerate.utils import gather_object

    errors = [e for e in gather_object([error]) if e]
    return errors[0] if errors else None


def writes_checkpoints(accelerator, per_node: bool = False) -> bool:
    """Whether this process writes a checkpoint's files: one process per machine (per_node: node-local run
    directories) or one in all."""
    return accelerator.is_local_main_process if per_node else accelerator.is_main_process


def save_checkpoint(accelerator, run_dir: Path | str, step: int, trainer_state: TrainerState, keep: int = 2,
                    per_node: bool = False) -> Path:
    """Save model, optimizer and RNG states plus `trainer_state`; keep the newest `keep`.

    Every process must call this. On failure (e.g. a full disk) on any process, the partial folder is
    removed, the previous checkpoint is untouched, and every process raises CheckpointError saying why.
    """
    folder = Path(run_dir) / CHECKPOINTS
    partial = folder / f".partial-{checkpoint_name(step)}"
    final = folder / checkpoint_name(step)
    writer = writes_checkpoints(accelerator, per_node)
    where = f"process {accelerator.process_index}: " if accelerator.num_processes > 1 else ""
    error = None
    try:
        if writer:
            folder.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(partial, ignore_errors=True)
    except OSError as failure:
        error = f"{where}could not create {folder}: {failure.strerror or failure}"
    error = _first_error(accelerator, error)
    if error:
        raise CheckpointError(error)
    try:
        accelerator.save_state(str(partial), safe_serialization=True)
        if writer:
            trainer_state.write(partial)
            _fsync_tree(partial)
    except Exception as failure:  # a full disk (OSError), or torch's RuntimeError for a vanished folder
        reason = getattr(failure, "strerror", None) or f"{type(failure).__name__}: {failure}"
        free = shutil.disk_usage(folder).free / 1e6 if folder.exists() else float("nan")
        error = (f"{where}could not write checkpoint {final} ({reason}; {free:.0f} MB free). "
                 "The previous checkpoint is intact: free some space, then rerun with --resume")
    error = _first_error(accelerator, error)
    if error:
        if writer:  # only now, once every process has stopped writing into it
            shutil.rmtree(partial, ignore_errors=True)
        raise CheckpointError(error)
    if writer:
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


def _fsync_tree(folder: Path) -> None:
    """Flush a checkpoint's files to disk before the rename that publishes it."""
    for path in folder.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


def load_checkpoint(accelerator, checkpoint: Path | str, expected: TrainerState) -> TrainerState:
    """Restore states saved by save_checkpoint into what `accelerator` prepared; returns the stored state.

    A checkpoint of another model, class list or process count is refused with a message naming both.
    """
    checkpoint = Path(checkpoint)
    stored = TrainerState.read(checkpoint)
    problems = expected.mismatches(stored)
    if problems:
        raise CheckpointError(f"checkpoint {checkpoint} does not fit this run: {'; '.join(problems)}. Resume with "
                              "the same settings, or start a new --run_dir")
    try:
        accelerator.load_state(str(checkpoint))
    except Exception as error:  # mismatched tensors, missing files, unpickling errors
        older = older_checkpoint(checkpoint)
        advice = f"delete that folder to resume from {older.name}" if older else \
            "it is the run's only checkpoint: start a new --run_dir"
        raise CheckpointError(f"could not restore {checkpoint} ({type(error).__name__}: {error}); {advice}") from None
    return stored
