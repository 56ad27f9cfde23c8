"""Figures written as PNG files (matplotlib, no display needed). Each function takes data and a path.

matplotlib is imported by the first figure, not with this module: every training process imports the plots, most
write none until training ends (and the import is 0.25-0.8 s of each process's start on these CPUs)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np


@functools.cache
def _pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display), imported once, when first needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> Path:
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_classifier_curves(records: list[dict], path: Path, title: str = "") -> Path:
    """Training loss per iteration (left); running train and validation accuracy (right)."""
    plt = _pyplot()
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(11, 4))
    losses = [(r["step"], r["train/loss"]) for r in records if r.get("train/loss") is not None]
    if losses:
        loss_axis.plot(*zip(*losses), lw=0.8, label="train (per iteration)")
    val_losses = [(r["step"], r["val/loss"]) for r in records if r.get("val/loss") is not None]
    if val_losses:
        loss_axis.plot(*zip(*val_losses), "o-", ms=3, label="validation")
    loss_axis.set(xlabel="iteration", ylabel="cross-entropy", title="loss")
    loss_axis.legend()
    for key, label in (("train/accuracy_running", "train (running, train mode)"), ("val/accuracy", "validation")):
        points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
        if points:
            accuracy_axis.plot(*zip(*points), "o-", ms=3, label=label)
    accuracy_axis.set(xlabel="iteration", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    accuracy_axis.legend()
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def plot_confusion(confusion, classes: list[str], path: Path, title: str = "") -> Path:
    """Row-normalised confusion matrix with the raw counts written in each cell."""
    plt = _pyplot()
    confusion = np.asarray(confusion)
    shares = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    figure, axis = plt.subplots(figsize=(1.1 * len(classes) + 2, 1.0 * len(classes) + 1.5))
    axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for row in range(len(classes)):
        for column in range(len(classes)):
            axis.text(column, row, str(confusion[row, column]), ha="center", va="center",
                      color="white" if shares[row, column] > 0.5 else "black", fontsize=8)
    axis.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    axis.set_yticks(range(len(classes)), classes)
    axis.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    return _save(figure, path)


def plot_grouped_bars(values: dict[str, list[float]], categories: list[str], path: Path, ylabel: str,
                      title: str = "", ylim=None) -> Path:
    """One group of bars per category, one bar per series (e.g. per-class accuracy per model)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(max(6, 1.2 * len(categories) + 2), 4))
    width = 0.8 / max(len(values), 1)
    for position, (series, numbers) in enumerate(values.items()):
        offsets = np.arange(len(categories)) + (position - (len(values) - 1) / 2) * width
        bars = axis.bar(offsets, numbers, width, label=series)
        axis.bar_label(bars, fmt="%.2f" if max(numbers, default=0) <= 1 else "%d", fontsize=7)
    axis.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
    axis.set(ylabel=ylabel, title=title)
    if ylim:
        axis.set_ylim(*ylim)
    if len(values) > 1:
        axis.legend()
    return _save(figure, path)


def image_grid(images: list[np.ndarray], titles: list[str], path: Path, columns: int = 6,
               title: str = "", cell: float = 1.9) -> Path:
    """Images (H, W, 3) uint8 in a grid, each with a title line (e.g. 'sea -> glacier 0.81')."""
    plt = _pyplot()
    rows = max(1, int(np.ceil(len(images) / columns)))
    figure, axes = plt.subplots(rows, columns, figsize=(cell * columns, cell * rows + 0.4), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, caption in zip(axes.flat, images, titles):
        axis.imshow(image)
        axis.set_title(caption, fontsize=7)
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def plot_lines(series: dict[str, list[tuple[float, float]]], path: Path, xlabel: str, ylabel: str,
               title: str = "", logx: bool = False, marker: str = "") -> Path:
    """Named (x, y) series on one axis."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4))
    for name, points in series.items():
        if points:
            axis.plot(*zip(*points), marker or "-", label=name, ms=4)
    axis.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if logx:
        axis.set_xscale("log")
    axis.legend()
    axis.grid(alpha=0.3)
    return _save(figure, path)


def plot_image_rows(rows: dict[str, list[np.ndarray]], path: Path, title: str = "", cell: float = 1.8) -> Path:
    """A labelled row per entry (e.g. clean / noisy / each model), images (H, W, 3) uint8 side by side."""
    plt = _pyplot()
    columns = max(len(images) for images in rows.values())
    figure, axes = plt.subplots(len(rows), columns, figsize=(cell * columns + 1.2, cell * len(rows) + 0.5),
                                squeeze=False)
    for row, (label, images) in enumerate(rows.items()):
        for column in range(columns):
            axis = axes[row, column]
            axis.set_xticks([])
            axis.set_yticks([])
            for spine in axis.spines.values():
                spine.set_visible(False)
            if column < len(images):
                axis.imshow(images[column])
        axes[row, 0].set_ylabel(label, fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    return _save(figure, path)


def plot_reliability(table: dict, ece: float, path: Path, title: str = "reliability") -> Path:
    """Reliability diagram: accuracy against confidence per bin, each bar labelled with its number of images (a bin
    of one image reads 0 or 1), with the diagonal of perfect calibration."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5, 5))
    centers = [(lo + hi) / 2 for lo, hi in zip(table["lower"], table["upper"])]
    width = table["upper"][0] - table["lower"][0]
    accuracy = [a if a is not None and a == a else 0 for a in table["accuracy"]]  # empty bins (NaN; null in JSON): 0
    axis.bar(centers, accuracy, width=width * 0.95, edgecolor="black", label="accuracy in bin")
    for center, height, count in zip(centers, accuracy, table["count"]):  # how many images each bar stands on
        if count:
            axis.annotate(str(count), (center, height), xytext=(0, 2), textcoords="offset points", ha="center",
                          va="bottom", fontsize=7, rotation=90 if count >= 1000 else 0)
    axis.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    axis.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.12), yticks=[0, 0.2, 0.4, 0.6, 0.8, 1],
             title=f"{title} (ECE {ece:.3f})\n")
    axis.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8, frameon=False)
    axis.text(0.01, 1.10, "images per bin on the bars", fontsize=7, color="gray", va="top")
    return _save(figure, path)


