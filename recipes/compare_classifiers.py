"""The study's comparison (STUDY.md, Part 1), with repeats: any classifier recipes, several seeds each, on
the same held-out test images; means, 95% intervals and paired tests say which differences are real.

    accelerate launch recipes/compare_classifiers.py                              # the study's cnn vs resnet18
    accelerate launch recipes/compare_classifiers.py --models=fast_cnn,efficientnet_lite0 --seeds=0,1,2
    accelerate launch recipes/compare_classifiers.py --models=cnn,resnet18,fast_cnn,efficientnet_lite0
    accelerate launch recipes/compare_classifiers.py --recipe_args="cnn: --epochs=2; resnet18: --lr=1e-4"
    accelerate launch recipes/compare_classifiers.py --models=efficientnet_lite0,lite2=efficientnet_lite0 \
        --recipe_args="lite2: --model=efficientnet_lite2" --seeds=0,1,2   # two variants of one recipe
    accelerate launch recipes/compare_classifiers.py --resume      # continue the newest comparison where it stopped

Each model trains once per seed in <run_dir>/<model>/seed-<s> (a whole recipe run); NAME=RECIPE in --models
trains a recipe under a name of its own, with its own --recipe_args, so one recipe can be compared with itself.
A rerun reads finished sub-runs whose config and data match, resumes unfinished ones with --resume, and refuses
to train over a finished one made with other settings. Writes comparison.md / .json, interval and
learning-curve plots, W&B.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from toolkit.comparison import aggregate_comparison, comparison_figures, comparison_table
from toolkit.config import chosen_keys, field_names
from toolkit.data.classification import load_classification_data
from toolkit.data.settings import ClassificationDataSettings
from toolkit.errors import ConfigError
from toolkit.recipes import classifier_recipes, recipe_module
from toolkit.run import RunSettings, run_recipe, start_run
from toolkit.runs import write_json, write_text_whole
from toolkit.studies import (
    STUDY_KEYS,
    options_of,
    parse_recipe_args,
    parse_seeds,
    parse_variants,
    reusable,
    study_dir,
    sub_config,
    sub_run_keys,
)


@dataclass
class Config(ClassificationDataSettings, RunSettings):
    models: str = "cnn,resnet18"  # classifier recipes to compare (any in recipes/), or NAME=RECIPE for a variant
    seeds: str = "0"  # one run per model and seed, e.g. 0,1,2 (intervals and paired tests need two or more)
    recipe_args: str = ""  # options per model: "cnn: --epochs=2 --width=4; resnet18: --lr=1e-4"
    resnet_weights: str = "auto"  # resnet18's --weights: 'auto' (ImageNet, else random init, said loudly), a path


def _fingerprint(sub) -> str:
    return load_classification_data(sub, sub.seed, cache_dir=sub.cache_dir, log=lambda *_: None).fingerprint()


def main(cfg: Config) -> dict:
    models = parse_variants(cfg.models, classifier_recipes())  # name: recipe
    seeds = parse_seeds(cfg.seeds)
    if "seed" in chosen_keys(cfg):
        raise ConfigError("the comparison trains every model at each of --seeds (e.g. --seeds=0,1,2); --seed is unused")
    options = parse_recipe_args(cfg.recipe_args, models)
    base = study_dir(cfg.run_dir, cfg.resume, "compare")
    group = cfg.wandb_group or base.name  # W&B groups every sub-run of this comparison
    shared = field_names(ClassificationDataSettings, RunSettings) - STUDY_KEYS
    configs = {(m, s): sub_config(recipe_module(recipe).Config, cfg, shared, options.get(m, ""),
                                  **sub_run_keys(base, m, recipe, s, group, "compare"),
                                  **({"weights": cfg.resnet_weights} if recipe == "resnet18" else {}))
               for m, recipe in models.items() for s in seeds}  # every option is read here, before any training
    for (model, _), sub in configs.items():  # and every value: a bad one is not found after hours of the others
        with options_of(model):
            recipe_module(models[model]).check_config(sub)
    summaries = {}
    for (model, seed), sub in configs.items():
        found = reusable(Path(sub.run_dir), sub, "val_accuracy", lambda sub=sub: _fingerprint(sub))
        if found is not None:
            print(f"[compare] {model} seed {seed}: reading the finished run in {sub.run_dir}", flush=True)
        else:
            print(f"[compare] training {model} seed {seed} in {sub.run_dir}", flush=True)
        summaries[model, seed] = found if found is not None else recipe_module(models[model]).main(sub)

    run = start_run(dataclasses.replace(cfg, run_dir=str(base), resume=False, wandb_group=group), "compare")
    if not run.is_main:
        run.logger.finish()
        return {}
    run_dirs = {key: sub.run_dir for key, sub in configs.items()}
    result = aggregate_comparison(list(models), seeds, summaries, run_dirs) | {"recipes": models}
    table = comparison_table(result)
    run.say("\n" + table + "\n")
    write_text_whole(run.run_dir / "comparison.md", table + "\n")
    write_json(run.run_dir / "comparison.json", result)
    figures = comparison_figures(run.run_dir / "plots", result, run_dirs)
    run.logger.log_images({f"comparison/{k}": v for k, v in figures.items()}, step=0)
    run.logger.log_table("comparison/table", ["model", "seeds", "test accuracy mean", "low", "high", "std",
                                              "ensemble of the seeds"],
                         [[m, len(seeds), r["accuracy"]["mean"], r["accuracy"]["low"], r["accuracy"]["high"],
                           r["accuracy"]["std"], r.get("ensemble", {}).get("accuracy")]
                          for m, r in result["models"].items()], step=0)
    run.logger.summary({f"{m}_test_accuracy_mean": r["accuracy"]["mean"] for m, r in result["models"].items()}
                       | {f"{m}_ensemble_test_accuracy": r["ensemble"]["accuracy"]
                          for m, r in result["models"].items() if "ensemble" in r}
                       | {"models": list(models), "seeds": seeds, "test_split": result["test_split"]})
    run.logger.finish()
    return result


if __name__ == "__main__":
    run_recipe(main, Config)
