"""The bookkeeping around a recipe's step, so that the step itself stays in view in the recipe:

    loop = TrainingLoop(run, state, model, optimizer, validate, eval_every=cfg.eval_every)
    for images, labels in loop.batches(lambda epoch: train_loader, cfg.epochs):
        with accelerator.accumulate(model):          # the recipe's own step: batch, forward, loss,
            ...                                       # accelerator.backward, optimizer.step
        loop.end_step(loss, len(labels), logits, labels)
    loop.finish()

What the loop does, in order, and nothing else:
    resume      restore the newest checkpoint (model, optimizer, RNG states, weight average, counters)
    epochs_within_minutes   --train_minutes: how many epochs fit in a time budget on this machine, timed before
                training; once a tenth of the minutes is spent (or sooner, a tenth of the plan trained), then a
                tenth of the minutes after each, until the last tenth, the plan is made again, to the iteration,
                from the pace the steps really kept since the one before (10 s of timing can be 5-10% off, and a
                shared host drifts); the budget is then a limit too: once its minutes of training are spent
                (after the first epoch), training ends there, saying so
    batches     continue where the checkpoint stopped: skip the epochs and batches already trained on; while
                they run, SIGTERM asks for a stop (its previous handler is back once they end, however)
    end_step    clear the gradients; count time, images and loss; update the weight average; log, validate, checkpoint
                when due; show a progress bar with an ETA; stop cleanly at a step boundary on SIGTERM
    finish      log the training time; make the weight average the exported model once training is done
"""

from __future__ import annotations

import copy
import math
import signal
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import torch

from toolkit.config import chosen_keys
from toolkit.errors import TrainingDiverged
from toolkit.progress import progress_bar
from toolkit.run import Preempted, Run, install_stop_handler, restore_sigterm
from toolkit.train.checkpoint import checkpoint_name, load_checkpoint, save_checkpoint, writes_checkpoints
from toolkit.train.ema import ModelEMA
from toolkit.train.meter import TrainingMeter
from toolkit.train.schedule import stretched_position
from toolkit.train.state import TrainerState

StepPhase = tuple[str, float, Callable[[], torch.Tensor]]  # (name, share of the iterations, the step) of a plan


class PaceWindow(NamedTuple):
    """Where a time budget's next re-plan reads the pace from: the step and training seconds it begins at, and
    what that point is (said in the re-plan's message)."""
    step: int
    train_seconds: float
    since: str


def typical_step_seconds(step_seconds: list[float]) -> float:
    """What a time budget plans with: the median of the timed steps (a few slow ones would pull a mean up)."""
    return statistics.median(step_seconds)


def pace_so_far(training_seconds: float, steps: int) -> float:
    """What a time budget re-plans with: the seconds per iteration of the training so far, the mean (what the
    budget spends is the sum of the steps, slow ones included)."""
    return training_seconds / steps


def iterations_within(minutes: float, spent_seconds: float, step: int, seconds_per_step: float, at_least: int,
                      multiple_of: int = 1) -> int:
    """The iterations a budget of `minutes` holds in all, `step` of them trained in `spent_seconds`, the rest at
    `seconds_per_step`: rounded down to a whole gradient accumulation, and never fewer than `at_least`."""
    fits = step + max(0.0, minutes * 60 - spent_seconds) / seconds_per_step
    return max(at_least, int(fits) - int(fits) % multiple_of)


def replan_share_seconds(budget: dict) -> float:
    """The training seconds of one of a budget's re-plan shares (a tenth of its minutes)."""
    return budget["replan_every"] * budget["minutes"] * 60


def due(step: int, every: int) -> bool:
    """True every `every` steps (never when every is 0)."""
    return bool(every) and step % every == 0


