"""The classifier recipes end to end on tiny synthetic data: run directories, W&B, resume, errors."""

from __future__ import annotations

import json
import os
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import RECIPES, ROOT, TINY_CLASSIFIER, load_recipe, run_command_line, run_script
from PIL import Image
from safetensors.torch import load_file

from toolkit.config import parse_config
from toolkit.data.folders import INTEL_DOWNLOAD_HINT
from toolkit.errors import UserError
from toolkit.runs import read_metrics
from toolkit.train.precision import cpu_bf16_is_faster


def run_in_process(name: str, args: list[str]) -> dict:
    recipe = load_recipe(name)
    return recipe.main(parse_config(recipe.Config, args))


def final_weights(run_dir: Path) -> dict:
    newest = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    return load_file(newest / "model.safetensors")


def assert_same_final_weights(run_a: Path, run_b: Path) -> None:
    """Bit-identical weights in the newest checkpoints of two runs."""
    a, b = final_weights(run_a), final_weights(run_b)
    assert a.keys() == b.keys()
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_cnn_recipe_writes_a_complete_run(tiny_intel, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = tmp_path / "run"
    summary = run_in_process("cnn", [f"--data={tiny_intel}", f"--run_dir={run_dir}", "--width=4", *TINY_CLASSIFIER,
                                     "--figures=true"])
    assert summary["test_split"] == "seg_test" and summary["test_images"] == 36
    # a temperature fitted on 12 validation images is said to be uncertain (it can make held-out calibration worse)
    assert "a temperature fitted on 12 validation images is uncertain" in capsys.readouterr().out
    # 96 training images - 12 for validation, in batches of 16, for 2 epochs
    assert 0 <= summary["test_accuracy"] <= 1 and summary["steps"] == 2 * (84 // 16)
    for name in ("config.json", "metrics.jsonl", "summary.json", "plots/learning_curves.png", "plots/confusion.png",
                 "plots/per_class_accuracy.png", "plots/test_examples.png", "tables/test_per_class.json"):
        assert (run_dir / name).is_file(), name
    records = read_metrics(run_dir)
    assert [r["step"] for r in records if "train/loss" in r] == list(range(1, 11))
    assert any("val/accuracy" in r and "train/accuracy_running" in r for r in records)
    assert all(r["train/images_per_s"] > 0 for r in records if "train/images_per_s" in r)
    state = json.loads((sorted((run_dir / "checkpoints").glob("step-*"))[-1] / "trainer_state.json").read_text())
    auto_precision = "bf16" if cpu_bf16_is_faster() else "no"  # what --mixed_precision=auto picks on this CPU
    assert state["mixed_precision"] == auto_precision and state["num_processes"] == 1 and state["split"]["fingerprint"]
    assert state["classes"] == ["buildings", "forest", "glacier", "mountain", "sea", "street"]
    assert state["model_spec"]["name"] == "SceneCNN" and state["preprocessing"]["image_size"] == 32
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    assert json.loads((run_dir / "config.json").read_text())["width"] == 4


def test_resnet18_recipe_runs_and_records_its_weights(tiny_intel, tmp_path):
    summary = run_in_process("resnet18", [f"--data={tiny_intel}", f"--run_dir={tmp_path / 'r'}", "--weights=none",
                                          "--max_steps=3", "--lr=1e-3", *TINY_CLASSIFIER])
    assert summary["steps"] == 3 and summary["weights"] == "random initialisation"
    assert (tmp_path / "r" / "summary.json").is_file()
    # --figures=false (in TINY_CLASSIFIER): the tables and the test predictions, no figure
    assert not (tmp_path / "r" / "plots").exists()
    for name in ("tables/test_per_class.json", "tables/test_confusion.json", "test_probabilities.npy"):
        assert (tmp_path / "r" / name).is_file(), name


def test_resume_after_a_stop_equals_an_uninterrupted_run(tiny_intel, tmp_path):
    common = [f"--data={tiny_intel}", "--width=4", "--dropout=0.5", *TINY_CLASSIFIER]
    whole = run_in_process("cnn", [*common, f"--run_dir={tmp_path / 'whole'}"])
    run_in_process("cnn", [*common, f"--run_dir={tmp_path / 'split'}", "--max_steps=5"])  # stops mid-epoch 2
    resumed = run_in_process("cnn", [*common, f"--run_dir={tmp_path / 'split'}", "--resume"])
    assert_same_final_weights(tmp_path / "whole", tmp_path / "split")
    assert resumed["test_accuracy"] == whole["test_accuracy"] and resumed["test_loss"] == whole["test_loss"]


@pytest.mark.parametrize("recipe, options", [("cnn", ["--width=4", "--dropout=0.5"]),
                                             ("resnet18", ["--weights=none", "--lr=1e-3"])])
def test_a_classifier_time_budget_trains_exactly_as_the_epochs_it_chose(tiny_intel, tmp_path, recipe, options,
                                                                         capsys):
    """--train_minutes in the classifier recipes: the step is timed on stand-in images, then everything it touched
    is put back (weights, Adam, BatchNorm statistics, and the global generators the CNN's dropout draws from), so
    a budget shorter than one epoch trains the weights of --epochs=1, and a resumed run keeps the choice. The
    --epochs given beside it is said to be unused."""
    common = [f"--data={tiny_intel}", *options, *TINY_CLASSIFIER]
    budget = run_in_process(recipe, [*common, "--train_minutes=0.0001", f"--run_dir={tmp_path / 'budget'}"])
    assert "[budget] note: --epochs=2 is not used: --train_minutes=0.0001 chooses the epochs" in capsys.readouterr().out
    chosen = budget["budget"]
    assert chosen["epochs"] == 1 and chosen["steps"] == budget["steps"] == 84 // 16 and chosen["seconds_per_step"] > 0
    assert json.loads((tmp_path / "budget" / "config.json").read_text())["budget"] == chosen
    run_in_process(recipe, [*common, "--epochs=1", f"--run_dir={tmp_path / 'epochs'}"])
    assert_same_final_weights(tmp_path / "budget", tmp_path / "epochs")

    if recipe == "cnn":  # the loop keeps the choice on resume, whatever the model: checked once
        split = [*common, "--train_minutes=0.0001", f"--run_dir={tmp_path / 'split'}"]
        run_in_process(recipe, [*split, "--max_steps=2"])
        resumed = run_in_process(recipe, [*split, "--resume"])
        assert resumed["budget"] == json.loads((tmp_path / "split" / "config.json").read_text())["budget"]
        assert_same_final_weights(tmp_path / "budget", tmp_path / "split")
    with pytest.raises(UserError, match="train_minutes"):
        run_in_process(recipe, [*common, "--train_minutes=-1", f"--run_dir={tmp_path / 'bad'}"])


def test_compare_classifiers_writes_the_side_by_side_table_and_reuses_only_matching_runs(tiny_intel, tmp_path):
    run_dir = tmp_path / "cmp"
    tiny = "--batch_size=16 --eval_batch_size=32"
    args = [f"--data={tiny_intel}", f"--run_dir={run_dir}", "--max_steps=2", "--resnet_weights=none",
            "--image_size=32", "--num_workers=1", f"--recipe_args=cnn: {tiny} --width=4; resnet18: {tiny}"]
    result = run_in_process("compare_classifiers", args)
    table = (run_dir / "comparison.md").read_text()
    assert "| class | cnn | resnet18 |" in table and "| overall |" in table and "| test loss |" in table
    assert "test 36 (seg_test); seeds 0." in table  # the split named once
    assert set(result["models"]) == {"cnn", "resnet18"} and "McNemar" in table
    assert (run_dir / "plots" / "per_class_comparison.png").is_file()
    assert (run_dir / "cnn" / "seed-0" / "summary.json").is_file()
    first = result["models"]["cnn"]["accuracy"]["mean"]
    again = run_in_process("compare_classifiers", args)  # the same settings: the finished runs are read back
    assert again["models"]["cnn"]["accuracy"]["mean"] == first
    changed = [a for a in args if not a.startswith("--image_size")] + ["--image_size=24"]
    with pytest.raises(UserError, match="image_size: 32 there, 24 now"):
        run_in_process("compare_classifiers", changed)  # a finished run with another size is never reused


def test_compare_checks_sub_recipe_options_before_training(tiny_intel, tmp_path):
    from toolkit.errors import ConfigError

    with pytest.raises(ConfigError, match="Did you mean --width"):
        run_in_process("compare_classifiers", [f"--data={tiny_intel}", f"--run_dir={tmp_path}",
                                               "--recipe_args=cnn: --widht=3"])
    assert not (tmp_path / "cnn").exists()
    with pytest.raises(ConfigError, match="--seeds"):
        run_in_process("compare_classifiers", [f"--data={tiny_intel}", f"--run_dir={tmp_path}", "--seed=3"])


def test_bad_command_lines_get_one_line_errors(tmp_path, capsys):
    for argument, message in (("--lr=-1", "--lr must be greater than 0"),
                              ("--batch_size=0", "--batch_size must be greater than 0"),
                              ("--epohcs=3", "Did you mean --epochs?"),
                              ("--width=wide", "--width expects a whole number"),
                              ("--data=/definitely/missing", "does not exist"),
                              (f"--data={Path(__file__)}", "is a file: pass the folder")):
        status, _, err = run_command_line("cnn", [argument, f"--run_dir={tmp_path / 'x'}"], capsys)
        assert status == 2 and message in err and "Traceback" not in err, (argument, err)
        assert not (tmp_path / "x").exists(), argument  # refused before the run's folder and W&B run are made
    for recipe in ("autoencoder", "blind_denoiser"):  # the denoisers' data keys too
        status, _, err = run_command_line(recipe, ["--data=/definitely/missing", f"--run_dir={tmp_path / 'x'}"],
                                          capsys)
        assert status == 2 and "data folder /definitely/missing does not exist" in err and not (tmp_path / "x").exists()
    # a key that applies to another mode or model is refused, not ignored
    for recipe, arguments, message in (
            ("efficientnet_lite0", ["--mode=finetune", "--train_from_block=8"], "--train_from_block applies to "
                                                                                 "--mode=top only"),
            ("fast_cnn", ["--model=SceneCNN", "--widths=8,16,32,64"], "--widths applies to --model=FastResNet only")):
        status, _, err = run_command_line(recipe, [*arguments, f"--run_dir={tmp_path / 'x'}"], capsys)
        assert status == 2 and message in err, (recipe, err)
    # averages, dropouts and momenta are shares of one: 1 or more is refused, not trained with
    for recipe, argument in (("blind_denoiser", "--ema_decay=2"), ("efficientnet_lite0", "--ema_decay=1"),
                             ("fast_cnn", "--momentum=1.5"), ("fast_cnn", "--dropout=1"), ("cnn", "--dropout=1")):
        status, _, err = run_command_line(recipe, [argument, f"--run_dir={tmp_path / 'x'}"], capsys)
        key = argument[2:].split("=")[0]
        assert status == 2 and f"--{key} must be at least 0 and below 1" in err, (recipe, argument, err)


def test_a_data_folder_a_run_cannot_use_is_refused_before_the_run_folder(tmp_path, tiny_intel, capsys):
    """What is in the data folder is checked before the run's folder and W&B run are made, not only whether it is
    there: no split, no class folders, one class, a test folder of other classes, a named test folder missing, a
    denoiser's folder without images or with one, a class or a pool of files that do not decode."""
    def image(path: Path, seed: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(path)

    for index in range(3):
        image(tmp_path / "one_class" / "beach" / f"{index}.png", index)
        image(tmp_path / "other_test" / "seg_train" / ["beach", "forest", "sea"][index] / "a.png", index)
    image(tmp_path / "other_test" / "seg_test" / "desert" / "a.png", 9)
    (tmp_path / "imageless" / "seg_train" / "beach").mkdir(parents=True)
    (tmp_path / "imageless" / "seg_train" / "sea").mkdir()
    (tmp_path / "one_image").mkdir()
    image(tmp_path / "one_image" / "a.png", 5)
    # files no decoder reads: a class of them, a pool of them, clean photographs of which one decodes
    for index in range(2):
        image(tmp_path / "broken_class" / "seg_train" / "beach" / f"{index}.png", index)
        for folder in ("broken_class/seg_train/sea", "broken_pool/seg_pred", "one_decodes"):
            (tmp_path / folder).mkdir(parents=True, exist_ok=True)
            (tmp_path / folder / f"{index}.jpg").write_bytes(b"not an image")
    image(tmp_path / "one_decodes" / "fine.png", 7)
    broken_train, broken_pool = tmp_path / "broken_class" / "seg_train", tmp_path / "broken_pool" / "seg_pred"
    cases = [
        ("cnn", tmp_path / "imageless" / "seg_train" / "beach", [], "no 'seg_train' split under"),
        ("cnn", tmp_path / "one_class", [], "needs images of two classes or more; "
                                            f"{tmp_path / 'one_class'} has images of 1 (beach)"),
        ("resnet18", tmp_path / "imageless", [], "has images of 0 (none)"),
        ("fast_cnn", tmp_path / "other_test", [], f"{tmp_path / 'other_test' / 'seg_test'} has classes ['desert'], "
                                                  f"but the training folder {tmp_path / 'other_test' / 'seg_train'} "
                                                  "has ['beach', 'forest', 'sea']"),
        ("cnn", tiny_intel, ["--test_split=seg_tset"], "no test folder 'seg_tset' under"),
        ("autoencoder", tmp_path / "imageless", ["--pool_split=seg_train"], "seg_train holds no image files"),
        ("blind_denoiser", tmp_path / "one_image", [], "one_image holds one image file"),
        ("blind_denoiser", tmp_path / "imageless", [], "imageless holds no image files"),
        ("cnn", tmp_path / "broken_class", [], f"none of the 2 image files of class 'sea' in {broken_train} can be "
                                               "decoded (the first: "),
        ("autoencoder", tmp_path / "broken_pool", [], f"none of the 2 image files in {broken_pool} can be decoded"),
        ("blind_denoiser", tmp_path / "one_decodes", [], "one_decodes: 1 of its image files can be decoded"),
    ]
    for recipe, data, arguments, message in cases:
        status, _, err = run_command_line(recipe, [f"--data={data}", *arguments, f"--run_dir={tmp_path / 'x'}"],
                                          capsys)
        assert status == 2 and message in err and "Traceback" not in err, (recipe, data, err)
        assert not (tmp_path / "x").exists(), (recipe, data)


def test_help_lists_every_key(capsys):
    status, out, _ = run_command_line("resnet18", ["--help"], capsys)
    assert status == 0
    for key in ("--weights", "--lr", "--resume", "--wandb_mode", "--holdout_fraction", "Adam learning rate"):
        assert key in out


def test_a_run_shows_a_progress_bar_with_eta_in_a_terminal_and_keeps_logs_plain(tiny_intel, tmp_path):
    args = [sys.executable, str(RECIPES / "cnn.py"), f"--data={tiny_intel}", "--width=4", *TINY_CLASSIFIER]
    shown = run_script([*args, f"--run_dir={tmp_path / 'bar'}"], env={"SCENE_TOOLKIT_PROGRESS": "1",
                                                                      "WANDB_MODE": "disabled"})
    assert shown.returncode == 0, shown.stderr[-2000:]
    bar = shown.stderr.replace("\r", "\n").splitlines()
    final = [line for line in bar if line.startswith("cnn: 100%") and "10/10" in line]
    assert final, shown.stderr[-2000:]
    assert "it/s" in final[-1] and "<00:00" in final[-1]  # rate and time left (the ETA)
    assert "epoch=2.00" in final[-1] and "loss=" in final[-1] and "img_s=" in final[-1]
    # (without a terminal there is no bar: tests/test_robustness.py's uninterrupted run checks that)


def test_a_line_every_process_says_alike_is_said_once_per_launch(monkeypatch, capsys):
    """With several processes, an error each finds alike is printed once per machine, a line of one process's own
    by it; alone, every line is printed. (Two real processes: tests/test_multiprocess.py.)"""
    from toolkit import errors

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", uuid.uuid4().hex)  # this launch's, whatever ran before
    monkeypatch.setenv("WORLD_SIZE", "2")
    for line in ("error: the same", "error: the same", "error: process 1: its own", "error: the same"):
        errors.say_once_per_machine(line)
    assert capsys.readouterr().err.splitlines() == ["error: the same", "error: process 1: its own"]
    monkeypatch.setattr(errors, "MARKER_FRESH_S", -1)  # a marker from before a launch's moments: another launch's
    errors.say_once_per_machine("error: the same")
    assert capsys.readouterr().err == "error: the same\n"
    monkeypatch.setenv("WORLD_SIZE", "1")
    errors.say_once_per_machine("error: alone")
    errors.say_once_per_machine("error: alone")
    assert capsys.readouterr().err == "error: alone\nerror: alone\n"


def launcher_env(**extra: str) -> dict:
    """Environment for an `accelerate launch` subprocess: this interpreter's bin folder first on PATH, W&B off."""
    return {"PATH": str(Path(sys.executable).parent) + ":" + os.environ["PATH"], "WANDB_MODE": "disabled", **extra}


def test_accelerate_launch_quiet_leaves_a_recipes_one_line_error_alone(tmp_path):
    """A missing data folder under `accelerate launch -q` (the README's advice): the recipe's one `error:` line saying
    what to fix, and no launcher traceback after it (without -q, accelerate adds a CalledProcessError of its own)."""
    result = run_script(["accelerate", "launch", "-q", "--config_file", str(ROOT / "accelerate_config.yaml"),
                         str(RECIPES / "cnn.py"), f"--data={tmp_path / 'no-such-folder'}",
                         f"--run_dir={tmp_path / 'run'}"], env=launcher_env())
    assert result.returncode == 1, result.stderr[-2000:]  # the launcher's code for any failure of its process
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr[-2000:]  # said once, and last
    assert errors[0] == f"error: data folder {tmp_path / 'no-such-folder'} does not exist. {INTEL_DOWNLOAD_HINT}"
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.slow
def test_accelerate_launch_precision_explicit_no_means_fp32(tiny_intel, tmp_path):
    """`accelerate launch` runs a recipe. On a CPU declared to have native bf16, auto picks bf16; `accelerate launch
    --mixed_precision no` and a config file saying mixed_precision: 'no' are explicit choices of fp32, obeyed."""
    env = launcher_env(SCENE_TOOLKIT_CPU_BF16="1")
    recipe = [str(RECIPES / "cnn.py"), f"--data={tiny_intel}", "--width=4", *TINY_CLASSIFIER, "--max_steps=1"]
    config = tmp_path / "fp32.yaml"
    config.write_text((ROOT / "accelerate_config.yaml").read_text().replace('# mixed_precision: "no"',
                                                                            'mixed_precision: "no"'))
    cases = {"unset": ["--config_file", str(ROOT / "accelerate_config.yaml")],
             "flag": ["--config_file", str(ROOT / "accelerate_config.yaml"), "--mixed_precision", "no"],
             "config": ["--config_file", str(config)]}
    used = {}
    workers = {"unset": 2, "flag": 1, "config": 1}
    with ThreadPoolExecutor(len(cases)) as pool:  # three launches at once: their start-up is most of their time
        launched = {name: pool.submit(run_script, ["accelerate", "launch", *launch, *recipe,
                                                   f"--run_dir={tmp_path / name}", f"--num_workers={workers[name]}"],
                                      env=env)
                    for name, launch in cases.items()}
    for name, future in launched.items():
        result = future.result()
        assert result.returncode == 0, result.stderr[-3000:]
        recorded = json.loads((tmp_path / name / "config.json").read_text())
        used[name] = recorded["mixed_precision_used"]
        # accelerate launch starts each process at one PyTorch thread (OMP_NUM_THREADS=1): the run trains with as
        # many as FFCV's decoding threads
        assert recorded["torch_threads"] == recorded["num_workers"] == workers[name]
        assert (tmp_path / name / "summary.json").is_file()
    assert used == {"unset": "bf16", "flag": "no", "config": "no"}


@pytest.mark.parametrize("recipe, model", [("blind_denoiser", "resunet"), ("autoencoder", "unet"),
                                           ("fast_cnn", "FastResNet")])
def test_a_bad_model_setting_is_refused_before_any_run_directory_or_data(recipe, model, tmp_path):
    """Checked on torch's meta device before the run starts: no run directory, no data prepared, and the recipe
    says what the model takes."""
    from toolkit.errors import ConfigError

    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    with pytest.raises(ConfigError, match=f"cannot build {model} with .*'colour': 3.*; it takes: "):
        run_in_process(recipe, [f"--model={model}", "--model_kwargs=colour=3", f"--run_dir={run_dir}",
                                f"--cache_dir={cache}", "--data=synthetic"])
    assert not run_dir.exists() and not cache.exists()


def test_two_spellings_of_one_data_folder_are_one_setting(tmp_path, monkeypatch):
    """A run resumed, or a study's finished sub-run read back, with --data spelled another way (relative or absolute,
    through a link) is the same run; another folder, or a folder not there, is still another setting."""
    from toolkit.runs import config_differences

    (tmp_path / "data").mkdir()
    (tmp_path / "here").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "data")
    monkeypatch.chdir(tmp_path / "here")
    assert config_differences({"data": "../data"}, {"data": str(tmp_path / "data")}) == {}
    assert config_differences({"data": str(tmp_path / "link")}, {"data": "../data"}) == {}
    assert config_differences({"weights": "../data"}, {"weights": "../link"}) == {}
    assert config_differences({"data": "../here"}, {"data": "../data"}) == {"data": ("../here", "../data")}
    assert config_differences({"data": "gone"}, {"data": str(tmp_path / "here" / "gone")}) != {}  # not there
    assert config_differences({"train_split": "../data"}, {"train_split": "../link"}) != {}  # not a path


def test_a_run_started_before_an_option_existed_resumes_as_that_options_default(tmp_path, capsys):
    """A config.json without a key (written before the option was added) reads as the option's default, which does
    what the recipe did before it: the run resumes; asking for another value is still refused."""
    run_dir = tmp_path / "older"
    args = ["--data=synthetic", "--tile_size=48", "--patch_size=32", "--batch_size=4", "--epochs=1",
            "--eval_every=0", "--checkpoint_every=2", "--num_workers=1", "--grid_images=0",
            "--model_kwargs=widths=(8,16,32),blocks=1", f"--run_dir={run_dir}"]
    run_in_process("blind_denoiser", [*args, "--max_steps=2"])
    config_file = run_dir / "config.json"
    older = {key: value for key, value in json.loads(config_file.read_text()).items() if key != "reductions"}
    config_file.write_text(json.dumps(older))
    with pytest.raises(UserError, match=r"reductions: '1' there, '1,2' now"):
        run_in_process("blind_denoiser", [*args, "--resume", "--reductions=1,2"])
    config_file.write_text(json.dumps(older))
    assert run_in_process("blind_denoiser", [*args, "--resume"])["steps"] > 2
