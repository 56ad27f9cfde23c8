"""The classifier comparison's numbers: per model and seed, means and 95% intervals over seeds, per class
too; paired tests between models on the same test images; the table, in Markdown; the figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toolkit.errors import UserError
from toolkit.plots import plot_bands, plot_grouped_bars, plot_interval_bars
from toolkit.runs import read_metrics, series
from toolkit.stats import compare_pairs, describe_pair, mean_interval
from toolkit.train.precision import precision_name

STUDY_RESULTS = {  # STUDY.md, on the official seg_test (3,000 images): for reference, not our data
    "cnn": {"buildings": 0.87, "forest": 0.95, "glacier": 0.73, "mountain": 0.81, "sea": 0.93, "street": 0.89,
            "overall": 0.864, "loss": 0.3945, "validation": "≈86%"},
    "resnet18": {"buildings": 0.90, "forest": 0.98, "glacier": 0.82, "mountain": 0.83, "sea": 0.94, "street": 0.91,
                 "overall": 0.899, "loss": 0.2897, "validation": "≈89%"},
}


def aggregate_comparison(models: list[str], seeds: list[int], summaries: dict, run_dirs: dict) -> dict:
    """Per model: every seed's numbers and their mean/std/interval, per class too; per pair: paired tests."""
    first = summaries[models[0], seeds[0]]
    classes, scored = first["classes"], "test_accuracy" in first
    if any(s["classes"] != classes for s in summaries.values()):
        raise UserError("the runs were trained on different class lists; compare runs on the same data")
    prefix = "test" if scored else "val"
    result = {"models": {}, "classes": classes, "seeds": seeds, "test_split": first.get("test_split", "validation"),
              "data": first["data"], "scored_on": prefix}
    correct, accuracies, labels, probabilities_by_model = {}, {}, None, {}
    for model in models:
        runs = [summaries[model, seed] for seed in seeds]
        accuracies[model] = [r[f"{prefix}_accuracy"] for r in runs]
        result["models"][model] = {
            "per_seed": {str(seed): {k: r.get(k) for k in ("test_accuracy", "test_loss", "val_accuracy", "val_loss",
                                                           "train_seconds", "test_per_class_accuracy", "weights",
                                                           "test_per_class_correct", "test_per_class_total",
                                                           "mixed_precision", "steps", "cpu", "num_processes",
                                                           "frozen_features")}
                         for seed, r in zip(seeds, runs)},
            "accuracy": mean_interval(accuracies[model]),
            "loss": mean_interval([r.get(f"{prefix}_loss") for r in runs]),
            "loss_calibrated": mean_interval([r.get("test_loss_calibrated") for r in runs] if scored else []),
            "val_accuracy": mean_interval([r["val_accuracy"] for r in runs]),
            "train_seconds": mean_interval([r["train_seconds"] for r in runs]),
            "per_class": {c: mean_interval([r[f"{prefix}_per_class_accuracy"][c] for r in runs]) for c in classes},
            "mixed_precision": sorted({r.get("mixed_precision", "?") for r in runs}),
            "weights": runs[0].get("weights"),
        }
        if scored:
            correct[model], probabilities_by_model[model] = [], []
            for seed in seeds:
                run_dir = Path(run_dirs[model, seed])
                probabilities = np.load(run_dir / "test_probabilities.npy")
                seed_labels = np.load(run_dir / "test_labels.npy")
                if labels is not None and not np.array_equal(labels, seed_labels):
                    raise UserError(f"{run_dir} was scored on other test images than the first run: "
                                    "paired tests need the same images")
                labels = seed_labels
                correct[model].append(probabilities.argmax(1) == seed_labels)
                probabilities_by_model[model].append(probabilities)
            if len(seeds) > 1:
                result["models"][model]["ensemble"] = seed_ensemble(probabilities_by_model[model], labels, classes)
    if scored and len(models) > 1:
        result["pairs"] = compare_pairs(accuracies, correct)
        for pair in result["pairs"]:
            pair["sentence"] = describe_pair(pair)
    if len(seeds) > 1:
        result["note"] = "intervals: 95% t-intervals of the mean over seeds (training noise, same test images)"
    return result


