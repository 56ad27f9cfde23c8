"""The study's custom 12-conv CNN on the Intel scenes (STUDY.md, Part 1, model A).

    accelerate launch recipes/cnn.py                           # the study's settings, 10 epochs
    accelerate launch recipes/cnn.py --max_train_images=3000   # the study's tuning subset
    python recipes/cnn.py --data=path/to/folder --epochs=2     # any <class>/<image> folder
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 recipes/cnn.py   # 2 CPU processes
    python recipes/cnn.py --resume --run_dir=runs/cnn-...      # continue a killed run
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from toolkit.config import check_non_negative, check_positive
from toolkit.data.augment import STUDY_MEAN, STUDY_STD, normalize, random_flip, step_generator
from toolkit.data.classification import load_classification_data
from toolkit.data.loaders import make_loader, shard_indices
from toolkit.models.cnn import SceneCNN
from toolkit.run import ClassificationDataSettings, RunSettings, run_recipe, start_run
from toolkit.train.checkpoint import load_checkpoint, save_checkpoint
from toolkit.train.classifier import finish_classifier_run, validate
from toolkit.train.loop import due, resumable_batches
from toolkit.train.meter import TrainingMeter


@dataclass
class Config(ClassificationDataSettings, RunSettings):
    width: int = 20  # n: conv k outputs k*n channels
    dropout: float = 0.5  # dropout in the head
    epochs: int = 10  # passes over the training images
    batch_size: int = 120  # images per iteration, per process
    eval_batch_size: int = 250  # images per evaluation batch
    lr: float = 9e-4  # Adam learning rate
    weight_decay: float = 1e-4  # Adam weight decay (L2)
    channels_last: bool = True  # NHWC memory: measured faster for convolutions on CPU and GPU


def main(cfg: Config) -> dict:
    check_positive(cfg, "width", "epochs", "batch_size", "eval_batch_size", "lr")
    check_non_negative(cfg, "weight_decay", "dropout")
    run = start_run(cfg, "cnn")
    accelerator, say = run.accelerator, run.say
    rank, world = accelerator.process_index, accelerator.num_processes
    with accelerator.main_process_first():  # the first process writes the .beton files; the others reuse them
        data = load_classification_data(cfg.data, cfg.train_split, cfg.test_split, cfg.val_fraction,
                                         cfg.holdout_fraction, cfg.seed, cfg.store_size or cfg.resolution,
                                         cfg.storage, cfg.cache_dir or None, cfg.drop_conflicting_duplicates,
                                         cfg.max_train_images, cfg.num_workers, log=say)
    say(f"[data] {data.describe()}")

    spec = {"name": "SceneCNN", "kwargs": {"num_classes": len(data.classes), "width": cfg.width,
                                           "image_size": cfg.resolution, "dropout": cfg.dropout}}
    model = SceneCNN(**spec["kwargs"])
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    device = accelerator.device
    train_loader = make_loader(data.train_set, data.train_indices, cfg.batch_size, train=True,
                               resolution=cfg.resolution, device=device, seed=cfg.seed,
                               distributed=world > 1, num_workers=cfg.num_workers)
    val_loader = make_loader(data.train_set, shard_indices(data.val_indices, rank, world), cfg.eval_batch_size,
                             train=False, resolution=cfg.resolution, device=device, num_workers=cfg.num_workers)
    preprocessing = {"resolution": cfg.resolution, "mean": STUDY_MEAN, "std": STUDY_STD}
    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "train_seconds": 0.0, "images_seen": 0, "model": spec["name"],
             "model_spec": spec, "classes": data.classes, "preprocessing": preprocessing, "recipe": "cnn"}
    if run.resume_from:
        state.update(load_checkpoint(accelerator, run.resume_from, {"model": "SceneCNN", "classes": data.classes}))
        say(f"[run] resumed from {run.resume_from} at iteration {state['step']}")
    total_steps = cfg.epochs * len(train_loader)
    last_step = min(total_steps, cfg.max_steps) if cfg.max_steps else total_steps
    meter = TrainingMeter(accelerator)

    model.train()
    tick = time.perf_counter()
    batches_to_train = resumable_batches(lambda epoch: train_loader, state, cfg.epochs, last_step)
    for epoch, batch, batches, (images, labels) in batches_to_train:
        step = state["step"]
        images = random_flip(images, step_generator(device, cfg.seed, step, rank))
        with accelerator.accumulate(model):
            with accelerator.autocast():
                logits = model(normalize(images, STUDY_MEAN, STUDY_STD))
            loss = F.cross_entropy(logits.float(), labels)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        meter.add(loss, labels.shape[0], time.perf_counter() - tick, logits, labels)

        evaluate_now = due(step, cfg.eval_every)
        checkpoint_now = due(step, cfg.checkpoint_every)
        if due(step, cfg.log_every) or evaluate_now or checkpoint_now or step == last_step:
            metrics = meter.flush(step)  # raises TrainingDiverged on a NaN/inf loss, before any save
            metrics.update(epoch=epoch + (batch + 1) / batches, lr=optimizer.param_groups[0]["lr"])
            state["train_seconds"] += metrics["seconds"]
            state["images_seen"] += metrics["images"]
            run.logger.log(metrics, step)
        if evaluate_now and step != last_step:
            validate(run, model, val_loader, data.classes, preprocessing, step, meter)
        if checkpoint_now and step != last_step and accelerator.sync_gradients:
            save_checkpoint(accelerator, run.run_dir, step, state, cfg.keep_checkpoints)
        tick = time.perf_counter()

    return finish_classifier_run(run, model, data, val_loader, state, cfg.eval_batch_size, cfg.num_workers,
                                 cfg.keep_checkpoints, meter)


if __name__ == "__main__":
    run_recipe(main, Config)
