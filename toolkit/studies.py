"""What the classifier comparison and the latent-size study share: seeds, per-recipe options, the study's
folder, and training or reusing each sub-run (a recipe at one seed) in it.

    <study dir>/<recipe or model>/seed-<s>/      one sub-run: a whole recipe run directory

A finished sub-run is reused only when its stored config equals the one the study would train now and
its data fingerprint matches; a finished sub-run that differs stops the study with a message naming
the difference (nothing is retrained over it). An unfinished one resumes with --resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import time
from pathlib import Path

from toolkit.config import config_to_dict, derive_config
from toolkit.errors import ConfigError, UserError
from toolkit.runs import config_differences, describe_differences, finished_summary, newest_run, read_config


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds takes distinct whole numbers of 0 or more, comma-separated, got {text!r}")
    return seeds


def parse_variants(text: str, known, kind: str = "recipe") -> dict[str, str]:
    """'cnn,lite2=efficientnet_lite0' -> {'cnn': 'cnn', 'lite2': 'efficientnet_lite0'}: each entry one of `known` (a
    recipe, a model: `kind` says which), or NAME=ONE to train it under a name of its own (its folder, its row, its
    options), so that one recipe or model can appear twice with other options."""
    variants = {}
    for part in (part.strip() for part in text.split(",")):
        if not part:
            continue
        name, _, chosen = (item.strip() for item in part.rpartition("=")) if "=" in part else (part, "", part)
        if chosen not in known or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or name in variants:
            first = list(known)[0]
            raise ConfigError(f"--models={text!r}: give distinct entries, each a {kind} from {', '.join(known)} or "
                              f"NAME={kind.upper()} (NAME: letters, digits, '_', '-' or '.', a folder's name), e.g. "
                              f"{first},other={first}; could not read {part!r}")
        variants[name] = chosen
    if not variants:
        raise ConfigError(f"--models={text!r}: name at least one {kind} from {', '.join(known)}")
    return variants


def parse_recipe_args(text: str, known) -> dict[str, str]:
    """'cnn: --epochs=2 --width=4; resnet18: --lr=1e-4' -> {'cnn': '--epochs=2 --width=4', 'resnet18': ...}."""
    options = {}
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        name, colon, args = part.partition(":")
        if not colon or name.strip() not in known:
            raise ConfigError(f"--recipe_args takes 'name: --key=value ...' parts separated by ';' with names from "
                              f"{', '.join(known)}; could not read {part!r}")
        options[name.strip()] = (options.get(name.strip(), "") + " " + args.strip()).strip()
    return options


def study_dir(run_dir: str, resume: bool, prefix: str) -> Path:
    """--run_dir, else with --resume the newest runs/<prefix>-*, else a new timestamped folder."""
    if run_dir:
        return Path(run_dir)
    if resume:
        newest = newest_run("runs", prefix)
        if newest is not None:
            print(f"[{prefix}] --resume: continuing {newest}")
            return newest
    return Path("runs") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"


@contextlib.contextmanager
def options_of(name: str):
    """A UserError raised within names the study's model (or recipe) whose options it is about."""
    try:
        yield
    except UserError as error:
        raise type(error)(f"{name}: {error}") from None


# a study sets these per sub-run (sub_run_keys); every other key the study and its sub-runs share is passed on
STUDY_KEYS = frozenset({"run_dir", "seed", "wandb_group", "wandb_tags", "variant"})


def sub_run_keys(study: Path, name: str, chosen: str, seed: int, group: str, tag: str) -> dict:
    """The STUDY_KEYS of one sub-run: its folder <study>/<name>/seed-<s>, its seed, the study's W&B group, tags naming
    it, the seed and the study, and its variant where its name is not its recipe's or model's (`chosen`)."""
    return {"run_dir": str(study / name / f"seed-{seed}"), "seed": seed, "wandb_group": group,
            "wandb_tags": f"{name},seed-{seed},{tag}", "variant": name if name != chosen else ""}


def sub_config(config_class: type, parent, shared: set[str], extra_args: str, **overrides):
    """A sub-run's config: its recipe's own defaults, the parent's chosen shared keys, its options, overrides."""
    return derive_config(config_class, parent, shared, extra_args, **overrides)


def reusable(run_dir: Path, config, result_key: str, fingerprint=None) -> dict | None:
    """The summary of a finished sub-run in run_dir that matches `config` (and the data fingerprint that
    `fingerprint()` computes, asked only when there is a candidate); None when there is nothing finished.
    Raises UserError naming the difference when a finished run was made with other settings or data."""
    summary = finished_summary(run_dir, result_key)
    if summary is None:
        return None
    stored = read_config(run_dir) or {}
    wanted = config_to_dict(dataclasses.replace(config, run_dir=str(run_dir)))
    differences = config_differences(stored, wanted, defaults=config_to_dict(type(config)()))
    if differences:
        raise UserError(f"{run_dir} holds a finished run made with other settings "
                        f"({describe_differences(differences)}). Nothing was retrained over it: delete that folder "
                        "to retrain it, or pass another --run_dir")
    if fingerprint is not None and summary.get("data_fingerprint") not in (None, fingerprint()):
        raise UserError(f"{run_dir} holds a finished run made on other data (its train/validation/test images differ "
                        "from those of --data now). Delete that folder to retrain it, or pass another --run_dir")
    return summary
