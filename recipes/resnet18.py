"""The study's ImageNet-pretrained ResNet18 on the Intel scenes (STUDY.md, Part 1, model B).

The study meant to freeze the backbone, but a typo left every layer trainable: what ran, and
what this recipe does by default, is full fine-tuning with Adam at lr 1e-5.

    accelerate launch recipes/resnet18.py                         # study settings, ImageNet weights
    accelerate launch recipes/resnet18.py --weights=resnet18.pth  # offline: a local state dict
    accelerate launch recipes/resnet18.py --weights=none --lr=1e-3  # from scratch
    accelerate launch recipes/resnet18.py --freeze_backbone       # what the study meant: train the head only
    accelerate launch recipes/resnet18.py --lr=1e-4 --label_smoothing=0.1   # a fine-tuning of our own
    accelerate launch recipes/resnet18.py --train_minutes=20      # the epochs that 20 minutes hold here
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from toolkit.config import check_fraction, check_non_negative, check_positive
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
from toolkit.data.loaders import make_loader, stand_in_batch, stand_in_labels
from toolkit.data.settings import ClassificationDataSettings
from toolkit.models import build_model
from toolkit.models.resnet import freeze_backbone
from toolkit.models.weights import check_weights_option, load_resnet18_weights
from toolkit.run import RunSettings, run_recipe, start_run
from toolkit.train.classifier import ClassifierEvaluation, finish_classifier_run
from toolkit.train.loop import TrainingLoop
from toolkit.train.state import TrainerState


@dataclass
class Config(ClassificationDataSettings, RunSettings):
    weights: str = "imagenet"  # 'imagenet' (torchvision download), 'none', 'auto' (imagenet else none), a file
    freeze_backbone: bool = False  # train only the new head (the study's intent; not what it ran)
    normalization: Literal["study", "imagenet"] = "study"  # study: mean/std 0.5, as it ran; imagenet: the weights'
    epochs: int = 4  # passes over the training images
    train_minutes: float = 0.0  # >0: instead of --epochs, the epochs that fit in these minutes here (measured
    # first); training also ends once these minutes are spent, should the steps run slower than timed
    batch_size: int = 50  # images per iteration, per process
    eval_batch_size: int = 250  # images per evaluation batch
    lr: float = 1e-5  # Adam learning rate
    weight_decay: float = 1e-2  # Adam weight decay (L2)
    label_smoothing: float = 0.0  # cross-entropy label smoothing (0: the study's plain cross-entropy)


def check_config(cfg: Config) -> None:
    """Every value in range, before any work: a study checks each of its runs' configs before training any."""
    check_positive(cfg, "epochs", "batch_size", "eval_batch_size", "lr")
    check_non_negative(cfg, "weight_decay", "train_minutes")
    check_fraction(cfg, "label_smoothing")
    check_weights_option(cfg.weights, ("imagenet", "none", "auto"))


def main(cfg: Config) -> dict:
    check_config(cfg)
    run = start_run(cfg, "resnet18")
    with run.main_process_first():  # one process per machine writes the .beton files; the others reuse them
        data = load_classification_data(cfg, cfg.seed, cache_dir=cfg.cache_dir, num_workers=cfg.num_workers,
                                        log=run.say)
    run.say(f"[data] {data.describe()}")

    spec = {"name": "resnet18_classifier", "kwargs": {"num_classes": len(data.classes)}}
    model = build_model(spec)
    # a resumed run gets its weights from the checkpoint
    weights = "from checkpoint" if run.resume_from else load_resnet18_weights(model, cfg.weights)
    run.say(f"[model] ResNet18 weights: {weights}")
    if cfg.freeze_backbone:
        run.say(f"[model] froze {freeze_backbone(model)} backbone tensors; training the head only")
    mean, std = (STUDY_MEAN, STUDY_STD) if cfg.normalization == "study" else (IMAGENET_MEAN, IMAGENET_STD)
    preprocessing = {"image_size": cfg.image_size, "mean": mean, "std": std}
    model = model.to(memory_format=torch.channels_last)  # NHWC: faster convolutions on CPU and GPU
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=run.scale_lr(cfg.lr), weight_decay=cfg.weight_decay)
    model, optimizer = run.prepare(model, optimizer, batch_size=cfg.batch_size, image_size=cfg.image_size)
    accelerator, device = run.accelerator, run.device
    train_loader = make_loader(data.train_set, data.train_indices, cfg.batch_size, train=True,
                               image_size=cfg.image_size, device=device, seed=cfg.seed, num_processes=run.world,
                               num_workers=cfg.num_workers)
    evaluation = ClassifierEvaluation(run, data, preprocessing, cfg.eval_batch_size)
    state = TrainerState("resnet18", spec, preprocessing, classes=data.classes, weights=weights,
                         split=data.split_record())
    loop = TrainingLoop(run, state, model, optimizer, evaluation.validate, cfg.eval_every)

    def train_step(images: torch.Tensor, labels: torch.Tensor, step: int):
        if cfg.freeze_backbone:  # again after every validation pass, which switches the model back to training
            keep_frozen_batchnorm_fixed(model)
        images = random_flip(images, step_generator(device, cfg.seed, step, run.rank))
        with accelerator.accumulate(model):
            with accelerator.autocast():
                logits = model(normalize(images, mean, std))  # (B, classes)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=cfg.label_smoothing)
            accelerator.backward(loss)
            optimizer.step()
        return loss, logits

    model.train()
    epochs = cfg.epochs
    if cfg.train_minutes:  # as many epochs as fit on this machine: timed on stand-in images, then undone
        stand_in = stand_in_batch(cfg.batch_size, cfg.image_size, cfg.seed, device)
        stand_in_classes = stand_in_labels(cfg.batch_size, len(data.classes), device)
        epochs = loop.epochs_within_minutes(cfg.train_minutes, len(train_loader),
                                            lambda: train_step(stand_in, stand_in_classes, 0)[0])
    for images, labels in loop.batches(lambda epoch: train_loader, epochs):
        loss, logits = train_step(images, labels, loop.step)
        loop.end_step(loss, len(labels), logits, labels)
    return finish_classifier_run(loop, evaluation)


def keep_frozen_batchnorm_fixed(model) -> None:
    """A frozen backbone is a fixed feature extractor: its BatchNorm layers normalise with their ImageNet
    statistics (eval mode) instead of each batch's, and never update them; the head trains as usual."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d) and not any(p.requires_grad for p in module.parameters()):
            module.eval()


if __name__ == "__main__":
    run_recipe(main, Config)
