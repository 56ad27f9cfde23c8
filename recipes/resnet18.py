"""The study's ImageNet-pretrained ResNet18 on the Intel scenes (STUDY.md, Part 1, model B).

The study meant to freeze the backbone, but a typo left every layer trainable: what ran, and
what this recipe does by default, is full fine-tuning with Adam at lr 1e-5.

    accelerate launch recipes/resnet18.py                         # study settings, ImageNet weights
    accelerate launch recipes/resnet18.py --weights=resnet18.pth  # offline: a local state dict
    accelerate launch recipes/resnet18.py --weights=none --lr=1e-3  # from scratch
    accelerate launch recipes/resnet18.py --freeze_backbone       # what the study meant: train the head only
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from toolkit.config import check_non_negative, check_positive
from toolkit.data.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    STUDY_MEAN,
    STUDY_STD,
    normalize,
    random_flip,
    step_generator,
)
from toolkit.data.classification import load_classification_data
from toolkit.data.loaders import make_loader, shard_indices
from toolkit.models.resnet import freeze_backbone, resnet18_classifier
from toolkit.models.weights import load_resnet18_weights
from toolkit.run import ClassificationDataSettings, RunSettings, run_recipe, start_run
from toolkit.train.checkpoint import load_checkpoint, save_checkpoint
from toolkit.train.classifier import finish_classifier_run, validate
from toolkit.train.loop import due, resumable_batches
from toolkit.train.meter import TrainingMeter


@dataclass
class Config(ClassificationDataSettings, RunSettings):
    weights: str = "imagenet"  # 'imagenet' (torchvision download), 'none', 'auto' (imagenet else none), a file
    freeze_backbone: bool = False  # train only the new head (the study's intent; not what it ran)
    normalization: Literal["study", "imagenet"] = "study"  # study: mean/std 0.5, as it ran; imagenet: the weights'
    epochs: int = 4  # passes over the training images
    batch_size: int = 50  # images per iteration, per process
    eval_batch_size: int = 250  # images per evaluation batch
    lr: float = 1e-5  # Adam learning rate
    weight_decay: float = 1e-2  # Adam weight decay (L2)
    channels_last: bool = True  # NHWC memory: measured faster for convolutions on CPU and GPU


def main(cfg: Config) -> dict:
    check_positive(cfg, "epochs", "batch_size", "eval_batch_size", "lr")
    check_non_negative(cfg, "weight_decay")
    run = start_run(cfg, "resnet18")
    accelerator, say = run.accelerator, run.say
    rank, world = accelerator.process_index, accelerator.num_processes
    with accelerator.main_process_first():  # the first process writes the .beton files; the others reuse them
        data = load_classification_data(cfg.data, cfg.train_split, cfg.test_split, cfg.val_fraction,
                                         cfg.holdout_fraction, cfg.seed, cfg.store_size or cfg.resolution,
                                         cfg.storage, cfg.cache_dir or None, cfg.drop_conflicting_duplicates,
                                         cfg.max_train_images, cfg.num_workers, log=say)
    say(f"[data] {data.describe()}")

    spec = {"name": "resnet18_classifier", "kwargs": {"num_classes": len(data.classes)}}
    model = resnet18_classifier(**spec["kwargs"])
    weights_used = "from checkpoint"
    if not run.resume_from:  # a resumed run gets its weights from the checkpoint
        weights_used = load_resnet18_weights(model, cfg.weights)
        say(f"[model] ResNet18 weights: {weights_used}")
    if cfg.freeze_backbone:
        say(f"[model] froze {freeze_backbone(model)} backbone tensors; training the head only")
    mean, std = (STUDY_MEAN, STUDY_STD) if cfg.normalization == "study" else (IMAGENET_MEAN, IMAGENET_STD)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    device = accelerator.device
    train_loader = make_loader(data.train_set, data.train_indices, cfg.batch_size, train=True,
                               resolution=cfg.resolution, device=device, seed=cfg.seed,
                               distributed=world > 1, num_workers=cfg.num_workers)
    val_loader = make_loader(data.train_set, shard_indices(data.val_indices, rank, world), cfg.eval_batch_size,
                             train=False, resolution=cfg.resolution, device=device, num_workers=cfg.num_workers)
    preprocessing = {"resolution": cfg.resolution, "mean": mean, "std": std}
    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "train_seconds": 0.0, "images_seen": 0, "model": spec["name"],
             "model_spec": spec, "classes": data.classes, "preprocessing": preprocessing, "recipe": "resnet18",
             "weights": weights_used}
    if run.resume_from:
        state.update(load_checkpoint(accelerator, run.resume_from, {"model": spec["name"], "classes": data.classes}))
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
                logits = model(normalize(images, mean, std))
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
