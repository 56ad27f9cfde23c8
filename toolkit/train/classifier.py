"""The reusable pieces of a classifier recipe: the training meter, validation, the end-of-run report."""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from toolkit.data.loaders import make_loader, shard_indices
from toolkit.plots import image_grid, plot_classifier_curves, plot_confusion, plot_grouped_bars, plot_lines
from toolkit.train.checkpoint import ensure_final_checkpoint
from toolkit.train.evaluate import evaluate_classifier
from toolkit.train.meter import TrainingMeter


def evaluation_scalars(prefix: str, metrics: dict, classes: list[str]) -> dict:
    """{'val/loss', 'val/accuracy', 'val/accuracy_<class>', ...} from evaluate_classifier's result."""
    scalars = {f"{prefix}/loss": metrics["loss"], f"{prefix}/accuracy": metrics["accuracy"]}
    for name, value in zip(classes, metrics["per_class_accuracy"]):
        scalars[f"{prefix}/accuracy_{name}"] = value
    return scalars


def validate(run, model, loader, classes: list[str], preprocessing: dict, step: int, meter: TrainingMeter,
             flip_tta: bool = False) -> dict:
    """Evaluate on the validation loader and log it with the running train accuracy."""
    started = time.perf_counter()
    metrics = evaluate_classifier(model, loader, run.accelerator, len(classes), preprocessing["mean"],
                                  preprocessing["std"], flip_tta=flip_tta)
    scalars = evaluation_scalars("val", metrics, classes)
    scalars["train/accuracy_running"] = meter.take_running_accuracy()
    scalars["val/seconds"] = time.perf_counter() - started
    run.logger.log(scalars, step)
    run.say(f"[val] iteration {step}: loss {metrics['loss']:.4f} accuracy {metrics['accuracy']:.4f} "
            f"(running train accuracy {scalars['train/accuracy_running']:.4f})")
    return metrics


def _denormalised_examples(stored, indices, count: int, resolution: int):
    """The first `count` images of a split as uint8 arrays, read back through an FFCV loader."""
    loader = make_loader(stored, indices[:count], batch_size=count, train=False, resolution=resolution,
                         device=torch.device("cpu"), num_workers=1)
    images = next(iter(loader))[0]
    return [image.permute(1, 2, 0).contiguous().numpy().copy() for image in images]


def finish_classifier_run(run, model, data, val_loader, state: dict, eval_batch_size: int, num_workers: int,
                          keep_checkpoints: int, meter: TrainingMeter, flip_tta: bool = False,
                          eval_model=None) -> dict:
    """Final validation and test evaluation (of eval_model, e.g. a weight average, if given), final
    checkpoint, figures, tables and summary."""
    scored_model = eval_model if eval_model is not None else model
    accelerator, say, classes = run.accelerator, run.say, data.classes
    preprocessing, step = state["preprocessing"], state["step"]
    resolution = preprocessing["resolution"]
    validation = validate(run, scored_model, val_loader, classes, preprocessing, step, meter, flip_tta)
    summary = {"recipe": state["recipe"], "steps": step, "train_seconds": round(state["train_seconds"], 1),
               "train_images_per_s": state["images_seen"] / max(state["train_seconds"], 1e-9),
               "val_accuracy": validation["accuracy"], "val_loss": validation["loss"], "data": data.describe(),
               "synthetic_data": data.synthetic, "classes": classes, "flip_tta": flip_tta,
               "val_per_class_accuracy": dict(zip(classes, validation["per_class_accuracy"])),
               "weights": state.get("weights")}
    test = None
    if len(data.test_indices):
        rank, world = accelerator.process_index, accelerator.num_processes
        test_loader = make_loader(data.test_set, shard_indices(data.test_indices, rank, world), eval_batch_size,
                                  train=False, resolution=resolution, device=accelerator.device,
                                  num_workers=num_workers)
        test = evaluate_classifier(scored_model, test_loader, accelerator, len(classes), preprocessing["mean"],
                                   preprocessing["std"], flip_tta=flip_tta, keep_predictions=True)
        run.logger.log(evaluation_scalars("test", test, classes), step)
        summary.update(test_split=data.test_name, test_accuracy=test["accuracy"], test_loss=test["loss"],
                       test_images=test["n"], test_per_class_accuracy=dict(zip(classes, test["per_class_accuracy"])),
                       test_per_class_correct=dict(zip(classes, test["per_class_correct"])),
                       test_per_class_total=dict(zip(classes, test["per_class_total"])),
                       test_macro_f1=test["macro_f1"], test_confusion=test["confusion"])
        say(f"[test] {data.test_name}: loss {test['loss']:.4f} accuracy {test['accuracy']:.4f} ({test['n']} images)")
    final = ensure_final_checkpoint(accelerator, run.run_dir, step, state, keep_checkpoints)
    summary["checkpoint"] = str(final)
    summary["elapsed_seconds"] = elapsed_seconds(run.run_dir)
    if accelerator.is_main_process:
        _write_figures(run, data, state, validation, test, resolution)
        run.logger.log_artifact(f"{run.run_dir.name}-model", "model", final)
    run.logger.summary(summary)
    run.logger.finish()
    return summary


