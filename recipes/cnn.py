"""The study's custom 12-conv CNN on the Intel scenes (STUDY.md, Part 1, model A).

    accelerate launch recipes/cnn.py                           # the study's settings, 10 epochs
    accelerate launch recipes/cnn.py --max_train_images=3000   # the study's tuning subset
    python recipes/cnn.py --data=path/to/folder --epochs=2     # any <class>/<image> folder
    accelerate launch recipes/cnn.py --train_minutes=10        # the epochs that 10 minutes hold here
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 recipes/cnn.py   # 2 CPU processes
    python recipes/cnn.py --resume --run_dir=runs/cnn-...      # continue a killed run
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from toolkit.config import check_fraction, check_non_negative, check_positive
from toolkit.data.augment import STUDY_MEAN, STUDY_STD, normalize, random_flip, step_generator
from toolkit.data.classification import load_classification_data
from toolkit.data.loaders import make_loader, stand_in_batch, stand_in_labels
from toolkit.data.settings import ClassificationDataSettings
from toolkit.models import build_model
from toolkit.run import RunSettings, run_recipe, start_run
from toolkit.train.classifier import ClassifierEvaluation, finish_classifier_run
from toolkit.train.loop import TrainingLoop
from toolkit.train.state import TrainerState


@dataclass
class Config(ClassificationDataSettings, RunSettings):
    width: int = 20  # n: conv k outputs k*n channels
    dropout: float = 0.5  # dropout in the head
    epochs: int = 10  # passes over the training images
    train_minutes: float = 0.0  # >0: instead of --epochs, the epochs that fit in these minutes here (measured
    # first); training also ends once these minutes are spent, should the steps run slower than timed
    batch_size: int = 120  # images per iteration, per process
    eval_batch_size: int = 250  # images per evaluation batch
    lr: float = 9e-4  # Adam learning rate
    weight_decay: float = 1e-4  # Adam weight decay (L2)


def check_config(cfg: Config) -> None:
    """Every value in range, before any work: a study checks each of its runs' configs before training any."""
    check_positive(cfg, "width", "epochs", "batch_size", "eval_batch_size", "lr")
    check_non_negative(cfg, "weight_decay", "train_minutes")
    check_fraction(cfg, "dropout")


def main(cfg: Config) -> dict:
    check_config(cfg)
    run = start_run(cfg, "cnn")
    with run.main_process_first():  # one process per machine writes the .beton files; the others reuse them
        data = load_classification_data(cfg, cfg.seed, cache_dir=cfg.cache_dir, num_workers=cfg.num_workers,
                                        log=run.say)
    run.say(f"[data] {data.describe()}")

    spec = {"name": "SceneCNN", "kwargs": {"num_classes": len(data.classes), "width": cfg.width,
                                           "image_size": cfg.image_size, "dropout": cfg.dropout}}
    model = build_model(spec).to(memory_format=torch.channels_last)  # NHWC: faster convolutions on CPU and GPU
    optimizer = torch.optim.Adam(model.parameters(), lr=run.scale_lr(cfg.lr), weight_decay=cfg.weight_decay)
    model, optimizer = run.prepare(model, optimizer, batch_size=cfg.batch_size, image_size=cfg.image_size)
    accelerator, device = run.accelerator, run.device
    train_loader = make_loader(data.train_set, data.train_indices, cfg.batch_size, train=True,
                               image_size=cfg.image_size, device=device, seed=cfg.seed, num_processes=run.world,
                               num_workers=cfg.num_workers)
    preprocessing = {"image_size": cfg.image_size, "mean": STUDY_MEAN, "std": STUDY_STD}
    evaluation = ClassifierEvaluation(run, data, preprocessing, cfg.eval_batch_size)
    state = TrainerState("cnn", spec, preprocessing, classes=data.classes, split=data.split_record())
    loop = TrainingLoop(run, state, model, optimizer, evaluation.validate, cfg.eval_every)

    def train_step(images: torch.Tensor, labels: torch.Tensor, step: int):
        images = random_flip(images, step_generator(device, cfg.seed, step, run.rank))
        with accelerator.accumulate(model):
            with accelerator.autocast():
                logits = model(normalize(images, STUDY_MEAN, STUDY_STD))  # (B, classes)
            loss = F.cross_entropy(logits.float(), labels)
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


if __name__ == "__main__":
    run_recipe(main, Config)