class TrainingLoop:
    """The counters, schedule and side work of one training run (see the module docstring).

    validate(model, step, epoch_end) -> {metric: value}: the recipe's validation of `model` (the weight
    average when there is one), logged by the loop; epoch_end is the epoch just finished or None.
    eval_at_epoch_end: validate at every epoch's end too (the denoisers' image grids).
    """

    def __init__(self, run: Run, state: TrainerState, model, optimizer,
                 validate: Callable[[torch.nn.Module, int, int | None], dict], eval_every: int,
                 ema_decay: float = 0.0, eval_at_epoch_end: bool = False, restore: bool = True):
        self.run, self.state, self.model, self.optimizer = run, state, model, optimizer
        self.accelerator = run.accelerator
        self.validate, self.eval_every, self.eval_at_epoch_end = validate, eval_every, eval_at_epoch_end
        self.ema = None
        if ema_decay:
            self.ema = ModelEMA(self.accelerator.unwrap_model(model), ema_decay)
            self.accelerator.register_for_checkpointing(self.ema)  # the average is part of what a resume needs
        state.mixed_precision = run.mixed_precision
        state.num_processes = run.world
        if restore:
            self.restore()
        self.meter = TrainingMeter(self.accelerator)
        self.stop_requested = [False]  # set by SIGTERM while the batches run (see batches)
        self.total_steps = self.last_step = self.steps_per_epoch = 0
        self._pace_from: PaceWindow | None = None  # where a budget's next re-plan reads the pace from
        self.bar = None
        self._tick = time.perf_counter()
        self._epoch_progress = 0.0

    def restore(self) -> None:
        """Load the checkpoint the run resumes from (no-op for a fresh run); the counters come with it."""
        if self.run.resume_from is None:
            return
        # the optimizer's state comes back with the checkpoint, its learning rate and weight decay from this run's
        # settings (a resume after a divergence lowers --lr; scheduled recipes set the lr every step anyway)
        settings = [{k: g[k] for k in ("lr", "weight_decay") if k in g} for g in self.optimizer.param_groups] \
            if self.optimizer is not None else []
        stored = load_checkpoint(self.accelerator, self.run.resume_from, self.state)
        for group, values in zip(self.optimizer.param_groups if self.optimizer is not None else [], settings):
            group.update(values)
        if stored.weights and not self.state.weights or self.state.weights == "from checkpoint":
            self.state.weights = stored.weights
        for name in ("step", "epoch", "batch_in_epoch", "train_seconds", "images_seen"):
            setattr(self.state, name, getattr(stored, name))
        self.state.extra = {**stored.extra, **self.state.extra}  # e.g. the epochs a time budget chose
        self.run.say(f"[run] resumed from {self.run.resume_from} at iteration {self.state.step}")

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def evaluated_model(self):
        """What validation and the final scores use: the weight average when there is one."""
        return self.ema.model if self.ema is not None else self.model

    def epochs_within_minutes(self, minutes: float, steps_per_epoch: int,
                              train_step: Callable[[], torch.Tensor] | Sequence[StepPhase],
                              timed_steps: int = 20, warmup_steps: int = 3, timed_seconds: float = 10.0,
                              max_timed_steps: int = 100, max_timed_share: float = 0.02,
                              replan_every: float = 0.1) -> int:
        """The whole epochs (at least one) that `minutes` of training hold on this machine, as timed before training;
        every `replan_every` of the minutes the loop plans again (see below; 0 = never).

        train_step is the recipe's step, or the phases of a run whose step changes on a fixed plan (patches of
        64 px for the first half of the iterations, then 96): (name, share of the iterations, step) each. Each
        phase is timed as below, on its share of the timing seconds, and the time of an iteration is the
        share-weighted sum of their medians.

        The time of one iteration is measured once, before training: `warmup_steps` untimed then at least
        `timed_steps` timed calls of train_step() (the recipe's step on a stand-in batch; it returns the loss),
        each followed by the loop's own per-step work (clearing the gradients, the weight average), and more
        until about `timed_seconds` are timed (at most `max_timed_steps`, and no more than `max_timed_share` of
        the budget: a 1-minute budget times ~1.2 s or its 20 steps, not 10 s; every process times as many as
        the one that needs most, as each step may synchronise them): 20 steps of a fast step span only a few
        seconds, and on 2 cores the denoiser's 20 steps of 4 patches timed 0.125 to 0.190 s per iteration in
        three runs that then trained at 0.139 s. The median step counts, not the mean: on a shared 2-core
        machine single steps of the denoiser took 0.67-1.26 s, and a few slow ones would pull a mean up and
        leave budget unused. The slowest process's median counts. The model,
        optimizer, weight average, gradient scaler and torch's global random generators (which dropout draws
        from) are then put back exactly as they were, so the run trains exactly as --epochs=<the answer> would
        until the re-plan (below), which changes only how many iterations follow.
        Validation and checkpoints are not in the budget, as they are not in the training time the run reports;
        what the run already counted as training before its first step (a cache of frozen features) is. The
        choice is kept in the trainer state: a resumed run continues with it and measures nothing. The minutes
        are a limit as well (see end_step): should the steps run slower than they were timed, training ends once
        the minutes are spent, the first epoch excepted.

        The re-plan: 10 s of timing on a shared or drifting host can read 5-10% off the pace training then keeps
        (an hour on 2 cores planned at 0.301 s per iteration trained at 0.289 and left 5 minutes unused; another
        timed 0.249 s, trained at 0.261 and was cut at 96% of its schedule, its learning rate not yet annealed).
        And a shared host drifts: an hour re-planned once at 6 minutes (0.338 s per iteration) then ran at 0.364.
        So at the first log step once `replan_every` of the minutes is spent since the previous re-plan (the first:
        since this process's first log step, or once that share of the planned iterations is trained if that comes
        sooner, as it does when the plan is too short; none in the last share, so at most 9 for a tenth), the
        iterations are planned again from the mean pace of those steps, a whole share of the minutes (re-plans at
        fixed tenths made one just after an early first, from 7 steps), the slowest process's. The first reads the
        steps since this process's first log step, leaving the loader's start-up and the first steps' warm-up out; a
        run resumed before its first re-plan but past that step uses all its steps so far, so that it re-plans where
        the uninterrupted run did. The total becomes what the minutes hold, to the iteration, not to the epoch (the
        last epoch may end part-way), and never less than one epoch. A recipe whose schedule reads
        loop.schedule_at(iteration) each step follows the new total with no jump: what is left of its schedule (the
        learning rate's, the patch sizes') is spread over the iterations that now follow (read against
        loop.total_steps, a one-cycle learning rate halfway would jump by about 4% of its peak for 5% more or fewer
        iterations). Each re-plan is recorded in the budget (`replans`) and kept on resume.
        """
        stored = self.state.extra.get("budget")
        if stored is not None:
            self.run.logger.update_config({"budget": stored})
            at = [str(replan["at_step"]) for replan in stored.get("replans", [])]
            replanned = f" and re-planned at iteration{'s' * (len(at) > 1)} {', '.join(at)}" if at else ""
            self.run.say(f"[budget] {stored['minutes']:g} min: {stored['steps']} iterations, as planned when the run "
                         f"started{replanned} (kept on resume)")
            return int(stored["epochs"])
        if "epochs" in chosen_keys(self.run.cfg):  # given, or a study's options for the recipe set it
            self.run.say(f"[budget] note: --epochs={self.run.cfg.epochs} is not used: --train_minutes={minutes:g} "
                         "chooses the epochs that fit")
        accelerator = self.accelerator
        keep = [accelerator.unwrap_model(self.model), self.optimizer]
        keep += [part for part in (self.ema, accelerator.scaler) if part is not None]
        saved = [copy.deepcopy(part.state_dict()) for part in keep]
        accumulation_counter = accelerator.step
        devices = [accelerator.device] if accelerator.device.type == "cuda" else []

        def time_steps(step: Callable[[], torch.Tensor], seconds_to_time: float) -> list[float]:
            def timed_step() -> float:
                started = time.perf_counter()
                float(step().detach())  # reading the loss waits for the device
                self.optimizer.zero_grad(set_to_none=True)
                if self.ema is not None and accelerator.sync_gradients:
                    self.ema.update(accelerator.unwrap_model(self.model))
                return time.perf_counter() - started

            for _ in range(warmup_steps):
                timed_step()
            step_seconds = [timed_step() for _ in range(timed_steps)]
            wanted = min(max_timed_steps, math.ceil(seconds_to_time / max(typical_step_seconds(step_seconds), 1e-6)))
            more = int(accelerator.gather(torch.tensor([wanted - timed_steps], device=accelerator.device)).max())
            return step_seconds + [timed_step() for _ in range(max(0, more))]

        phases = [("", 1.0, train_step)] if callable(train_step) else list(train_step)
        timings = []  # (name, share, seconds of the slowest process's median, steps timed) per phase
        with torch.random.fork_rng(devices=devices):  # dropout draws from the global generators: put back after
            for name, share, phase_step in phases:
                step_seconds = time_steps(phase_step, share * min(timed_seconds, max_timed_share * minutes * 60))
                typical = typical_step_seconds(step_seconds)
                slowest = float(accelerator.gather(torch.tensor([typical], device=accelerator.device)).max())
                timings.append((name, share, slowest, len(step_seconds)))
        seconds_per_step = sum(share * seconds for _, share, seconds, _ in timings)
        for part, state in zip(keep, saved):
            part.load_state_dict(state)
        accelerator.step = accumulation_counter
        left = minutes * 60 - self.state.train_seconds  # time already counted as training (e.g. feature caching)
        epochs = max(1, math.floor(left / (seconds_per_step * steps_per_epoch)))
        self.state.extra["budget"] = {"minutes": minutes, "seconds_per_step": round(seconds_per_step, 4),
                                      "epochs": epochs, "steps": epochs * steps_per_epoch,
                                      "counted_before": round(self.state.train_seconds, 3)}
        if replan_every:  # re-plan a share of the minutes after the last; the first sooner at that share of the plan
            self.state.extra["budget"].update(replan_every=replan_every, replans=[], stretched_schedule=True,
                                              replan_at=max(1, round(replan_every * epochs * steps_per_epoch)))
        if len(timings) > 1:
            self.state.extra["budget"]["phase_seconds_per_step"] = {name: round(seconds, 4)
                                                                    for name, _, seconds, _ in timings}
        self.run.logger.update_config({"budget": self.state.extra["budget"]})
        fits = max(0.0, left) / seconds_per_step
        counted = f" after the {self.state.train_seconds:.0f} s already counted as training" \
            if self.state.train_seconds else ""
        if len(timings) == 1:
            timed = f"median of {timings[0][3]} timed"
        else:
            timed = "; ".join(f"{name} for {share:.0%} of them: {seconds:.4f} s, median of {steps} timed"
                              for name, share, seconds, steps in timings)
        self.run.say(f"[budget] {minutes:g} min: {seconds_per_step:.4f} s per iteration ({timed}), "
                     f"so {epochs} epochs of {steps_per_epoch} iterations "
                     f"({epochs * steps_per_epoch} of the {fits:.0f} that fit{counted})"
                     + ("" if fits >= steps_per_epoch else ": the budget is shorter than one epoch, which runs anyway"))
        return epochs

    def schedule_at(self, iteration: int) -> tuple[float, int]:
        """(position, length) of training iteration `iteration` (from 0) in the recipe's schedule: (iteration,
        total_steps), until a time budget's re-plan changes the total; from then on the position in the schedule
        as first planned, what was left of it spread over the iterations that now follow (stretched_position), so
        a learning rate or patch size read from it moves on with no jump and ends where the new plan ends. A pure
        function of the budget's record: a resumed run reads the same. (A budget recorded before this, without
        `stretched_schedule`, keeps reading the new total, so that its run resumes as it would have gone on.)"""
        budget = self.state.extra.get("budget")
        if not budget or not budget.get("replans") or not budget.get("stretched_schedule"):
            return float(iteration), self.total_steps
        replans = budget["replans"]
        totals = [replan["steps_before"] for replan in replans[1:]] + [budget["steps"]]  # what each re-plan chose
        first = replans[0]["steps_before"]
        return stretched_position(iteration, first, [(replan["at_step"], total)
                                                     for replan, total in zip(replans, totals)]), first

    def batches(self, loader_for_epoch: Callable[[int], object], epochs: int) -> Iterator[tuple]:
        """Yield the batches still to train on, continuing from the trainer state (loop.step: this one's number).

        Every loader's order for an epoch depends only on (seed, epoch), so a resumed run replays the
        epoch it stopped in and skips the batches already trained on. Before each yield the state
        moves to the position *after* the batch: a checkpoint saved once the step is done resumes at
        the next batch. Stops after --max_steps (rounded down to a whole gradient accumulation, so
        that a resume continues exactly) or at the end.
        """
        self.steps_per_epoch = len(loader_for_epoch(0))
        budget = self.state.extra.get("budget")  # a time budget's plan is in iterations (re-planned, kept on resume)
        self.total_steps = budget["steps"] if budget is not None else epochs * self.steps_per_epoch
        accumulation = self.run.cfg.grad_accumulation
        self._set_last_step()
        self.bar = progress_bar(self.total_steps, self.run.recipe, unit="it", initial=self.state.step,
                                main_process=self.run.is_main)
        previous_sigterm = signal.getsignal(signal.SIGTERM)
        self.stop_requested = install_stop_handler()
        try:
            yield from self._remaining_batches(loader_for_epoch, accumulation)
        finally:  # done, stopped or failed: the bar closes and SIGTERM gets its previous handler back
            self.close()
            restore_sigterm(previous_sigterm)

    def _set_last_step(self) -> None:
        """Where training stops: the plan's end, --max_steps (rounded down to a whole gradient accumulation, so
        that a resume continues exactly) or where a time budget's minutes were spent, whichever comes first."""
        max_steps, accumulation = self.run.cfg.max_steps, self.run.cfg.grad_accumulation
        self.last_step = self.total_steps
        if max_steps and max_steps < self.total_steps:
            self.last_step = max_steps - max_steps % accumulation
        stopped_at = self.state.extra.get("budget", {}).get("stopped_at")
        if stopped_at is not None:  # a time budget's minutes were spent there: a resume has nothing left to train
            self.last_step = min(self.last_step, stopped_at)

    def _remaining_batches(self, loader_for_epoch, accumulation: int) -> Iterator[tuple]:
        """Epoch after epoch until the last step (total_steps may change while they run: the budget's re-plan)."""
        start_epoch, skip = self.state.epoch, self.state.batch_in_epoch
        self._tick = time.perf_counter()
        epoch = start_epoch
        while self.state.step < self.last_step:
            loader = loader_for_epoch(epoch)
            loader.next_epoch = epoch
            count = len(loader)
            for index, batch in enumerate(loader):
                if epoch == start_epoch and index < skip:
                    continue
                if self.state.step >= self.last_step:
                    return
                finished_epoch = index + 1 == count
                self.state.step += 1
                self.state.epoch, self.state.batch_in_epoch = epoch + finished_epoch, 0 if finished_epoch else index + 1
                self._epoch_progress = epoch + (index + 1) / count
                if self.state.step == self.total_steps and accumulation > 1:
                    self.accelerator.step = accumulation - 1  # the last batch applies whatever has accumulated
                yield batch
            epoch += 1

    def end_step(self, loss: torch.Tensor, images: int, logits: torch.Tensor | None = None,
                 labels: torch.Tensor | None = None, **logged) -> None:
        """After the recipe's optimizer step: clear the gradients (Accelerate keeps them while accumulating),
        bookkeeping, then logging, validation and checkpoints when due."""
        step, accelerator = self.state.step, self.accelerator
        self.optimizer.zero_grad(set_to_none=True)
        synced = accelerator.sync_gradients
        if self.ema is not None and synced:
            self.ema.update(accelerator.unwrap_model(self.model))
        self.meter.add(loss, images, time.perf_counter() - self._tick, logits, labels)
        epoch_end = self.state.batch_in_epoch == 0
        if step < self.last_step and synced:
            self._keep_to_budget(step)
        last = step == self.last_step
        evaluate = (due(step, self.eval_every) or (self.eval_at_epoch_end and epoch_end)) and not last
        checkpoint = due(step, self.run.cfg.checkpoint_every) and not last and synced
        stop = self._stop_requested() and synced and not last
        if due(step, self.run.cfg.log_every) or evaluate or checkpoint or stop or last:
            metrics = self.meter.flush(step)  # raises TrainingDiverged on a NaN/inf loss, before any save
            metrics.update(epoch=self._epoch_progress, lr=self.optimizer.param_groups[0]["lr"],
                           **{key: value.item() if isinstance(value, torch.Tensor) else value  # read when logged
                              for key, value in logged.items() if value is not None})
            self.state.train_seconds += metrics["seconds"]
            self.state.images_seen += metrics["images"]
            self.run.logger.log(metrics, step)
            if self.bar is not None:
                self.bar.set_postfix(epoch=f"{self._epoch_progress:.2f}", loss=f"{metrics['train/loss']:.4f}",
                                     img_s=f"{metrics['train/images_per_s']:.0f}", refresh=False)
        if self.bar is not None:
            self.bar.update(1)
        if evaluate:
            self.run_validation(step, int(self._epoch_progress) if epoch_end else None)
        if checkpoint or stop:
            self.save(step)
        if stop:
            self.close()
            self.run.logger.finish()
            raise Preempted(f"asked to stop (SIGTERM); saved a checkpoint at iteration {step} in "
                            f"{self.run.run_dir}. Rerun the same command with --resume to continue from there")
        self._tick = time.perf_counter()

    def run_validation(self, step: int, epoch_end: int | None = None) -> dict:
        """Validate, then log the scores with the running train accuracy and the training minutes so far."""
        started = time.perf_counter()
        scores = self.validate(self.evaluated_model, step, epoch_end)
        scores["val/seconds"] = time.perf_counter() - started
        scores["time/train_minutes"] = self.state.train_seconds / 60  # time-to-accuracy: against training time
        if self.meter.seen_any:
            scores["train/accuracy_running"] = self.meter.take_running_accuracy()
        self.run.logger.log(scores, step)
        return scores

    def save(self, step: int) -> None:
        """A checkpoint of this step, unless the weights are no longer finite (the previous one stays)."""
        unwrapped = self.accelerator.unwrap_model(self.model)
        finite = torch.tensor(all(bool(torch.isfinite(p).all()) for p in unwrapped.parameters()), dtype=torch.int32,
                              device=self.accelerator.device)
        if int(self.accelerator.reduce(finite, reduction="sum")) < self.run.world:
            raise TrainingDiverged(
                f"the weights became NaN or infinite by iteration {step}; the run stopped before saving them, so the "
                "newest checkpoint is still good. Lower --lr or use --mixed_precision=no, then --resume")
        save_checkpoint(self.accelerator, self.run.run_dir, step, self.state, self.run.cfg.keep_checkpoints,
                        per_node=not self.run.shared_run_dir)

    def _keep_to_budget(self, step: int) -> None:
        """A --train_minutes budget at a log step: re-plan when one is due (see epochs_within_minutes), end
        training once the minutes are spent (never within the first epoch, which runs anyway). Every process
        reads the slowest one's clock, so all decide alike (a step's time is read at log steps anyway; the budget
        is overrun by fewer than --log_every steps)."""
        budget = self.state.extra.get("budget")
        if budget is None or not due(step, self.run.cfg.log_every):
            return
        spent = torch.tensor([self.state.train_seconds + self.meter.seconds], device=self.accelerator.device)
        spent = float(self.accelerator.gather(spent).max())
        if self._pace_from is None:  # this process's first log step
            self._pace_from = self._first_pace_window(step, spent, budget)
        window = self._pace_from
        if step != self.run.cfg.log_every and self._replan_due(step, spent, budget, window.train_seconds):
            self._replan(step, spent, budget, window)
        if self.state.epoch >= 1 and spent >= budget["minutes"] * 60:
            self._stop_for_time(step, spent, budget)

    def _first_pace_window(self, step: int, spent: float, budget: dict) -> PaceWindow:
        """Where a process's re-plans first read the pace from, at its first log step: a resumed run reads on from
        its last re-plan; one resumed before its first re-plan but past the first log step reads all its steps
        (less what counted as training before the first) until that re-plan, so that it re-plans where and as the
        uninterrupted run did; a fresh run reads from this step, leaving the loader's start-up and the first
        steps' warm-up out."""
        last = budget.get("replans", [])[-1:]
        if last:
            return PaceWindow(last[0]["at_step"], last[0]["train_seconds"], "the last re-plan")
        if step > self.run.cfg.log_every:
            return PaceWindow(0, budget.get("counted_before", 0.0), "the start of training")
        return PaceWindow(step, spent, "the first log step")

    @staticmethod
    def _replan_due(step: int, spent: float, budget: dict, read_from: float) -> bool:
        """The next re-plan is due: a share of the minutes is spent since `read_from` (the training seconds where
        the pace it would read begins: the previous re-plan, or the first log step), so that it never reads the
        pace of a few steps; or, for the first, that share of the plan is trained; and the last share has not
        begun (what is left is trained as planned, and the limit stops it should the steps slow down)."""
        if "replan_every" not in budget:  # a budget without re-plans (0, or chosen before they existed)
            return False
        share_seconds = replan_share_seconds(budget)
        if spent >= budget["minutes"] * 60 - share_seconds:
            return False
        return spent - read_from >= share_seconds or (not budget["replans"] and step >= budget["replan_at"])

    def _replan(self, step: int, spent: float, budget: dict, window: PaceWindow) -> None:
        """Plan the budget's iterations again from the pace of the training since `window`; recorded."""
        pace = pace_so_far(spent - window.train_seconds, step - window.step)
        planned = self.total_steps
        self.total_steps = iterations_within(budget["minutes"], spent, step, pace,
                                             at_least=max(self.steps_per_epoch, step),
                                             multiple_of=self.run.cfg.grad_accumulation)
        budget["steps"] = self.total_steps
        share = int(spent / replan_share_seconds(budget))
        budget["replans"].append({"at_step": step, "train_seconds": round(spent, 3), "share": share,
                                  "seconds_per_step": round(pace, 4), "steps_before": planned})
        self._pace_from = PaceWindow(step, spent, "the last re-plan")
        self._set_last_step()
        self.run.logger.update_config({"budget": budget})
        if self.bar is not None:
            self.bar.total = self.total_steps
            self.bar.refresh()
        plan = f"{self.total_steps} iterations ({self.total_steps / self.steps_per_epoch:.2f} epochs) instead of " \
            f"{planned}" if self.total_steps != planned else f"still {planned} iterations"
        self.run.say(f"\n[budget] re-planned at iteration {step} ({spent / 60:.2f} of {budget['minutes']:g} min): "
                     f"{pace:.4f} s per iteration over the {step - window.step} since {window.since} (timed before "
                     f"training: {budget['seconds_per_step']:.4f}), so {plan}")

    def _stop_for_time(self, step: int, spent: float, budget: dict) -> None:
        """End training at this step: the budget records where, so that --resume trains nothing more."""
        budget["stopped_at"] = step
        self.last_step = step
        self.run.logger.update_config({"budget": budget})
        pace = pace_so_far(spent - budget.get("counted_before", 0.0), step)
        planned_with = f"{budget['replans'][-1]['seconds_per_step']:.4f} of the last re-plan" \
            if budget.get("replans") else f"{budget['seconds_per_step']:.4f} timed"
        self.run.say(f"\n[budget] {budget['minutes']:g} min of training spent at iteration {step} of {self.total_steps}"
                     f" ({pace:.4f} s per iteration against the {planned_with}): "
                     "training ends here, before its schedule's end")

    def _stop_requested(self) -> bool:
        """SIGTERM seen by any process (every process must stop at the same step)."""
        if self.run.world == 1:
            return self.stop_requested[0]
        flag = torch.tensor(int(self.stop_requested[0]), device=self.accelerator.device)
        return int(self.accelerator.reduce(flag, reduction="sum")) > 0

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def finish(self) -> TrainerState:
        """After the last batch: the training time is logged, and once training is done (every step, or a time
        budget spent) the weight average becomes the exported model (stopped early by --max_steps, the raw
        weights stay so that --resume continues exactly; scores still use the average)."""
        self.close()
        self.run.logger.log({"time/train_minutes": self.state.train_seconds / 60}, self.state.step)
        if self.ema is not None and self.training_done:
            self.accelerator.unwrap_model(self.model).load_state_dict(self.ema.model.state_dict())
        return self.state

    @property
    def training_done(self) -> bool:
        """Every step trained, or a time budget ended training (not a --max_steps or SIGTERM stop)."""
        return self.state.step >= self.total_steps or \
            self.state.step == self.state.extra.get("budget", {}).get("stopped_at")

    def final_checkpoint(self):
        """The checkpoint of the last step: the one already saved at this step (its trainer state rewritten, so
        that what was set after the save, such as a classifier's temperature, is kept), or a new one."""
        final = self.run.run_dir / "checkpoints" / checkpoint_name(self.state.step)
        if (final / "trainer_state.json").is_file():
            if writes_checkpoints(self.accelerator, per_node=not self.run.shared_run_dir):
                self.state.write(final)
            return final
        self.save(self.state.step)
        return final
