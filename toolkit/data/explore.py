"""The study's data exploration: images per class per split, an example per class, split balance."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toolkit.data.classification import load_classification_data
from toolkit.data.folders import INTEL_SPLITS, find_split, scan_labeled_folder, scan_unlabeled_folder
from toolkit.data.images import UnreadableImage, load_rgb
from toolkit.data.settings import ClassificationDataSettings
from toolkit.errors import DataError
from toolkit.plots import image_grid, plot_grouped_bars
from toolkit.runs import write_json


def explore_dataset(root: Path | str, out_dir: Path | str, val_fraction: float = 0.1, holdout_fraction: float = 0.1,
                    seed: int = 0, test_split: str = "seg_test", log=print) -> dict:
    """Write class_counts.png, examples.png, split_balance.png and exploration.json to out_dir.

    The train/validation/held-out balance comes from `load_classification_data`, the function the
    recipes call, with the same seeds: it shows exactly the split a run with this seed trains on.
    """
    root, out_dir = Path(root), Path(out_dir)
    train_folder = find_split(root, "seg_train")
    if train_folder is None:
        raise DataError(f"no training split found under {root} (expected seg_train/<class>/ or <class>/ folders)")
    train = scan_labeled_folder(train_folder)
    counts = {"seg_train": train.counts()}
    for split in INTEL_SPLITS[1:]:
        folder = find_split(root, split)
        if folder is None:
            continue
        if split == "seg_pred":
            counts[split] = {"(unlabeled)": len(scan_unlabeled_folder(folder))}
        else:
            counts[split] = scan_labeled_folder(folder, classes=train.classes).counts()
    for split, per_class in counts.items():
        log(f"{split}: {sum(per_class.values())} images | " + ", ".join(f"{k} {v}" for k, v in per_class.items()))

    labeled = {split: c for split, c in counts.items() if split != "seg_pred"}
    figures = {"class_counts": plot_grouped_bars(
        {split: [c.get(name, 0) for name in train.classes] for split, c in labeled.items()}, train.classes,
        out_dir / "class_counts.png", "images", title="images per class")}

    examples, captions = [], []
    for label, name in enumerate(train.classes):
        for index in np.flatnonzero(np.asarray(train.labels) == label):
            try:
                examples.append(load_rgb(train.files[index]))
                captions.append(f"{name}\n{train.files[index].name}")
                break
            except UnreadableImage:
                continue
    figures["examples"] = image_grid(examples, captions, out_dir / "examples.png", columns=len(examples) or 1,
                                     title="one example per class", cell=2.2)

    settings = ClassificationDataSettings(data=str(root), test_split=test_split, val_fraction=val_fraction,
                                          holdout_fraction=holdout_fraction)
    data = load_classification_data(settings, seed, log=log)
    parts = {"train": (data.train_set, data.train_indices), "validation": (data.train_set, data.val_indices)}
    if data.test_name == "holdout":
        parts["held-out test"] = (data.test_set, data.test_indices)
    balance = {part: data.counts(stored, indices) for part, (stored, indices) in parts.items()}
    shares = {part: [n / max(sum(c.values()), 1) for n in c.values()] for part, c in balance.items()}
    figures["split_balance"] = plot_grouped_bars(shares, data.classes, out_dir / "split_balance.png",
                                                 "share of the split", title=f"class balance per split (seed {seed})")
    for part, per_class in balance.items():
        log(f"{part}: {sum(per_class.values())} images | " + ", ".join(f"{k} {v}" for k, v in per_class.items()))
    report = {"root": str(root), "classes": train.classes, "counts": counts, "split_balance": balance,
              "figures": {k: str(v) for k, v in figures.items()}}
    write_json(out_dir / "exploration.json", report)
    return report
