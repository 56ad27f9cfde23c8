"""A from-scratch classifier designed for time-to-accuracy on a laptop CPU.

What it changes from the study's CNN: a compact residual network (FastResNet); progressive
resizing (small images first, full size at the end); zoom and flip augmentation on the device;
SGD with Nesterov momentum on a one-cycle schedule; label smoothing; an exponential moving
average of the weights for evaluation; flip test-time augmentation; bf16 where the CPU has it.

    accelerate launch recipes/fast_cnn.py                           # the defaults: ~13 minutes of training on 2 cores
    accelerate launch recipes/fast_cnn.py --epochs=24 --resolutions=64,80,96   # longer, larger
    accelerate launch recipes/fast_cnn.py --ema_decay=0 --flip_tta=false       # ablations
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from toolkit.config import check_fraction, check_non_negative, check_positive
from toolkit.data.augment import STUDY_MEAN, STUDY_STD, normalize, random_flip, random_scale_translate, step_generator
from toolkit.data.classification import load_classification_data
from toolkit.data.loaders import make_loader, shard_indices
from toolkit.errors import ConfigError
from toolkit.models.fast_resnet import FastResNet
from toolkit.run import ClassificationDataSettings, RunSettings, run_recipe, start_run
from toolkit.train.checkpoint import load_checkpoint, save_checkpoint
from toolkit.train.classifier import finish_classifier_run, validate
from toolkit.train.ema import ModelEMA
from toolkit.train.loop import due, resumable_batches
from toolkit.train.meter import TrainingMeter
from toolkit.train.schedule import one_cycle_lr, set_lr


@dataclass
class Config(ClassificationDataSettings, RunSettings):
    widths: str = "32,64,128,256"  # channels of the stem and of each of the three stages
    resolutions: str = "64,96"  # training sizes, each for an equal share of the epochs, smallest first
    eval_resolution: int = 112  # evaluation size (0 = the last training size): zoom augmentation shows objects
    #                             larger in training than whole images do, so a larger test size matches them
    epochs: int = 14  # passes over the training images
    batch_size: int = 64  # images per iteration, per process
    eval_batch_size: int = 256  # images per evaluation batch
    lr: float = 0.1  # peak SGD learning rate of the one-cycle schedule
    warmup_fraction: float = 0.2  # share of training spent warming the learning rate up
    momentum: float = 0.9  # SGD Nesterov momentum
    weight_decay: float = 5e-4  # SGD weight decay
    label_smoothing: float = 0.1  # cross-entropy label smoothing
    min_scale: float = 0.7  # zoom augmentation: random windows of min_scale..1 of each side (1 = off)
    dropout: float = 0.1  # dropout before the classifier
    ema_decay: float = 0.99  # weight averaging for evaluation (0 = evaluate the raw weights)
    flip_tta: bool = True  # evaluate each image and its mirror, averaging the probabilities
    channels_last: bool = True  # NHWC memory for the convolutions
    eval_every: int = 100  # iterations between validation passes (they feed the time-to-accuracy curve)


def main(cfg: Config) -> dict:
    check_positive(cfg, "epochs", "batch_size", "eval_batch_size", "lr")
    check_non_negative(cfg, "weight_decay", "momentum", "dropout", "ema_decay")
    check_fraction(cfg, "warmup_fraction", "label_smoothing")
    if not 0 < cfg.min_scale <= 1:
        raise ConfigError(f"--min_scale must lie in (0, 1], got {cfg.min_scale}")
    try:
        widths = tuple(int(w) for w in cfg.widths.split(","))
        resolutions = [int(r) for r in cfg.resolutions.split(",")]
    except ValueError:
        raise ConfigError(f"--widths and --resolutions take comma-separated whole numbers, got "
                          f"{cfg.widths!r} and {cfg.resolutions!r}") from None
    if min(resolutions) < 8 or cfg.eval_resolution < 0 or 0 < cfg.eval_resolution < 8:
        raise ConfigError(f"--resolutions and --eval_resolution take sizes of at least 8 pixels (eval_resolution 0: "
                          f"the last training size), got {cfg.resolutions!r} and {cfg.eval_resolution}")
    cfg.resolution = cfg.eval_resolution or resolutions[-1]  # the size every evaluation and the checkpoint use
    run = start_run(cfg, "fast_cnn")
    accelerator, say = run.accelerator, run.say
    rank, world = accelerator.process_index, accelerator.num_processes
    train_store_size = cfg.store_size or max(resolutions)

    def stored_at(size: int):
        return load_classification_data(cfg.data, cfg.train_split, cfg.test_split, cfg.val_fraction,
                                        cfg.holdout_fraction, cfg.seed, size, cfg.storage, cfg.cache_dir or None,
                                        cfg.drop_conflicting_duplicates, cfg.max_train_images, cfg.num_workers,
                                        log=say)

    with accelerator.main_process_first():  # stored once at the largest training size, resized on load for smaller
        data = stored_at(train_store_size)
        # evaluated at another size: stored once more at that size, so that the last training size and the
        # evaluation both read their pixels as stored, with no resize per image on load
        eval_data = data if cfg.resolution == train_store_size else stored_at(cfg.resolution)
    if not (np.array_equal(eval_data.val_indices, data.val_indices)
            and np.array_equal(eval_data.test_indices, data.test_indices)):
        raise RuntimeError("the validation or test split differs between the two stored sizes: please report this")
    say(f"[data] {data.describe()}")

    spec = {"name": "FastResNet", "kwargs": {"num_classes": len(data.classes), "widths": list(widths),
                                             "dropout": cfg.dropout}}
    model = FastResNet(**spec["kwargs"])
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                                weight_decay=cfg.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    ema = ModelEMA(accelerator.unwrap_model(model), cfg.ema_decay) if cfg.ema_decay else None
    if ema is not None:
        accelerator.register_for_checkpointing(ema)  # the average is part of the state a resume needs
    device = accelerator.device
    train_loaders = {size: make_loader(data.train_set, data.train_indices, cfg.batch_size, train=True,
                                       resolution=size, device=device, seed=cfg.seed, distributed=world > 1,
                                       num_workers=cfg.num_workers) for size in sorted(set(resolutions))}

    def loader_for_epoch(epoch: int):  # equal shares of the epochs per size, smallest first
        return train_loaders[resolutions[min(len(resolutions) - 1, epoch * len(resolutions) // cfg.epochs)]]

    val_loader = make_loader(eval_data.train_set, shard_indices(eval_data.val_indices, rank, world),
                             cfg.eval_batch_size, train=False, resolution=cfg.resolution, device=device,
                             num_workers=cfg.num_workers)
    preprocessing = {"resolution": cfg.resolution, "mean": STUDY_MEAN, "std": STUDY_STD}
    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "train_seconds": 0.0, "images_seen": 0, "model": spec["name"],
             "model_spec": spec, "classes": data.classes, "preprocessing": preprocessing, "recipe": "fast_cnn",
             "flip_tta": cfg.flip_tta}
    if run.resume_from:
        state.update(load_checkpoint(accelerator, run.resume_from, {"model": spec["name"], "classes": data.classes}))
        say(f"[run] resumed from {run.resume_from} at iteration {state['step']}")
    total_steps = cfg.epochs * len(train_loaders[resolutions[0]])
    last_step = min(total_steps, cfg.max_steps) if cfg.max_steps else total_steps
    meter = TrainingMeter(accelerator)
    evaluated = ema.model if ema is not None else model

    model.train()
    tick = time.perf_counter()
    for epoch, batch, batches, (images, labels) in resumable_batches(loader_for_epoch, state, cfg.epochs, last_step):
        step = state["step"]
        set_lr(optimizer, one_cycle_lr(step - 1, total_steps, cfg.lr, cfg.warmup_fraction))
        generator = step_generator(device, cfg.seed, step, rank)
        inputs = random_scale_translate(normalize(random_flip(images, generator)), generator, cfg.min_scale)
        with accelerator.accumulate(model):
            with accelerator.autocast():
                logits = model(inputs)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=cfg.label_smoothing)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if ema is not None and accelerator.sync_gradients:
            ema.update(accelerator.unwrap_model(model))
        meter.add(loss, labels.shape[0], time.perf_counter() - tick, logits, labels)

        evaluate_now = due(step, cfg.eval_every)
        checkpoint_now = due(step, cfg.checkpoint_every)
        if due(step, cfg.log_every) or evaluate_now or checkpoint_now or step == last_step:
            metrics = meter.flush(step)
            metrics.update(epoch=epoch + (batch + 1) / batches, lr=optimizer.param_groups[0]["lr"],
                           resolution=images.shape[-1])
            state["train_seconds"] += metrics["seconds"]
            state["images_seen"] += metrics["images"]
            run.logger.log(metrics, step)
        if evaluate_now and step != last_step:  # time-to-accuracy: validation against training minutes so far
            run.logger.log({"time/train_minutes": state["train_seconds"] / 60}, step)
            validate(run, evaluated, val_loader, data.classes, preprocessing, step, meter, cfg.flip_tta)
        if checkpoint_now and step != last_step and accelerator.sync_gradients:
            save_checkpoint(accelerator, run.run_dir, step, state, cfg.keep_checkpoints)
        tick = time.perf_counter()

    run.logger.log({"time/train_minutes": state["train_seconds"] / 60}, state["step"])
    if ema is not None and state["step"] >= total_steps:  # finished: the average becomes the exported model
        accelerator.unwrap_model(model).load_state_dict(ema.model.state_dict())
    # stopped early (--max_steps): keep the raw weights so that --resume continues exactly; score the average
    return finish_classifier_run(run, model, eval_data, val_loader, state, cfg.eval_batch_size, cfg.num_workers,
                                 cfg.keep_checkpoints, meter, flip_tta=cfg.flip_tta, eval_model=evaluated)


if __name__ == "__main__":
    run_recipe(main, Config)