def seed_ensemble(probabilities: list[np.ndarray], labels: np.ndarray, classes: list[str]) -> dict:
    """What the seeds' models score together (`toolkit predict RUN --ensemble RUN...`): the mean of their calibrated
    probabilities on the same test images, its accuracy, loss and per-class accuracy, how many of the seeds it is
    ahead of alone, McNemar's test against each seed on the same images, and the seeds' own mean loss on the same
    calibrated probabilities (the `test loss` row is as trained). One number on the test images, not an interval:
    it uses every seed."""
    from toolkit.stats import mcnemar
    from toolkit.train.evaluate import log_of, mean_negative_log_likelihood

    mean = np.mean(probabilities, axis=0)
    right = mean.argmax(1) == labels
    alone = [float((p.argmax(1) == labels).mean()) for p in probabilities]
    against_seeds = [mcnemar(right, p.argmax(1) == labels) for p in probabilities]
    return {"members": len(probabilities), "accuracy": float(right.mean()),
            "loss": mean_negative_log_likelihood(log_of(mean), labels),
            "mean_seed_loss": float(np.mean([mean_negative_log_likelihood(log_of(p), labels) for p in probabilities])),
            "per_class": {name: float(right[labels == i].mean()) if (labels == i).any() else None
                          for i, name in enumerate(classes)},
            "ahead_of_seeds": sum(float(right.mean()) > accuracy for accuracy in alone),
            "mcnemar_p_against_seeds": [test["p_value"] for test in against_seeds],
            "gain_over_mean_seed": float(right.mean()) - float(np.mean(alone))}


def _cell(interval: dict, one_seed: str | None = None) -> str:
    """mean ± std [interval] of an accuracy; the interval shown within [0%, 100%] (the JSON keeps it whole)."""
    if interval["n"] == 1:
        return one_seed or f"{interval['mean']:.1%}"
    low, high = max(0.0, interval["low"]), min(1.0, interval["high"])
    return f"{interval['mean']:.1%} ± {interval['std'] * 100:.1f} [{low:.1%}, {high:.1%}]"


def _loss_cell(model: dict) -> str:
    """The mean test loss as trained, and with each run's temperature where the runs fitted one."""
    calibrated = model.get("loss_calibrated", {"n": 0})
    return f"{model['loss']['mean']:.4f}" + (f" ({calibrated['mean']:.4f} with the temperature)"
                                            if calibrated["n"] else "")


def training_time_cell(model: dict) -> str:
    """The mean training seconds, saying when some seeds read their frozen features from the cache that another run
    kept (EfficientNet's top mode), so spent less than computing them would have taken."""
    runs = model["per_seed"].values()
    reading = sum(1 for r in runs if (r.get("frozen_features") or {}).get("read"))
    mean = f"{model['train_seconds']['mean']:.0f}"
    return mean if not reading else f"{mean} ({reading} of {len(runs)} seeds read frozen features from the cache)"


