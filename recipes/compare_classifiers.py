"""The study's comparison: its custom CNN against ResNet18, side by side (STUDY.md, Part 1).

Trains both recipes with their study settings (or reads finished runs), then writes the
per-class and overall test accuracy and test loss of each to the console, comparison.md,
comparison.json, a bar chart, and W&B.

    accelerate launch recipes/compare_classifiers.py                    # train both, then compare
    accelerate launch recipes/compare_classifiers.py --cnn_run=runs/cnn-X --resnet_run=runs/resnet18-Y
    accelerate launch recipes/compare_classifiers.py --resnet_weights=resnet18.pth  # offline ImageNet weights
    python recipes/compare_classifiers.py --max_steps=20                # a quick smoke run of everything
    python recipes/compare_classifiers.py --cnn_args="--epochs=2" --resnet_args="--lr=1e-4"
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import cnn  # the sibling recipes: this file's folder is on sys.path when it runs as a script
import resnet18

from toolkit.config import derive_config, field_names
from toolkit.errors import UserError
from toolkit.plots import plot_grouped_bars
from toolkit.run import ClassificationDataSettings, RunSettings, run_recipe, start_run

STUDY_RESULTS = {  # STUDY.md, on the official seg_test (3,000 images): for reference, not our data
    "CNN": {"buildings": 0.87, "forest": 0.95, "glacier": 0.73, "mountain": 0.81, "sea": 0.93, "street": 0.89,
            "overall": 0.864, "loss": 0.3945},
    "ResNet18": {"buildings": 0.90, "forest": 0.98, "glacier": 0.82, "mountain": 0.83, "sea": 0.94, "street": 0.91,
                 "overall": 0.899, "loss": 0.2897},
}


@dataclass
class Config(ClassificationDataSettings, RunSettings):
    cnn_run: str = ""  # a finished recipes/cnn.py run folder to read instead of training one
    resnet_run: str = ""  # a finished recipes/resnet18.py run folder to read instead of training one
    resnet_weights: str = "auto"  # 'imagenet', 'auto' (imagenet, else random init, said loudly), 'none', a path
    cnn_args: str = ""  # extra options for recipes/cnn.py, e.g. "--epochs=2 --batch_size=60"
    resnet_args: str = ""  # extra options for recipes/resnet18.py, e.g. "--lr=1e-4"


def _finished_summary(run_dir: Path) -> dict | None:
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    return summary if "val_accuracy" in summary else None


def _read_run(run_dir: str, recipe: str) -> dict:
    summary = _finished_summary(Path(run_dir))
    if summary is None:
        raise UserError(f"--{recipe}_run={run_dir} holds no finished run (no summary.json with results); "
                        f"train it with recipes/{recipe}.py or leave --{recipe}_run empty to train here")
    return summary


def _cell(summary: dict, name: str) -> str:
    if "test_per_class_correct" not in summary:
        return f"{summary['val_per_class_accuracy'][name]:.1%} (val)"
    correct, total = summary["test_per_class_correct"][name], summary["test_per_class_total"][name]
    return f"{correct / total:.1%} ({correct}/{total})"


def comparison_table(summaries: dict[str, dict], classes: list[str]) -> str:
    """Markdown: one row per class, overall and loss; one column per model, then the study's figures."""
    names = list(summaries)
    header = ["class", *names, *[f"study {n} (seg_test)" for n in STUDY_RESULTS]]
    rows = []
    for name in classes:
        rows.append([name, *[_cell(summaries[m], name) for m in names],
                     *[f"{STUDY_RESULTS[n].get(name, float('nan')):.0%}" for n in STUDY_RESULTS]])
    overall = []
    for model in names:
        summary = summaries[model]
        if "test_accuracy" in summary:
            correct = sum(summary["test_per_class_correct"].values())
            overall.append(f"**{summary['test_accuracy']:.1%}** ({correct}/{summary['test_images']})")
        else:
            overall.append(f"**{summary['val_accuracy']:.1%}** (val)")
    rows.append(["overall", *overall, *[f"{STUDY_RESULTS[n]['overall']:.1%}" for n in STUDY_RESULTS]])
    rows.append(["test loss", *[f"{summaries[m].get('test_loss', float('nan')):.4f}" for m in names],
                 *[f"{STUDY_RESULTS[n]['loss']:.4f}" for n in STUDY_RESULTS]])
    rows.append(["validation accuracy", *[f"{summaries[m]['val_accuracy']:.1%}" for m in names], "≈86%", "≈89%"])
    rows.append(["training time (s)", *[f"{summaries[m]['train_seconds']:.0f}" for m in names], "", ""])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(cfg: Config) -> dict:
    base = Path(cfg.run_dir) if cfg.run_dir else None
    if base is None:
        import time

        base = Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    summaries = {}
    jobs = (("CNN", cnn, cfg.cnn_run, cfg.cnn_args, {}),
            ("ResNet18", resnet18, cfg.resnet_run, cfg.resnet_args, {"weights": cfg.resnet_weights}))
    shared = field_names(ClassificationDataSettings, RunSettings) - {"run_dir"}
    configs = {label: derive_config(module.Config, cfg, shared, extra, run_dir=str(base / module.__name__), **overrides)
               for label, module, given, extra, overrides in jobs if not given}  # bad options fail before training
    for label, module, given, _, _ in jobs:
        recipe = module.__name__
        if given:
            summaries[label] = _read_run(given, recipe)
            continue
        sub_dir = base / recipe
        finished = _finished_summary(sub_dir)
        if finished is not None and cfg.resume:
            print(f"[compare] {recipe}: reading the finished run in {sub_dir}")
            summaries[label] = finished
            continue
        print(f"[compare] training {recipe} in {sub_dir}")
        summaries[label] = module.main(configs[label])

    run = start_run(dataclasses.replace(cfg, run_dir=str(base), resume=False), "compare")
    if not run.accelerator.is_main_process:
        run.logger.finish()
        return {}
    classes = summaries["CNN"]["classes"]
    if summaries["ResNet18"]["classes"] != classes:
        raise UserError("the two runs were trained on different class lists; compare runs on the same data")
    table = comparison_table(summaries, classes)
    test_name = summaries["CNN"].get("test_split", "validation")
    if summaries["ResNet18"].get("weights"):
        table += f"\n\nResNet18 started from: {summaries['ResNet18']['weights']}."
    table += f"\nOur columns: {summaries['CNN']['data']} (scored on: {test_name})."
    run.say("\n" + table + "\n")
    (run.run_dir / "comparison.md").write_text(table + "\n")
    (run.run_dir / "comparison.json").write_text(json.dumps(summaries, indent=2))
    key = "test_per_class_accuracy" if "test_per_class_accuracy" in summaries["CNN"] else "val_per_class_accuracy"
    chart = plot_grouped_bars({m: [s[key][c] for c in classes] for m, s in summaries.items()}, classes,
                              run.run_dir / "plots" / "per_class_comparison.png", "accuracy", ylim=(0, 1.05),
                              title=f"accuracy per class ({test_name})")
    run.logger.log_images({"comparison/per_class": chart}, step=0)
    run.logger.log_table("comparison/table", ["class", *summaries],
                         [[c, *[s[key][c] for s in summaries.values()]] for c in classes]
                         + [["overall", *[s.get("test_accuracy", s["val_accuracy"]) for s in summaries.values()]]],
                         step=0)
    keys = ("test_accuracy", "test_loss", "val_accuracy")
    result = {f"{m}_{k}": s.get(k) for m, s in summaries.items() for k in keys}
    run.logger.summary(result)
    run.logger.finish()
    return summaries


if __name__ == "__main__":
    run_recipe(main, Config)
