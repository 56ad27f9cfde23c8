"""What classifier recipes share around their step: validation, and the end-of-run scores, figures and summary."""

from __future__ import annotations

import numpy as np
import torch

from toolkit.data.classification import ClassificationData
from toolkit.data.loaders import make_loader, shard_loader
from toolkit.plots import image_grid, plot_classifier_curves, plot_confusion, plot_grouped_bars, plot_lines
from toolkit.run import Run
from toolkit.runs import elapsed_seconds, read_metrics, series
from toolkit.train.evaluate import (
    evaluate_classifier,
    expected_calibration_error,
    fit_temperature,
    mean_negative_log_likelihood,
    tempered_log_probabilities,
)
from toolkit.train.loop import TrainingLoop


def evaluation_scalars(prefix: str, metrics: dict, classes: list[str]) -> dict:
    """{'val/loss', 'val/accuracy', 'val/accuracy_<class>', ...} from evaluate_classifier's result."""
    scalars = {f"{prefix}/loss": metrics["loss"], f"{prefix}/accuracy": metrics["accuracy"]}
    for name, value in zip(classes, metrics["per_class_accuracy"]):
        scalars[f"{prefix}/accuracy_{name}"] = value
    return scalars


class ClassifierEvaluation:
    """This process's validation shard and how pixels become inputs (size, mean, std, mirrored copies):
    what every validation pass and the final scores share."""

    def __init__(self, run: Run, data: ClassificationData, preprocessing: dict, batch_size: int,
                 flip_tta: bool = False, eval_data: ClassificationData | None = None):
        self.run, self.data, self.preprocessing = run, data, preprocessing
        self.batch_size, self.flip_tta = batch_size, flip_tta
        self.eval_data = eval_data or data  # the same split, stored at the evaluation size
        self.val = shard_loader(self.eval_data.train_set, self.eval_data.val_indices, run.rank, run.world, batch_size,
                                preprocessing["image_size"], run.device, run.cfg.num_workers)

    def score(self, model, shard, keep_predictions: bool = False) -> dict:
        pre = self.preprocessing
        return evaluate_classifier(model, shard, self.run.accelerator, len(self.data.classes), pre["mean"],
                                   pre["std"], self.flip_tta, keep_predictions)

    def validate(self, model, step: int, epoch_end: int | None = None) -> dict:
        """The loop's validation: scores on the validation images, printed in one line."""
        metrics = self.score(model, self.val)
        self.run.say(f"[val] iteration {step}: loss {metrics['loss']:.4f} accuracy {metrics['accuracy']:.4f}")
        return evaluation_scalars("val", metrics, self.data.classes)


FEW_FOR_A_TEMPERATURE = 200  # validation images below which a fitted temperature is said to be uncertain


def finish_classifier_run(loop: TrainingLoop, evaluation: ClassifierEvaluation) -> dict:
    """After training: the final validation and held-out test scores (of the weight average when there is
    one), the final checkpoint, figures, tables and summary.json."""
    run, state = loop.run, loop.finish()
    data, classes, model = evaluation.eval_data, evaluation.data.classes, loop.evaluated_model
    validation = evaluation.score(model, evaluation.val, keep_predictions=True)
    loop.run.logger.log(evaluation_scalars("val", validation, classes), state.step)
    # calibration: the temperature that makes the validation probabilities honest, kept in the checkpoint for
    # predict and evaluate (every process fits the same one: each holds all the validation predictions)
    state.temperature = fit_temperature(validation["log_probabilities"], validation["labels"])
    val_ece = expected_calibration_error(validation["probabilities"], validation["labels"])[0]
    run.say(f"[val] final: loss {validation['loss']:.4f} accuracy {validation['accuracy']:.4f}; "
            f"calibration: temperature {state.temperature:.3f} (expected calibration error as trained {val_ece:.3f})")
    if len(validation["labels"]) < FEW_FOR_A_TEMPERATURE:
        run.say(f"[val] note: a temperature fitted on {len(validation['labels'])} validation images is "
                "uncertain (the fit is held near 1 accordingly) and may make the held-out calibration worse, not "
                "better; more validation images (--val_fraction) steady it")
    summary = {"recipe": state.recipe, "steps": state.step, "train_seconds": round(state.train_seconds, 1),
               "train_images_per_s": state.images_seen / max(state.train_seconds, 1e-9), "seed": run.cfg.seed,
               "val_accuracy": validation["accuracy"], "val_loss": validation["loss"], "data": data.describe(),
               "data_fingerprint": data.fingerprint(), "synthetic_data": data.synthetic, "classes": classes,
               "flip_tta": evaluation.flip_tta, "mixed_precision": state.mixed_precision,
               "num_processes": state.num_processes, "cpu": run.logger.config.get("cpu"),
               "val_per_class_accuracy": dict(zip(classes, validation["per_class_accuracy"])),
               "weights": state.weights, "temperature": state.temperature, "val_ece": val_ece}
    if "budget" in state.extra:  # --train_minutes: what was measured and chosen
        summary["budget"] = state.extra["budget"]
    if "frozen_features" in state.extra:  # top mode: the frozen blocks' features computed or read from the cache
        summary["frozen_features"] = state.extra["frozen_features"]
    test = None
    if len(data.test_indices):
        shard = shard_loader(data.test_set, data.test_indices, run.rank, run.world, evaluation.batch_size,
                             evaluation.preprocessing["image_size"], run.device, run.cfg.num_workers)
        test = evaluation.score(model, shard, keep_predictions=True)
        run.logger.log(evaluation_scalars("test", test, classes), state.step)
        summary.update(test_split=data.test_name, test_accuracy=test["accuracy"], test_loss=test["loss"],
                       test_images=test["n"], test_per_class_accuracy=dict(zip(classes, test["per_class_accuracy"])),
                       test_per_class_correct=dict(zip(classes, test["per_class_correct"])),
                       test_per_class_total=dict(zip(classes, test["per_class_total"])),
                       test_macro_f1=test["macro_f1"], test_confusion=test["confusion"],
                       **calibration_scores(test["log_probabilities"], test["labels"], state.temperature))
        # from here on (figures, test_probabilities.npy) the probabilities as predict and evaluate give them
        test["probabilities"] = np.exp(tempered_log_probabilities(test["log_probabilities"], state.temperature)
                                       ).astype(np.float32)
        run.say(f"[test] {data.test_name}: loss {test['loss']:.4f} accuracy {test['accuracy']:.4f} "
                f"({test['n']} images); expected calibration error {summary['test_ece']:.3f} as trained, "
                f"{summary['test_ece_calibrated']:.3f} with the temperature")
    final = loop.final_checkpoint()
    summary["checkpoint"] = str(final)
    if run.is_main:
        records = read_metrics(run.run_dir)
        summary["elapsed_seconds"] = elapsed_seconds(records)
        _write_tables_and_figures(run, data, state, records, validation, test, evaluation.preprocessing["image_size"])
        run.logger.log_artifact(f"{run.run_dir.name}-model", "model", final)
    run.logger.summary(summary)
    run.logger.finish()
    return summary