def elapsed_seconds(run_dir) -> float:
    """Wall-clock from the first to the last logged line (evaluations included; a resumed run's
    downtime too), plus the first logged interval."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0.0
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    timed = [r for r in records if "time" in r]
    if not timed:
        return 0.0
    return round(timed[-1]["time"] - timed[0]["time"] + timed[0].get("seconds", 0.0), 1)


def _write_figures(run, data, state, validation, test, resolution) -> None:
    plots, classes, step = run.run_dir / "plots", data.classes, state["step"]
    records = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    figures = {"curves": plot_classifier_curves(records, plots / "learning_curves.png", run.run_dir.name)}
    minutes = {r["step"]: r["time/train_minutes"] for r in records if "time/train_minutes" in r}
    timed = [(minutes[r["step"]], r["val/accuracy"]) for r in records if "val/accuracy" in r and r["step"] in minutes]
    if timed:
        figures["time_to_accuracy"] = plot_lines({"validation accuracy": timed}, plots / "time_to_accuracy.png",
                                                 "training minutes", "accuracy", title=f"{state['recipe']}: "
                                                 "time to accuracy", marker="o-")
    scored, name = (test, data.test_name) if test is not None else (validation, "validation")
    prefix = "test" if test is not None else "val"
    figures["confusion"] = plot_confusion(scored["confusion"], classes, plots / "confusion.png",
                                          f"{state['recipe']}: {name} confusion matrix")
    figures["per_class"] = plot_grouped_bars({name: scored["per_class_accuracy"]}, classes,
                                             plots / "per_class_accuracy.png", "accuracy", ylim=(0, 1.05),
                                             title=f"{state['recipe']}: {name} accuracy per class")
    run.logger.log_images({f"plots/{key}": path for key, path in figures.items()}, step)
    rows = [[c, scored["per_class_correct"][i], scored["per_class_total"][i], scored["per_class_accuracy"][i]]
            for i, c in enumerate(classes)]
    run.logger.log_table(f"{prefix}/per_class", ["class", "correct", "total", "accuracy"], rows, step)
    run.logger.log_table(f"{prefix}/confusion", ["true \\ predicted", *classes],
                         [[c, *scored["confusion"][i]] for i, c in enumerate(classes)], step)
    if test is not None:  # example test images with predictions, four of each class
        labels_all = data.test_set.labels[data.test_indices]
        positions = np.concatenate([np.flatnonzero(labels_all == c)[:4] for c in range(len(classes))])
        examples = _denormalised_examples(data.test_set, data.test_indices[positions], len(positions), resolution)
        probabilities, labels = test["probabilities"][positions], test["labels"][positions]
        captions = [f"{classes[y]} -> {classes[p.argmax()]} {p.max():.2f}" for p, y in zip(probabilities, labels)]
        figures["examples"] = image_grid(examples, captions, plots / "test_examples.png",
                                         title="true -> predicted (probability)")
        run.logger.log_images({"plots/examples": figures["examples"]}, step)
        run.logger.log_table("test/examples", ["image", "true", "predicted", "probability"],
                             [[image, classes[y], classes[p.argmax()], float(p.max())]
                              for image, p, y in zip(examples, probabilities, labels)], step)
        np.save(run.run_dir / "test_probabilities.npy", test["probabilities"])