def plot_interval_bars(intervals: dict[str, dict], path: Path, ylabel: str, title: str = "",
                       reference: dict[str, float] | None = None, ylim=None) -> Path:
    """One bar per name at its mean, with the interval [low, high] as an error bar and each seed as a dot;
    `reference` values (e.g. the study's numbers) drawn as horizontal marks."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(max(5.0, 1.3 * len(intervals) + 2), 4))
    names = list(intervals)
    means = [intervals[n]["mean"] for n in names]
    errors = [[m - intervals[n]["low"] for n, m in zip(names, means)], [intervals[n]["high"] - m for n, m in
                                                                         zip(names, means)]]
    axis.bar(names, means, yerr=errors, capsize=6, color="#8fb3d9", edgecolor="#335", label="mean, 95% interval")
    for position, name in enumerate(names):
        values = intervals[name]["values"]
        axis.plot([position] * len(values), values, "k.", ms=6, label="one seed" if position == 0 else None)
    for label, value in (reference or {}).items():
        axis.axhline(value, ls="--", lw=1, color="#c44")
        axis.annotate(label, (len(names) - 0.5, value), ha="right", va="bottom", fontsize=8, color="#c44")
    axis.set(ylabel=ylabel, title=title)
    if ylim:
        axis.set_ylim(*ylim)
    axis.legend(fontsize=8, loc="lower right")
    return _save(figure, path)


def plot_bands(curves: dict[str, list[list[tuple[float, float]]]], path: Path, xlabel: str, ylabel: str,
               title: str = "") -> Path:
    """Per name, several runs' curves (x, y) drawn as their mean with a band from the lowest to the highest
    run at each x (runs of one recipe share their x values: the same evaluation steps)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4))
    for name, runs in curves.items():
        runs = [r for r in runs if r]
        if not runs:
            continue
        xs = sorted(set.intersection(*[{x for x, _ in r} for r in runs]))
        table = np.array([[dict(r)[x] for x in xs] for r in runs])  # (runs, points)
        line, = axis.plot(xs, table.mean(0), "o-", ms=3, label=f"{name} (mean of {len(runs)})")
        if len(runs) > 1:
            axis.fill_between(xs, table.min(0), table.max(0), alpha=0.2, color=line.get_color())
    axis.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=8)
    else:  # no run logged a point yet (e.g. stopped before its first validation)
        axis.text(0.5, 0.5, "no validation points yet", ha="center", va="center", transform=axis.transAxes)
    return _save(figure, path)


def plot_latent_curve(points: list[dict], baselines: dict[str, float], path: Path, input_size: int,
                      title: str = "") -> Path:
    """PSNR (mean, interval bar) against latent size relative to the input, training seconds on a second axis,
    `points`: [{"name", "latent_ratio", "psnr": interval dict, "train_seconds": interval dict, "study": bool}],
    baselines (models without a latent, classical methods, the noisy input) as horizontal lines."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(8, 4.5))
    points = sorted(points, key=lambda p: p["latent_ratio"])
    ratios = [p["latent_ratio"] for p in points]
    means = [p["psnr"]["mean"] for p in points]
    errors = [[m - p["psnr"]["low"] for m, p in zip(means, points)], [p["psnr"]["high"] - m for m, p in
                                                                     zip(means, points)]]
    axis.errorbar(ratios, means, yerr=errors, fmt="o-", capsize=4, color="#2a5d9f", label="autoencoder family")
    for p in points:
        axis.annotate(p["name"] + (" (study)" if p.get("study") else ""), (p["latent_ratio"], p["psnr"]["mean"]),
                      textcoords="offset points", xytext=(4, 6), fontsize=8,
                      fontweight="bold" if p.get("study") else "normal")
    axis.axvline(1.0, color="grey", lw=0.8, ls=":")
    axis.annotate("latent = input size", (1.0, axis.get_ylim()[0]), fontsize=7, color="grey", rotation=90,
                  va="bottom", ha="right")
    styles = ["--", "-.", ":", (0, (5, 1)), (0, (1, 1))]
    for index, (name, value) in enumerate(baselines.items()):
        axis.axhline(value, ls=styles[index % len(styles)], lw=1.2, color=f"C{index + 1}",
                     label=f"{name} ({value:.2f})")
    axis.set(xscale="log", xlabel=f"latent size / input size ({input_size:,} values)", ylabel="held-out PSNR (dB)",
             title=title)
    cost = axis.twinx()
    cost.plot(ratios, [p["train_seconds"]["mean"] for p in points], "s:", color="#999", ms=4,
              label="training seconds (right)")
    cost.set_ylabel("training seconds", color="#777")
    lines, labels = axis.get_legend_handles_labels()
    more, more_labels = cost.get_legend_handles_labels()
    axis.legend(lines + more, labels + more_labels, fontsize=7, loc="lower right")
    return _save(figure, path)
