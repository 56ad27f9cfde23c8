"""Predict, evaluate and report: self-contained checkpoints, bad files, hand-checked metrics, a real browser."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import TINY_CLASSIFIER, run_script, run_toolkit_without_heavy_imports
from PIL import Image
from test_recipes import run_in_process

from toolkit.cli import main as toolkit_main
from toolkit.predict import inference_precision, predict_files

TOOLKIT = [sys.executable, "-m", "toolkit.cli"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def trained(tiny_intel, cache_dir, tmp_path_factory) -> Path:
    """A tiny CNN run on the synthetic scenes (module-wide: several tests use it)."""
    import os

    from conftest import _reset_accelerate

    run_dir = tmp_path_factory.mktemp("trained") / "cnn"
    os.environ.setdefault("WANDB_MODE", "disabled")
    run_in_process("cnn", [f"--data={tiny_intel}", f"--run_dir={run_dir}", "--width=4", "--epochs=3",
                           *TINY_CLASSIFIER[1:], "--figures=true",  # the report shows its figures
                           f"--cache_dir={cache_dir}"])  # (set up before the tests' own environment)
    _reset_accelerate()
    return run_dir


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_predict_a_folder_with_bad_files_writes_every_row(trained, tiny_intel, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(tiny_intel / "seg_pred", folder)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    (folder / "empty.png").write_bytes(b"")
    Image.fromarray(np.full((30, 50), 90, np.uint8), mode="L").save(folder / "gray.png")  # converted, kept
    out = tmp_path / "p.csv"
    assert toolkit_main(["predict", str(trained), str(folder), "--out", str(out), "--top_k", "3",
                         "--wandb_mode=offline"]) == 0
    rows = _read_csv(out)
    assert len(rows) == 12 + 3
    errors = {Path(r["file"]).name: r["error"] for r in rows if r["error"]}
    assert set(errors) == {"broken.jpg", "empty.png"} and "empty file" in errors["empty.png"]
    # the same predictions as a W&B run (offline here), beside the CSV
    logged = tmp_path / "p-wandb"
    assert list((logged / "wandb").glob("offline-run-*"))
    table = __import__("json").loads((logged / "tables" / "predict_predictions.json").read_text())
    assert [(row[0], row[1]) for row in table["rows"]] == [(r["file"], r["predicted"]) for r in rows]
    summary = __import__("json").loads((logged / "summary.json").read_text())
    assert summary["images"] == 15 and summary["skipped"] == 2
    assert sum(summary[f"predicted_{name}"] for name in ["buildings", "forest", "glacier", "mountain", "sea",
                                                            "street"]) == 13
    classes = ["buildings", "forest", "glacier", "mountain", "sea", "street"]
    for row in rows:
        if row["error"]:
            continue
        probabilities = [float(row[f"p_{c}"]) for c in classes]
        assert abs(sum(probabilities) - 1) < 1e-3
        assert row["predicted"] == classes[int(np.argmax(probabilities))]
        assert float(row["probability"]) >= float(row["top2_probability"]) >= float(row["top3_probability"])


def test_predict_from_a_list_and_flip_tta(trained, tiny_intel, tmp_path):
    files = sorted((tiny_intel / "seg_test" / "sea").glob("*.jpg"))[:3]
    listing = tmp_path / "list.txt"
    listing.write_text("# three sea scenes\n\n" + "\n".join(map(str, files)))  # a comment and a blank line
    plain = predict_files(str(trained), files, flip_tta=False, progress=False)
    mirrored = predict_files(str(trained), files, flip_tta=True, progress=False)
    assert plain.probabilities.shape == (3, 6) and not np.allclose(plain.probabilities, mirrored.probabilities)
    assert toolkit_main(["predict", str(trained), f"@{listing}", "--out", str(tmp_path / "l.csv")]) == 0
    assert len(_read_csv(tmp_path / "l.csv")) == 3
    from toolkit.errors import UserError
    from toolkit.predict import collect_inputs

    (tmp_path / "only_comments.txt").write_text("# nothing yet\n\n")
    for argument, message in ((f"@{files[0]}", "is not text: pass @FILE"), (f"@{tmp_path}", "is a folder"),
                              (f"@{tmp_path / 'only_comments.txt'}", "lists no paths")):
        with pytest.raises(UserError, match=message):
            collect_inputs([argument])


def test_a_checkpoint_alone_is_enough_in_a_fresh_process(trained, tiny_intel, tmp_path):
    newest = sorted((trained / "checkpoints").glob("step-*"))[-1]
    alone = tmp_path / "shipped"
    shutil.copytree(newest, alone)  # nothing else of the run travels
    image = sorted((tiny_intel / "seg_test" / "forest").glob("*.jpg"))[0]
    result = run_toolkit_without_heavy_imports(["predict", str(alone), str(image), "--out", str(tmp_path / "one.csv")])
    assert result.returncode == 0, result.stderr[-2000:]
    here = predict_files(str(trained), [image], progress=False)
    there = _read_csv(tmp_path / "one.csv")[0]
    assert there["predicted"] == here.classes[int(here.probabilities[0].argmax())]
    assert abs(float(there["probability"]) - float(here.probabilities[0].max())) < 1e-5


def test_predict_refuses_wrong_inputs_with_one_line(trained, tmp_path):
    for args, message in ((["predict", str(trained), str(tmp_path / "absent")], "does not exist"),
                          (["predict", str(tmp_path), str(tmp_path)], "no complete checkpoint")):
        result = run_script([*TOOLKIT, *args])
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_each_command_refuses_the_other_kind_of_model_with_one_line(trained, tiny_intel, tmp_path, capsys):
    """A classifier's run given to the commands that denoise, or a denoiser's to the ones that classify, stops at
    once with one line naming the commands that serve it (benchmark-denoiser used to fail deep in the network)."""
    denoiser = tmp_path / "blind"
    run_in_process("blind_denoiser", ["--data=synthetic", "--tile_size=48", "--patch_size=32", "--batch_size=4",
                                      "--eval_every=0", "--num_workers=1", "--grid_images=0", "--max_steps=1",
                                      "--model_kwargs=widths=(8,16,32),blocks=1", f"--run_dir={denoiser}"])
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(image)
    capsys.readouterr()
    for args, message in (
            (["denoise", str(trained), str(image), str(tmp_path / "out.png")], "not a denoiser"),
            (["benchmark-denoiser", str(trained), "--clean", str(tmp_path), "--out", str(tmp_path / "b.json")],
             "not a denoiser"),
            (["predict", str(denoiser), str(image)], "not a classifier"),
            (["evaluate", str(denoiser), str(tiny_intel / "seg_test")], "not a classifier"),
            (["calibrate", str(denoiser), str(tiny_intel)], "not a classifier")):
        assert toolkit_main(args) == 2, args
        said = capsys.readouterr().err
        assert message in said and said.count("\n") == 1, (args, said)
    assert not (tmp_path / "out.png").exists() and not (tmp_path / "b.json").exists()


def test_the_classifier_commands_check_the_device_as_the_denoiser_commands_do(trained, tiny_intel, monkeypatch,
                                                                              capsys):
    """--device names cpu or a CUDA GPU torch sees (predict, evaluate and calibrate failed deep in torch)."""
    import torch

    from toolkit.errors import UserError
    from toolkit.inference import inference_device

    assert inference_device("cpu") == torch.device("cpu")
    for requested, message in (("mps", "runs its models on cpu or cuda"), ("gpu", "not a torch device")):
        with pytest.raises(UserError, match=message):
            inference_device(requested)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with two GPUs, asked for a third
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert inference_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(UserError, match="cuda:2, but torch sees 2 GPU"):
        inference_device("cuda:2")
    monkeypatch.undo()
    for args in (["predict", str(trained), str(tiny_intel / "seg_pred")], ["evaluate", str(trained),
                 str(tiny_intel / "seg_test")], ["calibrate", str(trained), str(tiny_intel)]):
        assert toolkit_main([*args, "--device", "mps"]) == 2
        assert "runs its models on cpu or cuda" in capsys.readouterr().err


def test_evaluate_agrees_with_the_predictions_it_writes(trained, tiny_intel, tmp_path):
    out = tmp_path / "evaluation"
    assert toolkit_main(["evaluate", str(trained), str(tiny_intel / "seg_test"), "--out", str(out),
                         "--wandb_mode=offline"]) == 0
    import json

    # logged as a W&B run too (offline here): the scores, the per-class table and the figures
    assert list((out / "wandb").glob("offline-run-*"))
    logged = json.loads((out / "summary.json").read_text())
    table = json.loads((out / "tables" / "evaluate_per_class.json").read_text())
    assert table["columns"] == ["class", "precision", "recall", "F1", "images"] and len(table["rows"]) == 6

    metrics = json.loads((out / "metrics.json").read_text())
    assert "NaN" not in (out / "metrics.json").read_text()  # standard JSON: a class never predicted has null
    assert not list(out.glob(".*"))  # every file written whole, nothing left beside
    rows = _read_csv(out / "predictions.csv")
    truth = [Path(r["file"]).parent.name for r in rows]
    assert metrics["n"] == 36 == logged["n"] and logged["accuracy"] == metrics["accuracy"]
    assert metrics["accuracy"] == pytest.approx(np.mean([r["predicted"] == t for r, t in zip(rows, truth)]))
    confusion = np.array(metrics["confusion"])
    classes = metrics["classes"]
    for i, name in enumerate(classes):  # recall from the CSV, by hand
        mine = [r for r, t in zip(rows, truth) if t == name]
        assert metrics["recall"][i] == pytest.approx(np.mean([r["predicted"] == name for r in mine]))
        assert confusion[i].sum() == len(mine)
    assert 0 <= metrics["ece"] <= 1
    for figure in ("confusion.png", "per_class.png", "reliability.png"):
        assert (out / figure).is_file()


def test_the_run_fits_a_temperature_that_predict_and_evaluate_apply(trained, tiny_intel, tmp_path):
    import json

    from toolkit.inference import resolve_checkpoint
    from toolkit.train.evaluate import with_temperature
    from toolkit.train.state import TrainerState

    summary = json.loads((trained / "summary.json").read_text())
    temperature = TrainerState.read(resolve_checkpoint(trained)).temperature
    assert temperature == summary["temperature"] and temperature != 1.0 and 0.05 <= temperature <= 20
    assert {"val_ece", "test_ece", "test_ece_calibrated", "test_loss_calibrated"} <= set(summary)
    folder = str(tiny_intel / "seg_test")
    assert toolkit_main(["predict", str(trained), folder, "--out", str(tmp_path / "calibrated.csv")]) == 0
    assert toolkit_main(["predict", str(trained), folder, "--out", str(tmp_path / "plain.csv"),
                         "--no-calibrated"]) == 0
    columns = [f"p_{name}" for name in summary["classes"]]
    calibrated, plain = ([[float(row[c]) for c in columns] for row in _read_csv(tmp_path / name)]
                         for name in ("calibrated.csv", "plain.csv"))
    assert np.allclose(calibrated, with_temperature(np.array(plain), temperature), atol=2e-5)
    assert (np.argmax(calibrated, 1) == np.argmax(plain, 1)).all()
    assert toolkit_main(["evaluate", str(trained), folder, "--out", str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["temperature"] == temperature


def test_calibrate_fits_an_old_runs_temperature_on_exactly_its_validation_images(trained, tiny_intel, tmp_path,
                                                                                   capsys):
    """A run trained before calibration (temperature 1) gets the temperature the recipe itself fitted: the images
    it never trained on are found by their pixels, which is its validation split here (its test is a folder)."""
    from toolkit.data.images import load_rgb, pixel_hash
    from toolkit.inference import resolve_checkpoint
    from toolkit.train.state import TrainerState

    old = tmp_path / "old"
    shutil.copytree(trained, old, ignore=shutil.ignore_patterns("wandb"))
    checkpoint = resolve_checkpoint(old)
    state = TrainerState.read(checkpoint)
    fitted_by_the_run = state.temperature
    state.temperature = 1.0
    state.write(checkpoint)
    out = tmp_path / "calibration"
    assert toolkit_main(["calibrate", str(old), str(tiny_intel), "--out", str(out), "--wandb_mode=offline"]) == 0
    printed = capsys.readouterr().out
    state = TrainerState.read(checkpoint)
    assert state.temperature == pytest.approx(fitted_by_the_run, rel=1e-3)
    assert state.extra["calibration"]["images"] == 6 * 16 - len(state.split["train_pixels"])
    assert "temperature 1.000 -> " in printed and "trainer_state.json" in printed
    # what it measured, before and after, as a JSON, two reliability diagrams and a W&B run (offline here)
    import json

    written = json.loads((out / "calibration.json").read_text())
    logged = json.loads((out / "summary.json").read_text())
    assert written["images"] == state.extra["calibration"]["images"] == logged["images"]
    assert written["temperature"] == state.temperature == logged["temperature"] and logged["temperature_before"] == 1
    assert written["loss_calibrated"] <= written["loss_as_trained"] and 0 <= written["accuracy"] <= 1
    assert sum(written["reliability_as_trained"]["count"]) == written["images"]
    from toolkit.plots import plot_reliability  # the diagram drawn again from the JSON, whose empty bins are null

    assert None in written["reliability_as_trained"]["accuracy"]
    assert plot_reliability(written["reliability_as_trained"], written["ece_as_trained"], tmp_path / "again.png",
                            "as trained").is_file()
    assert (out / "reliability_as_trained.png").is_file() and (out / "reliability_calibrated.png").is_file()
    assert list((out / "wandb").glob("offline-run-*"))
    assert toolkit_main(["report", str(out), "--out", str(tmp_path / "page"), "--wandb_mode=disabled"]) == 0
    page = (tmp_path / "page" / "index.html").read_text()
    assert f"temperature 1.000 → {state.temperature:.3f}" in page and page.count("<img") == 2
    # a folder the run trained on entirely leaves nothing to fit on; a checkpoint without a split record is refused
    seen = tmp_path / "seen"
    trained_pixels = set(state.split["train_pixels"])
    for file in sorted((tiny_intel / "seg_train").rglob("*.jpg")):
        if pixel_hash(load_rgb(file))[:16] in trained_pixels:
            (seen / file.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(file, seen / file.parent.name / file.name)
    assert toolkit_main(["calibrate", str(old), str(seen), "--out", str(tmp_path / "refused")]) == 2
    assert "no images are left" in capsys.readouterr().err and not (tmp_path / "refused").exists()
    state.split = None
    state.write(checkpoint)
    assert toolkit_main(["calibrate", str(old), str(tiny_intel)]) == 2
    assert "it cannot be calibrated" in capsys.readouterr().err


def test_evaluate_refuses_a_folder_with_other_classes(trained, tmp_path):
    (tmp_path / "cats").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "cats" / "a.png")
    result = run_script([*TOOLKIT, "evaluate", str(trained), str(tmp_path)])
    assert result.returncode == 2 and "the model was trained on" in result.stderr


@pytest.fixture(scope="module")
def report(trained, tiny_intel, tmp_path_factory) -> Path:
    evaluation = tmp_path_factory.mktemp("evaluation")
    assert toolkit_main(["evaluate", str(trained), str(tiny_intel / "seg_test"), "--out", str(evaluation)]) == 0
    out = tmp_path_factory.mktemp("report")
    assert toolkit_main(["report", str(trained), str(evaluation), "--out", str(out), "--wandb_mode=disabled"]) == 0
    return out / "index.html"


def test_report_shows_a_run_that_has_not_finished_as_it_stands(trained, tmp_path, capsys):
    """A run still training, or killed before its end, has config.json, metrics.jsonl and checkpoints but no
    summary: the report shows what it logged so far (its latest validation, its curves drawn now), its newest
    checkpoint and the command that continues it, for a classifier and a denoiser alike."""
    classifier = tmp_path / "classifier"
    shutil.copytree(trained, classifier)
    (classifier / "summary.json").unlink()
    denoiser = tmp_path / "denoiser"
    run_in_process("blind_denoiser", ["--data=synthetic", "--tile_size=48", "--patch_size=32", "--batch_size=4",
                                      "--eval_every=1", "--num_workers=1", "--grid_images=0", "--max_steps=2",
                                      "--model_kwargs=widths=(8,16,32),blocks=1", f"--run_dir={denoiser}"])
    (denoiser / "summary.json").unlink()
    out = tmp_path / "report"
    assert toolkit_main(["report", str(classifier), str(denoiser), "--out", str(out), "--wandb_mode=disabled"]) == 0
    page = (out / "index.html").read_text()
    for name, recipe, run_dir in (("cnn", "cnn", classifier), ("blind_denoiser-resunet", "blind_denoiser", denoiser)):
        assert f"<h2>{name} run {run_dir.name}</h2><p>Not finished: training now, or stopped before its end" in page
        assert f"continues with: accelerate launch recipes/{recipe}.py --run_dir={run_dir} --resume" in page
        assert f"{run_dir.name}: learning curves so far" in page
    assert re.search(r"latest validation \(iteration \d+\)</th>.*<td>accuracy</td><td>0\.\d{4}</td>", page)
    assert re.search(r"<td>psnr_25</td><td>\d+\.\d{4}</td>", page)
    assert sorted(path.name for path in (out / "figures").iterdir()) == [
        "01-classifier--learning-curves-so-far.png", "02-denoiser--learning-curves-so-far.png"]
    (tmp_path / "empty").mkdir()
    assert toolkit_main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r2")]) == 2
    assert "not a run, a study, an evaluation or a calibration" in capsys.readouterr().err


def test_report_is_self_contained(report):
    text = report.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), "the page refers to the network"
    assert "http://" not in text and "https://" not in text
    images = re.findall(r'<img [^>]*src="([^"]+)"', text)
    assert len(images) >= 6 and all(src.startswith("data:image/png;base64,") for src in images)
    assert len(list((report.parent / "figures").glob("*.png"))) == len(images)
    assert "learning curves" in text and "most confident mistakes" in text


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (scripts/setup.sh --browser)")
def test_report_renders_in_a_real_browser_with_every_image(report, tmp_path):
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
               f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
               report.as_uri()]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120).stdout
    loaded = re.search(r'data-images-loaded="(\d+)"', dom)
    total = re.search(r'data-images-total="(\d+)"', dom)
    assert loaded and total, dom[:500]
    assert int(total.group(1)) >= 6 and loaded.group(1) == total.group(1)
    screenshot = tmp_path / "page.png"
    subprocess.run([*command[:-2], f"--screenshot={screenshot}", "--window-size=1200,2400", report.as_uri()],
                   capture_output=True, timeout=120)
    assert screenshot.stat().st_size > 10_000  # a rendered page, not a blank one


def test_evaluate_scores_exactly_the_images_the_run_held_out_and_names_training_images(tiny_intel, tmp_path):
    """The held-out images come from the checkpoint, not from re-running the split: they are the run's own
    test images (its summary counts them), none of them was trained on, and a folder of training images is
    flagged as such."""
    from toolkit.data.images import load_rgb, pixel_hash

    pool = tmp_path / "pool"
    shutil.copytree(tiny_intel / "seg_train", pool / "seg_train")  # a training folder with no test split beside it
    run_dir = tmp_path / "run"
    summary = run_in_process("cnn", [f"--data={pool}", f"--run_dir={run_dir}", "--width=4", "--holdout_fraction=0.25",
                                     *TINY_CLASSIFIER[1:]])
    out = tmp_path / "holdout"
    assert toolkit_main(["evaluate", str(run_dir), str(pool), "--held_out", "--out", str(out)]) == 0
    rows = _read_csv(out / "predictions.csv")
    metrics = __import__("json").loads((out / "metrics.json").read_text())
    assert len(rows) == summary["test_images"] == 24  # 6 classes x round(0.25 x 16), as the run scored
    assert metrics["accuracy"] == pytest.approx(summary["test_accuracy"])  # the same images, the same model
    state = __import__("json").loads(next((run_dir / "checkpoints").glob("step-*/trainer_state.json")).read_text())
    trained = set(state["split"]["train_pixels"])
    held = {pixel_hash(load_rgb(r["file"]))[:16] for r in rows}
    assert len(held) == 24 and not held & trained and metrics["training_images"] == 0
    # a folder of the run's training images: scored, but every image is named as seen in training
    seen = tmp_path / "seen"
    train_files = [f for f in sorted((pool / "seg_train").rglob("*.jpg"))
                   if pixel_hash(load_rgb(f))[:16] in trained][:12]
    for file in train_files:
        (seen / file.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(file, seen / file.parent.name / file.name)
    for name in state["classes"]:
        (seen / name).mkdir(parents=True, exist_ok=True)
    assert toolkit_main(["evaluate", str(run_dir), str(seen), "--out", str(tmp_path / "seen-out")]) == 0
    assert __import__("json").loads((tmp_path / "seen-out" / "metrics.json").read_text())["training_images"] == 12
    # a held-out file whose pixels changed: the folder is not the one the run trained on
    victim = Path(rows[0]["file"])
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(victim)
    # (checked without importing FFCV, whose import alone took a second and, before, PyTorch's threads)
    result = run_toolkit_without_heavy_imports(["evaluate", str(run_dir), str(pool), "--held_out", "--out",
                                                str(tmp_path / "x")])
    assert result.returncode == 2 and "hold other pixels" in result.stderr, result.stderr[-2000:]


def test_an_ensemble_of_runs_predicts_and_is_evaluated_with_the_mean_of_their_probabilities(tiny_intel, tmp_path,
                                                                                             capsys):
    """Two seeds of a recipe (the same held-out images): `predict --ensemble` writes the mean of what each run
    predicts alone, `evaluate --held_out --ensemble` scores that mean on their shared held-out images; runs of other
    classes, runs that held out other images, and a denoiser are refused before anything is predicted."""
    import json

    from toolkit.inference import resolve_checkpoint
    from toolkit.train.state import TrainerState

    pool = tmp_path / "pool"
    shutil.copytree(tiny_intel / "seg_train", pool / "seg_train")
    runs = [tmp_path / f"seed-{seed}" for seed in (0, 1)]
    for seed, run_dir in enumerate(runs):
        run_in_process("cnn", [f"--data={pool}", f"--run_dir={run_dir}", "--width=4", "--holdout_fraction=0.25",
                               f"--seed={seed}", *TINY_CLASSIFIER[1:]])
    images = str(tiny_intel / "seg_pred")
    alone = []
    for index, run_dir in enumerate(runs):
        assert toolkit_main(["predict", str(run_dir), images, "--out", str(tmp_path / f"alone-{index}.csv")]) == 0
        alone.append(_read_csv(tmp_path / f"alone-{index}.csv"))
    assert toolkit_main(["predict", str(runs[0]), images, "--out", str(tmp_path / "both.csv"),
                         "--ensemble", str(runs[1])]) == 0
    assert "with an ensemble of 2 runs" in capsys.readouterr().out
    shown = run_script([*TOOLKIT, "predict", str(runs[0]), images, "--out", str(tmp_path / "shown.csv"), "--ensemble",
                        str(runs[1])], env={"SCENE_TOOLKIT_PROGRESS": "1"})  # a bar per run, named
    assert "predicting, run 2 of 2: 100%" in shown.stderr.replace("\r", "\n"), shown.stderr[-2000:]
    both = _read_csv(tmp_path / "both.csv")
    columns = [name for name in both[0] if name.startswith("p_")]
    mean = np.mean([[[float(row[c]) for c in columns] for row in rows] for rows in alone], axis=0)
    assert np.allclose([[float(row[c]) for c in columns] for row in both], mean, atol=2e-6)
    assert [row["predicted"] for row in both] == [columns[i].removeprefix("p_") for i in mean.argmax(1)]
    # the folder that holds the seeds (a comparison's model folder) is not a run: the message shows both ways
    assert toolkit_main(["predict", str(tmp_path), images, "--out", str(tmp_path / "w.csv")]) == 2
    said = capsys.readouterr().err
    assert "holds runs, not a checkpoint: seed-0, seed-1;" in said and f"--ensemble {runs[1]} ..." in said

    out = tmp_path / "evaluated"
    assert toolkit_main(["evaluate", str(runs[0]), str(pool), "--held_out", "--out", str(out),
                         "--ensemble", str(runs[1])]) == 0
    said = capsys.readouterr().out
    assert "on the runs' 24 held-out images" in said and "an ensemble of 2 runs, temperatures" in said
    assert re.search(r"ECE [0-9.]+ \((fp32|bf16); an ensemble", said)  # Accelerate's 'no' is said as fp32
    metrics = json.loads((out / "metrics.json").read_text())
    assert [m["checkpoint"] for m in metrics["ensemble"]] == [str(r) for r in runs] and metrics["temperature"] is None
    rows = _read_csv(out / "predictions.csv")
    assert len(rows) == 24 and metrics["training_images"] == 0
    truth = [Path(row["file"]).parent.name for row in rows]
    assert metrics["accuracy"] == pytest.approx(np.mean([row["predicted"] == t for row, t in zip(rows, truth)]))
    assert toolkit_main(["report", str(out), "--out", str(tmp_path / "report"), "--wandb_mode=disabled"]) == 0
    assert f"in an ensemble with {runs[1]}" in (tmp_path / "report" / "index.html").read_text()

    # --validation: the images a run neither trained on nor held out, what it validated on (the same accuracy as its
    # own final validation); of an ensemble, those no run trained on or held out (seeds validate on other images)
    from toolkit.data.images import DIGEST_CHARS, load_rgb, pixel_hash

    pixels = {file: pixel_hash(load_rgb(file))[:DIGEST_CHARS] for file in sorted((pool / "seg_train").rglob("*.jpg"))}
    splits = [TrainerState.read(resolve_checkpoint(run_dir)).split for run_dir in runs]
    unseen = [{f for f, h in pixels.items() if h not in {*split["train_pixels"], *(i["pixels"] for i in
                                                                                     split["held_out"])}}
              for split in splits]
    assert toolkit_main(["evaluate", str(runs[0]), str(pool), "--validation", "--out", str(tmp_path / "val")]) == 0
    said = capsys.readouterr()
    validated = json.loads((tmp_path / "val" / "metrics.json").read_text())
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert validated["n"] == len(unseen[0]) > 0 and f"on the run's {len(unseen[0])} validation images" in said.out
    assert {row["file"] for row in _read_csv(tmp_path / "val" / "predictions.csv")} == {str(f) for f in unseen[0]}
    assert validated["accuracy"] == pytest.approx(summary["val_accuracy"]) and "(validation images)" in \
        validated["folder"] and "temperature was fitted on its validation images" in said.err
    common = unseen[0] & unseen[1]
    status = toolkit_main(["evaluate", str(runs[0]), str(pool), "--validation", "--out", str(tmp_path / "val2"),
                           "--ensemble", str(runs[1])])
    if common:
        assert status == 0 and json.loads((tmp_path / "val2" / "metrics.json").read_text())["n"] == len(common)
    else:
        assert status == 2 and "trained on or held out by one of these runs" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one or the other, said by argparse
        toolkit_main(["evaluate", str(runs[0]), str(pool), "--validation", "--held_out"])
    assert "--held_out: not allowed with argument --validation" in capsys.readouterr().err

    def altered(name: str, change) -> str:
        copy = tmp_path / name
        shutil.copytree(runs[1], copy, ignore=shutil.ignore_patterns("wandb"))
        checkpoint = resolve_checkpoint(copy)
        state = TrainerState.read(checkpoint)
        change(state)
        state.write(checkpoint)
        return str(copy)

    reordered = altered("reordered", lambda state: state.classes.reverse())
    assert toolkit_main(["predict", str(runs[0]), images, "--out", str(tmp_path / "x.csv"),
                         "--ensemble", reordered]) == 2
    assert "an ensemble needs runs trained on the same classes" in capsys.readouterr().err
    other_split = altered("other_split", lambda state: state.split["held_out"].pop())
    assert toolkit_main(["evaluate", str(runs[0]), str(pool), "--held_out", "--out", str(tmp_path / "y"),
                         "--ensemble", other_split]) == 2
    assert "held out other images than" in capsys.readouterr().err
    run_in_process("blind_denoiser", ["--data=synthetic", "--tile_size=48", "--patch_size=32", "--batch_size=4",
                                      "--eval_every=0", "--num_workers=1", "--grid_images=0", "--max_steps=1",
                                      "--model_kwargs=widths=(8,16,32),blocks=1", f"--run_dir={tmp_path / 'blind'}"])
    assert toolkit_main(["predict", str(runs[0]), images, "--out", str(tmp_path / "z.csv"),
                         "--ensemble", str(tmp_path / "blind")]) == 2
    assert "not a classifier" in capsys.readouterr().err and not (tmp_path / "z.csv").exists()


def test_predict_and_evaluate_run_in_the_precision_the_model_was_trained_with(tiny_intel, tmp_path, monkeypatch):
    monkeypatch.setenv("SCENE_TOOLKIT_CPU_BF16", "1")  # auto picks bf16 for training (emulated here: tiny)
    run_dir = tmp_path / "bf16"
    run_in_process("cnn", [f"--data={tiny_intel}", f"--run_dir={run_dir}", "--width=4", "--max_steps=2",
                           *TINY_CLASSIFIER[1:]])
    files = sorted((tiny_intel / "seg_test" / "sea").glob("*.jpg"))[:2]
    assert predict_files(str(run_dir), files, progress=False).mixed_precision == "bf16"
    plain = predict_files(str(run_dir), files, progress=False, mixed_precision="no")
    assert plain.mixed_precision == "no" and np.isfinite(plain.probabilities).all()
    out = tmp_path / "evaluation"
    assert toolkit_main(["evaluate", str(run_dir), str(tiny_intel / "seg_test"), "--mixed_precision", "no",
                         "--out", str(out)]) == 0
    assert __import__("json").loads((out / "metrics.json").read_text())["mixed_precision"] == "no"
    # the same checkpoint on a CPU that would emulate bf16 (an AVX2 laptop): fp32 by default, saying so
    monkeypatch.setenv("SCENE_TOOLKIT_CPU_BF16", "0")
    messages = []
    assert inference_precision(None, SimpleNamespace(mixed_precision="bf16"), "cpu", log=messages.append) == "no"
    assert "trained in bf16" in messages[0] and "fp32" in messages[0]
    assert predict_files(str(run_dir), files, progress=False).mixed_precision == "no"
    asked = predict_files(str(run_dir), files, progress=False, mixed_precision="bf16")  # asked for: obeyed
    assert asked.mixed_precision == "bf16" and np.isfinite(asked.probabilities).all()
    assert inference_precision(None, SimpleNamespace(mixed_precision="fp16"), "cpu", log=messages.append) == "no"
    assert inference_precision(None, SimpleNamespace(mixed_precision="no"), "cpu", log=messages.append) == "no"


def test_classifier_commands_score_in_small_batches_on_a_cpu_keeping_freed_memory(trained):
    """On a CPU predict, evaluate and calibrate score in batches of 8 and keep freed memory in the process, so that
    the next batch's activations need no fresh pages from the system (scripts/inference_memory.py measures both).
    Checked in fresh processes: after predict_files (which the three score with), a 6 MB block comes from the heap;
    with keep_freed_memory made to do nothing, it gets a mapping of its own."""
    from toolkit.cli import classifier_batch_size

    assert classifier_batch_size(SimpleNamespace(batch_size=None, device="cpu")) == 8
    assert classifier_batch_size(SimpleNamespace(batch_size=None, device="cuda:0")) == 64
    assert classifier_batch_size(SimpleNamespace(batch_size=32, device="cpu")) == 32  # asked for: obeyed
    measure = (  # whether a 6 MB block (a batch of 8's activation at 75x75 px, 32 channels) gets a mapping of its
        # own, which the system takes back when it is freed and hands out as fresh pages for the next batch
        "import ctypes, sys, torch\n"
        "import toolkit.memory\n"
        "if sys.argv[1] == 'plain': toolkit.memory.keep_freed_memory = lambda *args, **kwargs: False\n"
        "from toolkit.predict import predict_files\n"
        "predict_files(sys.argv[2], [], device='cpu', workers=1)\n"
        "class Info(ctypes.Structure):\n"
        "    _fields_ = [(n, ctypes.c_size_t) for n in ('arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks',"
        " 'fsmblks', 'uordblks', 'fordblks', 'keepcost')]\n"
        "mallinfo2 = ctypes.CDLL('libc.so.6').mallinfo2\n"
        "mallinfo2.restype = Info\n"
        "before = mallinfo2().hblks\n"
        "block = torch.ones(6 * 2**18)\n"
        "print(mallinfo2().hblks - before)\n")
    mappings = {}
    for how in ("plain", "kept"):  # plain: predict_files with keep_freed_memory made to do nothing
        result = run_script([sys.executable, "-c", measure, how, str(trained)], timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        mappings[how] = int(result.stdout.split()[-1])
    assert mappings == {"plain": 1, "kept": 0}, mappings


def test_the_inference_memory_script_prints_both_ways_against_the_old_default(trained):
    script = Path(__file__).resolve().parents[1] / "scripts" / "inference_memory.py"
    result = run_script([sys.executable, str(script), str(trained), "--batches", "2", "4", "--images", "8"],
                        env={"WANDB_MODE": "disabled"}, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    assert len(rows) == 4 and all(float(row[-1].rstrip("x")) > 0 for row in rows)
    assert "as glibc does" in result.stdout and "kept freed" in result.stdout
    assert result.stdout.splitlines()[2].endswith("1.00x")  # the largest batch as glibc does is the baseline
