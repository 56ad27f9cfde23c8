"""The part of every training loop that is pure bookkeeping: where to start, what to skip, when to stop."""

from __future__ import annotations

from collections.abc import Callable, Iterator


def resumable_batches(loader_for_epoch: Callable[[int], object], state: dict, epochs: int,
                      last_step: int) -> Iterator[tuple[int, int, int, tuple]]:
    """Yield (epoch, batch index, batches in the epoch, batch), continuing from `state`.

    FFCV's order for an epoch depends only on (seed, epoch), so a resumed run replays the epoch
    it stopped in and skips the batches already trained on. Before each yield, `state` is moved
    to the position *after* the batch (step, epoch, batch_in_epoch): a checkpoint saved once the
    step is done resumes at the next batch. Stops after `last_step`.
    """
    start_epoch, skip = state["epoch"], state["batch_in_epoch"]
    for epoch in range(start_epoch, epochs):
        loader = loader_for_epoch(epoch)
        loader.next_epoch = epoch
        batches = len(loader)
        for index, batch in enumerate(loader):
            if epoch == start_epoch and index < skip:
                continue
            if state["step"] >= last_step:
                return
            finished_epoch = index + 1 == batches
            state.update(step=state["step"] + 1, epoch=epoch + finished_epoch,
                         batch_in_epoch=0 if finished_epoch else index + 1)
            yield epoch, index, batches, batch
        if state["step"] >= last_step:
            return


def due(step: int, every: int) -> bool:
    """True every `every` steps (never when every is 0)."""
    return bool(every) and step % every == 0