def comparison_table(result: dict) -> str:
    """Markdown: one row per class, overall, loss, validation, time; one column per model, then the study's."""
    models, classes = list(result["models"]), result["classes"]
    studied = [m for m in models if m in STUDY_RESULTS]
    single = len(result["seeds"]) == 1
    header = ["class", *models, *[f"study {m} (seg_test)" for m in studied]]
    rows = []
    for name in classes:
        cells = []
        for model in models:
            r = result["models"][model]
            seed = next(iter(r["per_seed"].values()))
            counted = None
            if single and seed.get("test_per_class_correct"):
                correct, total = seed["test_per_class_correct"][name], seed["test_per_class_total"][name]
                counted = f"{correct / total:.1%} ({correct}/{total})"
            cells.append(_cell(r["per_class"][name], counted))
        rows.append([name, *cells, *[f"{STUDY_RESULTS[m][name]:.0%}" for m in studied]])
    overall = []
    for model in models:
        r = result["models"][model]
        seed = next(iter(r["per_seed"].values()))
        counted = None
        if single and seed.get("test_per_class_correct"):
            right, total = sum(seed["test_per_class_correct"].values()), sum(seed["test_per_class_total"].values())
            counted = f"**{r['accuracy']['mean']:.1%}** ({right}/{total})"
        overall.append(_cell(r["accuracy"], counted))
    rows.append(["overall", *overall, *[f"{STUDY_RESULTS[m]['overall']:.1%}" for m in studied]])
    rows.append(["test loss", *[_loss_cell(result["models"][m]) for m in models],
                 *[f"{STUDY_RESULTS[m]['loss']:.4f}" for m in studied]])
    ensembles = [result["models"][m].get("ensemble") for m in models]
    if any(ensembles):
        rows.append(["ensemble of the seeds",
                     *[f"{e['accuracy']:.1%} ({e['gain_over_mean_seed'] * 100:+.1f} points; McNemar p against the "
                       f"seeds {', '.join(f'{p:.2g}' for p in e['mcnemar_p_against_seeds'])}); loss {e['loss']:.4f} "
                       f"(the seeds {e['mean_seed_loss']:.4f})" if e else "" for e in ensembles], *[""] * len(studied)])
    rows.append(["validation accuracy", *[_cell(result["models"][m]["val_accuracy"]) for m in models],
                 *[STUDY_RESULTS[m]["validation"] for m in studied]])
    rows.append(["training time (s)", *[training_time_cell(result["models"][m]) for m in models], *[""] * len(studied)])
    rows.append(["precision", *[", ".join(precision_name(p) for p in result["models"][m]["mixed_precision"])
                                for m in models],
                 *["fp32"] * len(studied)])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    text = "\n".join(lines)
    seeds = ", ".join(map(str, result["seeds"]))
    split = f" ({result['test_split']})" if f"({result['test_split']})" not in result["data"] else ""
    text += (f"\n\nScored on: {result['data']}{split}; seeds {seeds}."
             + ("" if single else " Cells: mean ± standard deviation [95% t-interval of the mean, shown within "
                                  "0-100%] over seeds.")
             + (" Ensemble of the seeds: the mean of their calibrated probabilities (`toolkit predict RUN --ensemble "
                "RUN...`): its accuracy and gain over the mean seed, its loss beside the seeds' mean loss with their "
                "temperatures." if any(ensembles) else ""))
    for model in models:
        if result["models"][model].get("weights") and model == "resnet18":
            text += f"\nresnet18 started from: {result['models'][model]['weights']}."
    for pair in result.get("pairs", []):
        text += f"\n- {pair['sentence']}"
    return text


def comparison_figures(plots: Path, result: dict, run_dirs: dict) -> dict:
    figures = {}
    models, classes, prefix = list(result["models"]), result["classes"], result["scored_on"]
    reference = {f"study {m} (seg_test)": STUDY_RESULTS[m]["overall"] for m in models if m in STUDY_RESULTS}
    figures["accuracy"] = plot_interval_bars({m: result["models"][m]["accuracy"] for m in models},
                                             plots / "accuracy_intervals.png", f"{prefix} accuracy",
                                             title="accuracy per model (mean, 95% interval, seeds as dots)",
                                             reference=reference, ylim=(0, 1))
    figures["per_class"] = plot_grouped_bars({m: [result["models"][m]["per_class"][c]["mean"] for c in classes]
                                              for m in models}, classes, plots / "per_class_comparison.png",
                                             "accuracy", ylim=(0, 1.05), title=f"accuracy per class ({prefix})")
    curves = {m: [series(read_metrics(run_dirs[m, s]), "val/accuracy") for s in result["seeds"]]
              for m in models}
    figures["learning_curves"] = plot_bands(curves, plots / "learning_curves.png", "iteration",
                                            "validation accuracy", title="validation accuracy (mean, band: all seeds)")
    return figures
