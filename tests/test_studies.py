"""Studies with repeats: the statistics against hand-computed values, and the comparison and latent study
as a user reruns, resumes and mixes them."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from test_recipes import run_in_process

from toolkit.stats import compare_pairs, describe_pair, mcnemar, mean_interval, paired_difference
from toolkit.studies import STUDY_KEYS, parse_recipe_args, parse_seeds, parse_variants, sub_run_keys

# ---- statistics, by hand --------------------------------------------------------------------------------


def test_t_interval_of_three_seeds():
    result = mean_interval([0.80, 0.82, 0.84])
    # mean 0.82, sample std 0.02, t(0.975, df=2) = 4.302653: half-width 4.302653 * 0.02 / sqrt(3) = 0.049683
    assert result["mean"] == pytest.approx(0.82) and result["std"] == pytest.approx(0.02)
    assert result["low"] == pytest.approx(0.82 - 0.049683, abs=1e-6)
    assert result["high"] == pytest.approx(0.82 + 0.049683, abs=1e-6)
    one = mean_interval([0.75])
    assert (one["mean"], one["std"], one["low"], one["high"], one["n"]) == (0.75, 0.0, 0.75, 0.75, 1)


def test_mcnemar_exact_on_a_small_table():
    # 3 images only A gets right, 10 only B: exact two-sided binomial, 2 * P(X <= 3 | 13, 1/2) = 2 * 378 / 8192
    a = [True] * 3 + [False] * 10 + [True] * 20 + [False] * 5
    b = [False] * 3 + [True] * 10 + [True] * 20 + [False] * 5
    result = mcnemar(a, b)
    assert (result["b"], result["c"], result["method"]) == (3, 10, "exact binomial")
    assert result["p_value"] == pytest.approx(2 * 378 / 8192)


def test_mcnemar_chi_square_with_continuity_correction():
    a = [True] * 30 + [False] * 10
    b = [False] * 30 + [True] * 10
    result = mcnemar(a, b)  # (|30 - 10| - 1)^2 / 40 = 9.025; one degree of freedom
    assert result["statistic"] == pytest.approx(9.025)
    assert result["p_value"] == pytest.approx(math.erfc(math.sqrt(9.025 / 2)), rel=1e-9)
    assert mcnemar([True, False], [True, False])["p_value"] == 1.0  # no discordant pairs: nothing to tell


def test_paired_difference_and_the_verdict_in_words():
    difference = paired_difference([0.90, 0.92], [0.85, 0.86])
    # differences 0.05, 0.06: mean 0.055, std 0.0070711, t(0.975, df=1) = 12.7062: half-width 0.063531
    assert difference["mean"] == pytest.approx(0.055)
    assert difference["low"] == pytest.approx(0.055 - 0.063531, abs=1e-6)
    correct = {"a": [np.array([True] * 70 + [False] * 30)] * 2, "b": [np.array([False] * 70 + [True] * 30)] * 2}
    pair = compare_pairs({"a": [0.90, 0.92], "b": [0.85, 0.86]}, correct)[0]
    assert all(t["p_value"] < 0.05 for t in pair["mcnemar"])  # each seed alone is clear ...
    assert not pair["distinguishable"]  # ... but two seeds' interval still spans zero
    said = describe_pair(pair)
    assert "a is ahead of b by 5.5 points (95% interval of that difference over 2 seeds: -0.9 to +11.9 points)" \
        in said and "NOT distinguishable from noise yet: each seed's difference is beyond chance" in said
    # the same pair named the other way round: the interval is still that of the model ahead minus the other
    flipped = compare_pairs({"b": [0.85, 0.86], "a": [0.90, 0.92]}, {"b": correct["b"], "a": correct["a"]})[0]
    assert "a is ahead of b by 5.5 points (95% interval of that difference over 2 seeds: -0.9 to +11.9 points)" \
        in describe_pair(flipped)
    only_a, only_b = [True] * 3 + [False] + [True] * 7, [False] * 3 + [True] + [True] * 7  # 3 against 1: p 0.625
    one_seed_unclear = compare_pairs({"a": [0.90], "b": [0.89]}, {"a": [np.array(only_a)], "b": [np.array(only_b)]})[0]
    assert "one seed: no interval" in describe_pair(one_seed_unclear) and \
        "McNemar p >= 0.05 on at least one seed" in describe_pair(one_seed_unclear)


def test_study_options_are_checked():
    from toolkit.errors import ConfigError

    assert parse_seeds("0, 1,2") == [0, 1, 2]
    for bad in ("", "0,0", "-1", "a"):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)
    assert parse_recipe_args("cnn: --epochs=2; resnet18: --lr=1e-4", ["cnn", "resnet18"]) == {
        "cnn": "--epochs=2", "resnet18": "--lr=1e-4"}
    with pytest.raises(ConfigError, match="could not read"):
        parse_recipe_args("vgg: --x=1", ["cnn"])
    keys = sub_run_keys(Path("study"), "lite2", "efficientnet_lite0", 1, "g", "compare")  # the keys a study sets
    assert set(keys) == STUDY_KEYS and keys["variant"] == "lite2"
    assert keys["run_dir"] == str(Path("study") / "lite2" / "seed-1") and keys["wandb_tags"] == "lite2,seed-1,compare"
    assert sub_run_keys(Path("study"), "cnn", "cnn", 0, "g", "compare")["variant"] == ""  # not a variant
    known = ["cnn", "efficientnet_lite0"]
    assert parse_variants("cnn, lite2=efficientnet_lite0", known) == {"cnn": "cnn", "lite2": "efficientnet_lite0"}
    for bad in ("cnn,cnn", "a=cnn,a=efficientnet_lite0", "x=vgg", "two words=cnn", "=cnn", "../up=cnn", ""):
        with pytest.raises(ConfigError, match="--models="):
            parse_variants(bad, known)
    with pytest.raises(ConfigError, match="each a model from AE38, unet or NAME=MODEL .* e.g. AE38,other=AE38"):
        parse_variants("AE38,x=AE99", ["AE38", "unet"], kind="model")


# ---- the studies as a user runs them ----------------------------------------------------------------------

def test_a_study_checks_every_runs_values_before_training_any(tiny_intel, tmp_path):
    """A value out of range, or a weights file that is not there, in the options of the second model is refused
    before the first trains (it was found only when the second's turn came), naming the model."""
    from toolkit.errors import ConfigError

    study = tmp_path / "study"
    for args, message in ((["--models=cnn,resnet18", "--recipe_args=resnet18: --lr=-1"],
                           "resnet18: --lr must be greater than 0"),
                          (["--models=cnn,efficientnet_lite0", f"--recipe_args=efficientnet_lite0: --weights={study}"],
                           "efficientnet_lite0: --weights="),
                          (["--models=cnn,resnet18", f"--resnet_weights={tmp_path / 'absent.pth'}"],
                           "resnet18: --weights=")):
        with pytest.raises(ConfigError, match=message):
            run_in_process("compare_classifiers", [f"--data={tiny_intel}", f"--run_dir={study}", *args])
    with pytest.raises(ConfigError, match="unet: --lr must be greater than 0"):
        run_in_process("latent_study", [f"--data={tiny_intel}", "--models=AE10,unet", "--model_args=unet: --lr=-1",
                                        f"--run_dir={study}"])
    assert not study.exists()  # nothing trained, nothing written


TINY = "--batch_size=16 --eval_batch_size=32"


def test_the_seeds_ensemble_averages_their_probabilities():
    """Three seeds each wrong on another image are right together; the per-class accuracy, the loss of the mean
    probabilities and the gain over the mean seed, by hand."""
    from toolkit.comparison import seed_ensemble

    labels = np.array([0, 1, 1, 0])
    right, wrong = [0.8, 0.2], [0.4, 0.6]
    seeds = [np.array([right if i != miss else wrong for i in range(4)]) for miss in (0, 1, 2)]
    for seed in seeds:
        seed[labels == 1] = seed[labels == 1][:, ::-1]  # the same confidence, for class 1
    ensemble = seed_ensemble(seeds, labels, ["a", "b"])
    assert ensemble["accuracy"] == 1.0 and ensemble["per_class"] == {"a": 1.0, "b": 1.0}
    assert ensemble["ahead_of_seeds"] == 3 and ensemble["gain_over_mean_seed"] == pytest.approx(0.25)
    assert ensemble["mcnemar_p_against_seeds"] == [1.0] * 3  # one discordant image each: nothing to tell
    together = (2 * 0.8 + 0.4) / 3  # each image: right in two seeds, wrong in one
    assert ensemble["loss"] == pytest.approx((-np.log(together) * 3 - np.log(0.8)) / 4)
    assert ensemble["mean_seed_loss"] == pytest.approx((-np.log(0.4) - 3 * np.log(0.8)) / 4)  # each seed alike


def test_a_comparison_with_seeds_resumes_the_newest_one_and_mixes_precisions(tiny_intel, tmp_path, monkeypatch):
    """Three seeds of two recipes; the runs at another precision (cnn forced to fp32, fast_cnn's auto picks bf16
    when the CPU says it has it natively) train in one process; --resume without --run_dir continues the newest."""
    monkeypatch.setenv("SCENE_TOOLKIT_CPU_BF16", "1")  # auto would pick bf16 (emulated here: tiny models only)
    args = ["--models=cnn,fast_cnn", "--seeds=0,1,2", f"--data={tiny_intel}", "--image_size=32", "--max_steps=2",
            "--num_workers=1", f"--recipe_args=cnn: {TINY} --width=4 --mixed_precision=no; "
            f"fast_cnn: {TINY} --widths=8,16,16,32 --train_image_sizes=24"]
    (tmp_path / "runs").mkdir()
    result = run_in_process("compare_classifiers", args)
    study = sorted((tmp_path / "runs").glob("compare-*"))[-1]
    assert result["models"]["cnn"]["mixed_precision"] == ["no"]
    assert result["models"]["fast_cnn"]["mixed_precision"] == ["bf16"]
    for model in ("cnn", "fast_cnn"):
        accuracy = result["models"][model]["accuracy"]
        assert accuracy["n"] == 3 and accuracy["low"] <= accuracy["mean"] <= accuracy["high"]
    pair = result["pairs"][0]
    assert len(pair["mcnemar"]) == 3 and "seeds" in pair["sentence"]
    table = (study / "comparison.md").read_text()
    assert " ± " in table and "| precision | fp32 | bf16 |" in table
    for model in ("cnn", "fast_cnn"):  # the seeds' models together, on the same test images
        ensemble = result["models"][model]["ensemble"]
        assert ensemble["members"] == 3 and 0 <= ensemble["accuracy"] <= 1 and 0 <= ensemble["ahead_of_seeds"] <= 3
        assert ensemble["gain_over_mean_seed"] == pytest.approx(
            ensemble["accuracy"] - np.mean(result["models"][model]["accuracy"]["values"]))
    assert "| ensemble of the seeds |" in table and "--ensemble" in table
    calibrated = result["models"]["cnn"]["loss_calibrated"]  # the loss predict gives, beside the loss as trained
    assert calibrated["n"] == 3 and f"{calibrated['mean']:.4f} with the temperature" in table
    from toolkit.cli import main as toolkit_main

    assert toolkit_main(["report", str(study), "--out", str(tmp_path / "report"), "--wandb_mode=disabled"]) == 0
    page = (tmp_path / "report" / "index.html").read_text()
    assert page.count("its seeds together") == 2 and "ensemble of the seeds" in page
    for figure in ("accuracy_intervals.png", "learning_curves.png", "per_class_comparison.png"):
        assert (study / "plots" / figure).is_file()
    stored = json.loads((study / "comparison.json").read_text())
    assert set(stored["models"]["cnn"]["per_seed"]) == {"0", "1", "2"}
    (study / "comparison.md").unlink()
    os.utime(study)  # the newest comparison
    again = run_in_process("compare_classifiers", [*args, "--resume"])  # no --run_dir: the newest is read back
    assert again["models"]["cnn"]["accuracy"]["values"] == result["models"]["cnn"]["accuracy"]["values"]
    assert (study / "comparison.md").is_file() and len(list((tmp_path / "runs").glob("compare-*"))) == 1


def test_a_comparison_sets_two_variants_of_one_recipe_side_by_side(tiny_intel, tmp_path, capsys):
    """--models=cnn,narrow=cnn: the same recipe twice, each with its own options, folder, row and W&B group."""
    from toolkit.wandb_report import report_spec

    study = tmp_path / "variants"
    result = run_in_process("compare_classifiers", [
        "--models=cnn,narrow=cnn", "--seeds=0", f"--data={tiny_intel}", f"--run_dir={study}", "--image_size=32",
        "--max_steps=2", "--num_workers=1", f"--recipe_args=cnn: {TINY} --width=4; narrow: {TINY} --width=2"])
    assert result["recipes"] == {"cnn": "cnn", "narrow": "cnn"} and list(result["models"]) == ["cnn", "narrow"]
    assert result["pairs"][0]["sentence"] and "narrow" in (study / "comparison.md").read_text()
    configs = {m: json.loads((study / m / "seed-0" / "config.json").read_text()) for m in ("cnn", "narrow")}
    assert [configs[m]["recipe"] for m in ("cnn", "narrow")] == ["cnn", "cnn"]
    assert (configs["cnn"]["width"], configs["narrow"]["width"]) == (4, 2)
    assert (configs["cnn"]["variant"], configs["narrow"]["variant"]) == ("", "narrow")  # W&B tells them apart
    groups = [block["runset"]["groupby"] for block in report_spec(study)["blocks"] if block.get("runset")]
    assert ["config.recipe", "config.variant"] in groups
    capsys.readouterr()
    again = run_in_process("compare_classifiers", [  # the finished variants are read back, not retrained
        "--models=cnn,narrow=cnn", "--seeds=0", f"--data={tiny_intel}", f"--run_dir={study}", "--image_size=32",
        "--max_steps=2", "--num_workers=1", f"--recipe_args=cnn: {TINY} --width=4; narrow: {TINY} --width=2"])
    assert capsys.readouterr().out.count(": reading the finished run in") == 2
    assert again["models"]["narrow"]["accuracy"] == result["models"]["narrow"]["accuracy"]


def test_the_latent_study_resumes_the_newest_one_without_a_run_dir(tiny_intel, tmp_path):
    args = [f"--data={tiny_intel}", "--models=AE38,fast=AE38", "--image_size=48", "--num_workers=1", "--max_steps=2",
            "--grid_images=0", "--nlm=false", "--ae_args=--batch_size=8 --grid_images=0",
            "--model_args=fast: --lr=3e-3"]
    (tmp_path / "runs").mkdir()
    from toolkit.errors import UserError

    with pytest.raises(UserError, match="nothing_there does not exist"):  # a pretrained model is checked first,
        run_in_process("latent_study", [*args, f"--pretrained={tmp_path / 'nothing_there'}"])  # not after training
    assert not list((tmp_path / "runs").iterdir())
    first = run_in_process("latent_study", args)
    again = run_in_process("latent_study", [*args, "--resume"])
    assert again["models"]["AE38"]["psnr"]["mean"] == first["models"]["AE38"]["psnr"]["mean"]
    assert len(list((tmp_path / "runs").glob("latent-study-*"))) == 1
    # NAME=MODEL: the same model again with other options, a row of its own off the family's curve
    study = next((tmp_path / "runs").glob("latent-study-*"))
    variant = json.loads((study / "fast" / "seed-0" / "config.json").read_text())
    assert (variant["model"], variant["variant"], variant["lr"]) == ("AE38", "fast", 3e-3)
    assert first["models"]["AE38"]["family"] and not first["models"]["fast"]["family"]
    assert first["models"]["fast"]["latent_ratio"] == first["models"]["AE38"]["latent_ratio"]
    # its W&B report: PSNR against latent size from each run's summary, grouped by model
    import wandb_workspaces.reports.v2.interface as interface

    from toolkit.wandb_report import build_report, report_spec

    spec = report_spec(study)
    assert ["config.model", "config.variant"] in [block["runset"]["groupby"] for block in spec["blocks"]
                                                  if block.get("runset")]
    interface_api = interface._get_api
    try:
        interface._get_api = lambda: _OfflineApi()
        text = json.dumps(build_report(spec, "someone")._to_model().model_dump(by_alias=True), default=str)
    finally:
        interface._get_api = interface_api
    for needle in ("latent_ratio", "test_psnr", "val/psnr", "val/grid", "latent_study/psnr_vs_latent", "Scatter Plot",
                   "autoencoder-AE38"):
        assert needle in text, needle


# ---- W&B Reports, without a network -------------------------------------------------------------------------

class _OfflineApi:
    """Stands in for wandb.Api where the report serialiser looks a project up (as the package's tests do)."""

    def __init__(self):
        self._service_api = self

    def execute_graphql(self, query, variables=None):
        return {"project": {"internalId": "UHJvamVjdEludGVybmFsSWQ6MQ=="}}


def test_wandb_report_of_a_comparison_is_built_and_serialised_offline(tiny_intel, tmp_path, monkeypatch, capsys):
    import wandb_workspaces.reports.v2.interface as interface

    from toolkit.cli import main as toolkit_main
    from toolkit.wandb_report import build_report, report_spec

    monkeypatch.setenv("WANDB_MODE", "offline")
    study = tmp_path / "cmp"
    run_in_process("compare_classifiers", [
        "--models=cnn,fast_cnn", "--seeds=0,1", f"--data={tiny_intel}", f"--run_dir={study}", "--image_size=32",
        "--max_steps=2", "--num_workers=1", f"--recipe_args=cnn: {TINY} --width=4; "
        f"fast_cnn: {TINY} --widths=8,16,16,32 --train_image_sizes=24"])
    configs = [json.loads((study / m / f"seed-{s}" / "config.json").read_text()) for m in ("cnn", "fast_cnn")
               for s in (0, 1)]
    assert {c["wandb_group"] for c in configs} == {"cmp"} and {c["recipe"] for c in configs} == {"cnn", "fast_cnn"}
    assert all(f"seed-{c['seed']}" in c["wandb_tags"] for c in configs)  # tags say model and seed

    assert toolkit_main(["wandb-report", str(study)]) == 0  # no key, no network: the definition and the command
    said = capsys.readouterr().out
    assert "not published" in said and "toolkit wandb-report --publish" in said and "wandb sync" in said
    spec = json.loads((study / "wandb_report.json").read_text())
    assert spec == report_spec(study) and len(spec["runs"]) == 4 and spec["group"] == "cmp"

    monkeypatch.setattr(interface, "_get_api", lambda: _OfflineApi())
    model = build_report(spec, entity="someone")._to_model()
    text = json.dumps(model.model_dump(by_alias=True, exclude_none=True), default=str)
    for needle in ("val/accuracy", "test/accuracy", "test/accuracy_forest", "plots/confusion", "train/loss",
                   "time/train_minutes", "comparison/accuracy", '"cmp"', "fast_cnn", "recipe"):
        assert needle in text, needle
    panel_types = {panel["viewType"] for block in model.model_dump(by_alias=True)["spec"]["blocks"]
                   if block.get("type") == "panel-grid" for panel in block["metadata"]["panelBankSectionConfig"]
                   ["panels"]}
    assert {"Run History Line Plot", "Bar Chart", "Media Browser", "Run Comparer"} <= panel_types


def test_wandb_report_refuses_a_folder_that_holds_no_study(tmp_path, capsys):
    from toolkit.cli import main as toolkit_main

    assert toolkit_main(["wandb-report", str(tmp_path)]) == 2
    assert "holds no finished study" in capsys.readouterr().err


def test_the_baselines_subset_is_spread_over_the_held_out_images_not_their_first_classes():
    from toolkit.latent import spread_subset

    held_out = np.arange(100, 200)  # folder order: class by class
    subset = spread_subset(held_out, 5)
    assert subset.tolist() == [100, 125, 150, 174, 199]  # first, last and evenly between
    assert len(set(spread_subset(held_out, 99).tolist())) == 99  # no image twice
    assert spread_subset(held_out, 0) is held_out and spread_subset(held_out, 500) is held_out
