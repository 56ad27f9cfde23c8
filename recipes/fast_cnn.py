"""A from-scratch classifier designed for time-to-accuracy on a laptop CPU.

What it changes from the study's CNN: a compact residual network (FastResNet); progressive
resizing (small images first, full size at the end); zoom and flip augmentation on the device;
SGD with Nesterov momentum on a one-cycle schedule; label smoothing; an exponential moving
average of the weights for evaluation; flip test-time augmentation; bf16 where the CPU has it.

    accelerate launch recipes/fast_cnn.py                           # the defaults (docs/results.md for timings)
    accelerate launch recipes/fast_cnn.py --epochs=24 --train_image_sizes=64,80,96   # longer, larger
    accelerate launch recipes/fast_cnn.py --ema_decay=0 --flip_tta=false             # ablations
    accelerate launch recipes/fast_cnn.py --model=resnet18_classifier                # any classifier of the table
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from toolkit.config import (
    check_fraction,
    check_non_negative,
    check_positive,
    chosen_keys,
    parse_kwargs,
    parse_sizes,
)
from toolkit.data.augment import STUDY_MEAN, STUDY_STD, normalize, random_flip, random_scale_translate, step_generator
from toolkit.data.classification import load_classification_data
from toolkit.data.loaders import make_loader
from toolkit.data.settings import ClassificationDataSettings
from toolkit.errors import ConfigError
from toolkit.models import CLASSIFIERS, build_model, check_model_spec
from toolkit.run import RunSettings, run_recipe, start_run
from toolkit.train.classifier import ClassifierEvaluation, finish_classifier_run
from toolkit.train.loop import TrainingLoop
from toolkit.train.schedule import one_cycle_lr, set_lr
from toolkit.train.state import TrainerState


@dataclass
class Config(ClassificationDataSettings, RunSettings):
    model: str = "FastResNet"  # any classifier of toolkit.models.CLASSIFIERS, trained with this recipe's schedule
    model_kwargs: str = ""  # its constructor arguments beyond num_classes, e.g. "width=8" (FastResNet: --widths)
    widths: str = "32,64,128,256"  # FastResNet: channels of the stem and of each of the three stages
    train_image_sizes: str = "64,96"  # training sizes, each for an equal share of the epochs, smallest first
    # evaluation (and checkpoint) size: zoom augmentation shows objects larger in training than whole images do,
    # so a test size above the last training size matches them
    image_size: int = 112  # evaluation size (see above)
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
    eval_every: int = 100  # iterations between validation passes (they feed the time-to-accuracy curve)


def model_arguments(cfg: Config) -> dict:
    """The model's constructor arguments but its number of classes, which come with the data."""
    own = {"widths": parse_sizes("widths", cfg.widths), "dropout": cfg.dropout} if cfg.model == "FastResNet" else {}
    return own | parse_kwargs("model_kwargs", cfg.model_kwargs)


def check_config(cfg: Config) -> None:
    """Every value in range, before any work: a study checks each of its runs' configs before training any."""
    check_positive(cfg, "epochs", "batch_size", "eval_batch_size", "lr")
    check_non_negative(cfg, "weight_decay")
    check_fraction(cfg, "warmup_fraction", "label_smoothing", "momentum", "dropout", "ema_decay")
    if not 0 < cfg.min_scale <= 1:
        raise ConfigError(f"--min_scale must lie in (0, 1], got {cfg.min_scale}")
    parse_sizes("train_image_sizes", cfg.train_image_sizes)
    if cfg.model not in CLASSIFIERS:
        raise ConfigError(f"--model={cfg.model!r} is not a classifier; choose from {', '.join(CLASSIFIERS)}")
    if "widths" in chosen_keys(cfg) and cfg.model != "FastResNet":
        raise ConfigError(f"--widths applies to --model=FastResNet only; give {cfg.model}'s own arguments with "
                          "--model_kwargs")
    check_model_spec({"name": cfg.model, "kwargs": model_arguments(cfg)})


def main(cfg: Config) -> dict:
    check_config(cfg)
    sizes, own = parse_sizes("train_image_sizes", cfg.train_image_sizes), model_arguments(cfg)
    run = start_run(cfg, "fast_cnn")
    with run.main_process_first():  # each size stored once: the last training size and evaluation read as stored
        data = load_classification_data(cfg, cfg.seed, max(sizes), cfg.cache_dir, cfg.num_workers, run.say)
        eval_data = data if cfg.image_size == max(sizes) else \
            load_classification_data(cfg, cfg.seed, cfg.image_size, cfg.cache_dir, cfg.num_workers, run.say)
    if not np.array_equal(eval_data.val_indices, data.val_indices):
        raise RuntimeError("the validation split differs between the two stored sizes: please report this")
    run.say(f"[data] {data.describe()}")

    spec = {"name": cfg.model, "kwargs": {"num_classes": len(data.classes), **own}}
    model = build_model(spec).to(memory_format=torch.channels_last)  # NHWC for the convolutions
    optimizer = torch.optim.SGD(model.parameters(), lr=run.scale_lr(cfg.lr), momentum=cfg.momentum, nesterov=True,
                                weight_decay=cfg.weight_decay)
    model, optimizer = run.prepare(model, optimizer, batch_size=cfg.batch_size, image_size=min(sizes))
    accelerator, device = run.accelerator, run.device
    train_loaders = {size: make_loader(data.train_set, data.train_indices, cfg.batch_size, train=True,
                                       image_size=size, device=device, seed=cfg.seed, num_processes=run.world,
                                       num_workers=cfg.num_workers) for size in sorted(set(sizes))}

    def loader_for_epoch(epoch: int):  # equal shares of the epochs per size, smallest first
        return train_loaders[sizes[min(len(sizes) - 1, epoch * len(sizes) // cfg.epochs)]]

    preprocessing = {"image_size": cfg.image_size, "mean": STUDY_MEAN, "std": STUDY_STD}
    evaluation = ClassifierEvaluation(run, data, preprocessing, cfg.eval_batch_size, cfg.flip_tta, eval_data)
    state = TrainerState("fast_cnn", spec, preprocessing, classes=data.classes, flip_tta=cfg.flip_tta,
                         split=data.split_record())
    loop = TrainingLoop(run, state, model, optimizer, evaluation.validate, cfg.eval_every, cfg.ema_decay)
    peak_lr = run.scale_lr(cfg.lr)

    model.train()
    for images, labels in loop.batches(loader_for_epoch, cfg.epochs):
        set_lr(optimizer, one_cycle_lr(*loop.schedule_at(loop.step - 1), peak_lr, cfg.warmup_fraction))
        generator = step_generator(device, cfg.seed, loop.step, run.rank)
        inputs = random_scale_translate(normalize(random_flip(images, generator)), generator, cfg.min_scale)
        with accelerator.accumulate(model):
            with accelerator.autocast():
                logits = model(inputs)  # (B, classes)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=cfg.label_smoothing)
            accelerator.backward(loss)
            optimizer.step()
        loop.end_step(loss, len(labels), logits, labels, image_size=images.shape[-1])
    return finish_classifier_run(loop, evaluation)


if __name__ == "__main__":
    run_recipe(main, Config)