def calibration_scores(log_probabilities: np.ndarray, labels: np.ndarray, temperature: float) -> dict:
    """Expected calibration error and loss of held-out predictions as trained and with the fitted temperature."""
    calibrated = tempered_log_probabilities(log_probabilities, temperature)
    return {"test_ece": expected_calibration_error(np.exp(log_probabilities), labels)[0],
            "test_ece_calibrated": expected_calibration_error(np.exp(calibrated), labels)[0],
            "test_loss_calibrated": mean_negative_log_likelihood(calibrated, labels)}


def _example_images(stored, indices, image_size: int) -> list[np.ndarray]:
    """Images of a split as (H, W, 3) uint8 arrays, read back through an FFCV loader."""
    loader = make_loader(stored, indices, batch_size=len(indices), train=False, image_size=image_size,
                         device=torch.device("cpu"), num_workers=1)
    images = next(iter(loader))[0]
    return [image.permute(1, 2, 0).contiguous().numpy().copy() for image in images]


def _write_tables_and_figures(run, data, state, records, validation, test, image_size) -> None:
    """The run's tables, test predictions and (unless --figures=false) its figures, on disk and in W&B."""
    plots, classes, step = run.run_dir / "plots", data.classes, state.step
    scored, name = (test, data.test_name) if test is not None else (validation, "validation")
    prefix = "test" if test is not None else "val"
    rows = [[c, scored["per_class_correct"][i], scored["per_class_total"][i], scored["per_class_accuracy"][i]]
            for i, c in enumerate(classes)]
    run.logger.log_table(f"{prefix}/per_class", ["class", "correct", "total", "accuracy"], rows, step)
    run.logger.log_table(f"{prefix}/confusion", ["true \\ predicted", *classes],
                         [[c, *scored["confusion"][i]] for i, c in enumerate(classes)], step)
    if test is not None:
        np.save(run.run_dir / "test_probabilities.npy", test["probabilities"])  # calibrated, as served
        np.save(run.run_dir / "test_labels.npy", test["labels"])
    if not run.cfg.figures:
        return
    figures = {"curves": plot_classifier_curves(records, plots / "learning_curves.png", run.run_dir.name)}
    minutes = dict(series(records, "time/train_minutes"))
    timed = [(minutes[s], accuracy) for s, accuracy in series(records, "val/accuracy") if s in minutes]
    if timed:
        figures["time_to_accuracy"] = plot_lines({"validation accuracy": timed}, plots / "time_to_accuracy.png",
                                                 "training minutes", "accuracy", title=f"{state.recipe}: "
                                                 "time to accuracy", marker="o-")
    figures["confusion"] = plot_confusion(scored["confusion"], classes, plots / "confusion.png",
                                          f"{state.recipe}: {name} confusion matrix")
    figures["per_class"] = plot_grouped_bars({name: scored["per_class_accuracy"]}, classes,
                                             plots / "per_class_accuracy.png", "accuracy", ylim=(0, 1.05),
                                             title=f"{state.recipe}: {name} accuracy per class")
    run.logger.log_images({f"plots/{key}": path for key, path in figures.items()}, step)
    if test is not None:  # example test images with predictions, four of each class
        labels_all = data.test_set.labels[data.test_indices]
        positions = np.concatenate([np.flatnonzero(labels_all == c)[:4] for c in range(len(classes))])
        examples = _example_images(data.test_set, data.test_indices[positions], image_size)
        probabilities, labels = test["probabilities"][positions], test["labels"][positions]
        captions = [f"{classes[y]} -> {classes[p.argmax()]} {p.max():.2f}" for p, y in zip(probabilities, labels)]
        figures["examples"] = image_grid(examples, captions, plots / "test_examples.png",
                                         title="true -> predicted (probability)")
        run.logger.log_images({"plots/examples": figures["examples"]}, step)
        run.logger.log_table("test/examples", ["image", "true", "predicted", "probability"],
                             [[image, classes[y], classes[p.argmax()], float(p.max())]
                              for image, p, y in zip(examples, probabilities, labels)], step)
