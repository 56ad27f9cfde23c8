"""toolkit export: trained models as ONNX files that onnxruntime runs to the same outputs as toolkit predict and
toolkit denoise, their metadata, the sizes they take, and refusals that leave nothing (or the old file) behind."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from conftest import TINY_CLASSIFIER, run_script
from PIL import Image
from test_recipes import run_in_process

import toolkit.export
from toolkit.cli import main as toolkit_main
from toolkit.data.images import load_for_restoration, load_rgb
from toolkit.inference import exported_metadata
from toolkit.predict import predict_files, predict_runs
from toolkit.train.precision import cpu_has_int8_dot_products

BLIND = ["--tile_size=48", "--patch_size=32", "--batch_size=4", "--eval_batch_size=8", "--epochs=1", "--max_steps=3",
         "--num_workers=1", "--model_kwargs=widths=(8,16,32),blocks=1", "--figures=false"]


def metadata(path: Path) -> dict:
    """The scene_toolkit.* entries of an ONNX file's metadata, JSON read back (as toolkit denoise reads them)."""
    return exported_metadata(session(path))


def offline_wandb_bytes(folder: Path, *expected: bytes, timeout_s: float = 30.0) -> bytes:
    """The bytes of the one offline W&B run file below `folder`, once they hold every `expected` string: W&B's
    service may still be flushing the file for a moment after the run has finished (a file of its header alone was
    once read here under load)."""
    import time

    (logged,) = folder.glob("offline-run-*/run-*.wandb")
    deadline = time.monotonic() + timeout_s
    while not all(part in logged.read_bytes() for part in expected) and time.monotonic() < deadline:
        time.sleep(0.2)
    return logged.read_bytes()


def int8_weight_bits() -> list[str]:
    """The export option for this CPU's int8 tests: none where it has VNNI; --int8_reduce_range (weights in 7 bits)
    where it lacks it, as the command advises there (8-bit weights can saturate its 16-bit sums)."""
    return [] if cpu_has_int8_dot_products() else ["--int8_reduce_range"]


def session(path: Path):
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def classifier_run(tiny_intel, cache_dir, tmp_path_factory) -> Path:
    """A tiny CNN run (module-wide), holding out a tenth of the training folder for its test scores."""
    from conftest import _reset_accelerate

    run = tmp_path_factory.mktemp("export") / "cnn"
    run_in_process("cnn", [f"--data={tiny_intel}", f"--run_dir={run}", "--width=4", "--max_steps=3",
                           "--test_split=none", *TINY_CLASSIFIER, f"--cache_dir={cache_dir}",
                           "--wandb_mode=disabled"])  # (set up before the tests' own environment and W&B mode)
    _reset_accelerate()
    return run


def test_an_exported_classifier_gives_what_toolkit_predict_gives(classifier_run, tiny_intel, tmp_path, capsys):
    run = classifier_run
    out = tmp_path / "served" / "cnn.onnx"  # its folder made
    assert toolkit_main(["export", str(run), str(out), "--wandb_mode=offline"]) == 0
    said = capsys.readouterr().out
    assert f"[export] wrote {out}" in said and "largest difference from the PyTorch model" in said
    # a W&B run beside it (offline here): the file as a model artifact, the check in its summary
    assert f"W&B run (offline): the ONNX file as a model artifact; local copy in {out.parent / 'cnn-wandb'}" in said
    logged = offline_wandb_bytes(out.parent / "cnn-wandb" / "wandb", b"cnn.onnx", b"export/largest_difference")
    assert b"cnn.onnx" in logged and b"export/largest_difference" in logged
    onnx.checker.check_model(str(out))
    meta = metadata(out)
    state = json.loads(sorted((run / "checkpoints").glob("step-*"))[-1].joinpath("trainer_state.json").read_text())
    assert meta["kind"] == "classifier" and meta["classes"] == state["classes"] and meta["image_size"] == 32
    assert meta["temperature"] == pytest.approx(state["temperature"]) and state["temperature"] != 1.0
    assert meta["check"]["largest_difference"] < 1e-4 and meta["check"]["input_shapes"][1] == [[3, 3, 32, 32]]
    assert [entry.name for entry in session(out).get_outputs()] == ["log_probabilities", "probabilities"]
    # images decoded and resized as its metadata says, any batch size: predict's calibrated log-probabilities
    files = sorted((tiny_intel / "seg_test").rglob("*.jpg"))[:5]
    pixels = np.stack([load_rgb(file, meta["image_size"]) for file in files]).transpose(0, 3, 1, 2)
    log_probabilities, probabilities = session(out).run(None, {"images": pixels})
    # (in fp32: a run trained in bf16 is scored in bf16 by default where the CPU computes it; the graph is fp32)
    expected = predict_files(str(run), files, progress=False, mixed_precision="no").log_probabilities
    assert np.abs(log_probabilities - expected).max() < 1e-4
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert (probabilities.argmax(axis=1) == expected.argmax(axis=1)).all()
    assert not list(out.parent.glob(".*partial*"))
    # --no-calibrated: the probabilities as trained, as predict --no-calibrated gives them
    raw = tmp_path / "raw.onnx"
    assert toolkit_main(["export", str(run), str(raw), "--no-calibrated"]) == 0
    assert "as trained, no temperature (--no-calibrated)" in capsys.readouterr().out
    assert metadata(raw)["temperature"] == 1.0 and metadata(raw)["calibrated"] is False
    as_trained = predict_files(str(run), files, progress=False, mixed_precision="no", calibrated=False)
    assert np.abs(session(raw).run(None, {"images": pixels})[0] - as_trained.log_probabilities).max() < 1e-4
    # toolkit predict and evaluate take the file itself (onnxruntime on the CPU): the run's log-probabilities,
    # calibrated or, the file's temperature undone, as trained; the run's scores on its held-out images, found through
    # the run the file came from
    from_file = predict_files(str(out), files, progress=False)
    assert np.abs(from_file.log_probabilities - expected).max() < 1e-4
    assert from_file.mixed_precision == "fp32 ONNX graph"
    undone = predict_files(str(out), files, progress=False, calibrated=False)
    assert np.abs(undone.log_probabilities - as_trained.log_probabilities).max() < 1e-4 and undone.temperature == 1.0
    capsys.readouterr()
    for model, name in ((out, "from-file"), (run, "from-run")):
        options = ["--mixed_precision=no"] if model == run else []
        assert toolkit_main(["evaluate", str(model), str(tiny_intel), "--held_out", "--out", str(tmp_path / name),
                             "--wandb_mode=disabled", *options]) == 0
    said = capsys.readouterr().out
    assert "(fp32 ONNX graph; temperature" in said
    scores = [json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("from-file", "from-run")]
    assert scores[0]["n"] == scores[1]["n"] > 0 and scores[0]["accuracy"] == scores[1]["accuracy"]
    assert scores[0]["loss"] == pytest.approx(scores[1]["loss"], abs=1e-4)
    assert scores[0]["training_images"] == scores[1]["training_images"] == 0
    assert toolkit_main(["predict", str(out), str(tiny_intel / "seg_test"), "--out", str(tmp_path / "file.csv"),
                         "--wandb_mode=disabled"]) == 0
    rows = (tmp_path / "file.csv").read_text().splitlines()
    assert len(rows) == 1 + len(list((tiny_intel / "seg_test").rglob("*.jpg")))
    # what a file cannot be asked for is refused, saying why
    predict = ["predict", str(out), str(files[0]), "--out", str(tmp_path / "refused.csv"), "--wandb_mode=disabled"]
    for command, why in ((predict + ["--tta"], "was exported without the mirror image inside"),
                         (predict + ["--mixed_precision=bf16"], "runs in the precision it was exported in"),
                         (predict + ["--ensemble", str(run)], "is an exported file, which is scored alone"),
                         (["calibrate", str(out), str(tiny_intel), "--out", str(tmp_path / "refused")],
                          "calibrate the run it was exported from, then export it again")):
        assert toolkit_main(command) == 2, command
        assert why in capsys.readouterr().err
    assert not (tmp_path / "refused.csv").exists()
    # a file whose run is no longer where it was exported from cannot know that run's held-out images, and says so
    moved = tmp_path / "moved-run"
    shutil.copytree(run, moved)
    assert toolkit_main(["export", str(moved), str(tmp_path / "moved.onnx")]) == 0
    shutil.rmtree(moved)
    capsys.readouterr()
    assert toolkit_main(["evaluate", str(tmp_path / "moved.onnx"), str(tiny_intel), "--held_out", "--out",
                         str(tmp_path / "ev-moved"), "--wandb_mode=disabled"]) == 2
    assert f"this file was exported from {moved}/checkpoints/step-" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()


def test_an_exported_ensemble_gives_what_predict_ensemble_gives(classifier_run, tiny_intel, tmp_path, capsys):
    other = tmp_path / "cnn-seed1"
    run_in_process("cnn", [f"--data={tiny_intel}", f"--run_dir={other}", "--width=4", "--max_steps=3", "--seed=1",
                           *TINY_CLASSIFIER])
    out = tmp_path / "ensemble.onnx"
    capsys.readouterr()
    assert toolkit_main(["export", str(classifier_run), str(out), "--ensemble", str(other)]) == 0
    said = capsys.readouterr().out
    assert "the mean of 2 runs' probabilities" in said
    assert f"held out other images than {classifier_run}/checkpoints/step-" in said  # said when it is exported
    meta = metadata(out)
    assert [Path(member["checkpoint"]).parents[1] for member in meta["ensemble"]] == [classifier_run, other]
    assert all(member["temperature"] != 1.0 for member in meta["ensemble"]) and "temperature" not in meta
    # predict takes the file as the runs' ensemble; their probabilities as trained are not in it, which is said
    files = sorted((tiny_intel / "seg_test").rglob("*.jpg"))[:4]
    together = predict_runs([str(classifier_run), str(other)], files, progress=False, mixed_precision="no")
    assert np.abs(predict_files(str(out), files, progress=False).log_probabilities
                  - together.log_probabilities).max() < 1e-4
    assert toolkit_main(["predict", str(out), str(files[0]), "--no-calibrated", "--out", str(tmp_path / "x.csv"),
                         "--wandb_mode=disabled"]) == 2
    assert "averages 2 runs' calibrated probabilities; export them with --no-calibrated" in capsys.readouterr().err
    files = sorted((tiny_intel / "seg_test").rglob("*.jpg"))[:6]
    pixels = np.stack([load_rgb(file, meta["image_size"]) for file in files]).transpose(0, 3, 1, 2)
    log_mean, mean = session(out).run(None, {"images": pixels})
    expected = predict_runs([str(classifier_run), str(other)], files, progress=False, mixed_precision="no")
    assert np.abs(log_mean - expected.log_probabilities).max() < 1e-4 and np.allclose(mean.sum(axis=1), 1, atol=1e-5)
    alone = predict_files(str(other), files, progress=False, mixed_precision="no").log_probabilities
    assert np.abs(log_mean - alone).max() > 1e-3  # not one of the runs alone
    # its runs held out different images (the first a tenth of the training folder, the other none): none to score
    assert toolkit_main(["evaluate", str(out), str(tiny_intel), "--held_out", "--out", str(tmp_path / "refused"),
                         "--wandb_mode=disabled"]) == 2
    assert f"{other}/checkpoints/step-" in (said := capsys.readouterr().err) and "held out other images than" in said
    # runs of another image size cannot share the graph's one input; a denoiser is not a classifier
    smaller = tmp_path / "cnn-24px"
    run_in_process("cnn", [f"--data={tiny_intel}", f"--run_dir={smaller}", "--width=4", "--max_steps=1",
                           *TINY_CLASSIFIER, "--image_size=24"])
    capsys.readouterr()
    assert toolkit_main(["export", str(classifier_run), str(tmp_path / "mixed.onnx"), "--ensemble", str(smaller)]) == 2
    assert "the runs take images of different sizes (24, 32 px)" in capsys.readouterr().err
    assert not (tmp_path / "mixed.onnx").exists()



def test_an_exported_ensemble_is_scored_on_images_none_of_its_runs_trained_on(classifier_run, tiny_intel, tmp_path,
                                                                              capsys):
    """An ensemble file's held-out and validation images are all its runs', as for the runs scored together: its
    --validation images are those no run trained on (fewer than its first run's alone, which the second partly
    trained on), its scores on both are the runs' own, and an image either run trained on counts as trained on."""
    from toolkit.data.images import DIGEST_CHARS
    from toolkit.predict import _full_pixel_hash, classifier_state, evaluate_folder, unseen_training_folder_images

    subset = tmp_path / "cnn-seed1-subset"  # the same held-out tenth; trained on part of the rest
    run_in_process("cnn", [f"--data={tiny_intel}", f"--run_dir={subset}", "--width=4", "--max_steps=1", "--seed=1",
                           "--test_split=none", "--max_train_images=40", *TINY_CLASSIFIER])
    out = tmp_path / "ensemble.onnx"
    assert toolkit_main(["export", str(classifier_run), str(out), "--ensemble", str(subset)]) == 0
    capsys.readouterr()
    assert toolkit_main(["evaluate", str(out), str(tiny_intel), "--held_out", "--out", str(tmp_path / "file-held_out"),
                         "--wandb_mode=disabled"]) == 0
    said = capsys.readouterr().out
    for images in ("held_out", "validation"):
        from_file = json.loads((tmp_path / "file-held_out" / "metrics.json").read_text()) if images == "held_out" \
            else evaluate_folder(str(out), tiny_intel, tmp_path / f"file-{images}", workers=1, validation=True)
        from_runs = evaluate_folder(str(classifier_run), tiny_intel, tmp_path / f"runs-{images}", workers=1,
                                    ensemble=[str(subset)], mixed_precision="no", **{images: True})
        assert from_file["n"] == from_runs["n"] > 0 and from_file["accuracy"] == from_runs["accuracy"]
        assert from_file["loss"] == pytest.approx(from_runs["loss"], abs=1e-4)
        assert from_file["training_images"] == from_runs["training_images"] == 0
        if images == "held_out":
            assert f"on the runs' {from_file['n']} held-out images" in said
            assert "(fp32 ONNX graph; an ensemble of 2 runs in one graph)" in said
    first_alone, _ = unseen_training_folder_images(str(tiny_intel), [classifier_state(str(classifier_run))],
                                                   [str(classifier_run)], workers=1)
    assert len(first_alone) > from_file["n"]
    trained_on = {pixels for run in (classifier_run, subset)
                  for pixels in classifier_state(str(run)).split["train_pixels"]}
    training_folder = sorted((tiny_intel / "seg_train").rglob("*.*"))
    assert evaluate_folder(str(out), tiny_intel / "seg_train", tmp_path / "all", workers=1)["training_images"] == \
        sum(_full_pixel_hash(str(file))[:DIGEST_CHARS] in trained_on for file in training_folder) > 0


def test_an_exported_blind_denoiser_takes_any_size_and_denoises_as_toolkit_denoise(tmp_path, capsys):
    run = tmp_path / "blind"
    run_in_process("blind_denoiser", ["--data=synthetic", f"--run_dir={run}", *BLIND])
    out = tmp_path / "blind.onnx"
    assert toolkit_main(["export", str(run), str(out)]) == 0
    meta = metadata(out)
    assert meta["kind"] == "denoiser" and meta["conditioned"] is True
    assert list(meta["inputs"]) == ["noisy", "sigma"] and "0-255" in meta["inputs"]["sigma"]
    assert not any(isinstance(dim, int) for dim in session(out).get_inputs()[0].shape[2:])  # any height and width
    # an image of an odd size (the network pads to its multiple inside), told sigma 25: toolkit denoise's output
    rng = np.random.default_rng(0)
    clean = rng.integers(40, 215, (37, 91, 3)).astype(np.float64)
    noisy_file = tmp_path / "noisy.png"
    Image.fromarray(np.clip(clean + rng.normal(0, 25, clean.shape), 0, 255).round().astype(np.uint8)).save(noisy_file)
    assert toolkit_main(["denoise", str(run), str(noisy_file), str(tmp_path / "denoised.png"), "--sigma=25"]) == 0
    noisy, _ = load_for_restoration(noisy_file)
    (denoised,) = session(out).run(None, {"noisy": noisy.transpose(2, 0, 1)[None],
                                          "sigma": np.array([25.0], np.float32)})
    assert denoised.shape == (1, 3, 37, 91) and 0 <= denoised.min() and denoised.max() <= 1
    written = np.asarray(Image.open(tmp_path / "denoised.png")).astype(int)
    assert np.abs(np.round(denoised[0].transpose(1, 2, 0) * 255) - written).max() <= 1  # to an 8-bit level
    assert toolkit_main(["export", str(run), str(tmp_path / "no.onnx"), "--no-calibrated"]) == 2
    assert "holds a denoiser: --no-calibrated is for classifiers" in capsys.readouterr().err
    assert toolkit_main(["export", str(run), str(tmp_path / "no.onnx"), "--ensemble", str(run)]) == 2
    assert "holds a denoiser: --ensemble is for classifiers" in capsys.readouterr().err
    # scripts/onnx_check.py on a folder of clean images: the same PSNR both ways, each one's speed
    clean_folder = tmp_path / "clean"
    clean_folder.mkdir()
    for index in range(2):
        Image.fromarray(rng.integers(0, 256, (40 + index, 56, 3), dtype=np.uint8)).save(clean_folder / f"{index}.png")
    script = Path(__file__).resolve().parents[1] / "scripts" / "onnx_check.py"
    done = run_script([sys.executable, str(script), str(run), str(clean_folder), "--onnx", str(out), "--sigma", "15"])
    assert done.returncode == 0, done.stderr[-2000:]
    psnr = re.search(r"mean PSNR: PyTorch ([\d.]+) dB, onnxruntime ([\d.]+) dB; largest difference of any pixel "
                     r"value from PyTorch's \(of 1\): onnxruntime (\S+)", done.stdout)
    assert psnr and abs(float(psnr[1]) - float(psnr[2])) < 1e-3 and float(psnr[3]) < 1e-4
    assert "2 images of" in done.stdout and "sigma 15 (not clipped, seed 0)" in done.stdout
    assert re.search(r"images per second: PyTorch [\d.]+, onnxruntime [\d.]+ \([\d.]+x PyTorch\)", done.stdout)
    # two images of another size in one batch, each with its own noise level
    batch = rng.random((2, 3, 64, 40), dtype=np.float32)
    assert session(out).run(None, {"noisy": batch, "sigma": np.array([5.0, 50.0], np.float32)})[0].shape == batch.shape
    # toolkit denoise and benchmark-denoiser take the file itself (onnxruntime on the CPU): the run's outputs, told the
    # level or estimating it, whole or in tiles
    capsys.readouterr()
    assert toolkit_main(["denoise", str(out), str(noisy_file), str(tmp_path / "onnx.png"), "--sigma=25"]) == 0
    assert np.abs(np.asarray(Image.open(tmp_path / "onnx.png")).astype(int) - written).max() <= 1
    for model, name in ((run, "blind-run.png"), (out, "blind-onnx.png")):
        assert toolkit_main(["denoise", str(model), str(noisy_file), str(tmp_path / name), "--tile_size=32",
                             "--tile_margin=8"]) == 0
    said = capsys.readouterr().out
    estimates = re.findall(r"estimated noise sigma ([\d.]+)/255", said)
    assert len(estimates) == 2 and estimates[0] == estimates[1] and said.count("denoised in 6 tiles") == 2
    pair = [np.asarray(Image.open(tmp_path / name)).astype(int) for name in ("blind-run.png", "blind-onnx.png")]
    assert np.abs(pair[0] - pair[1]).max() <= 1
    for model, name in ((run, "x8-run.png"), (out, "x8-onnx.png")):  # the self-ensemble around the file too
        assert toolkit_main(["denoise", str(model), str(noisy_file), str(tmp_path / name), "--sigma=25",
                             "--self_ensemble"]) == 0
    pair = [np.asarray(Image.open(tmp_path / name)).astype(int) for name in ("x8-run.png", "x8-onnx.png")]
    # the file's 8 passes come clamped to [0, 1] and are then averaged (the run's are averaged, then clamped)
    from toolkit.inference import load_trained_model
    from toolkit.train.denoise import DIHEDRAL, dihedral, undo_dihedral

    network = load_trained_model(run)[0].float()
    image, level = torch.from_numpy(noisy.transpose(2, 0, 1))[None], torch.tensor([25 / 255])
    with torch.no_grad():
        passes = [undo_dihedral(network(dihedral(image, turns, mirrored), level).clamp(0, 1), turns, mirrored)
                  for turns, mirrored in DIHEDRAL]
    clamped_first = torch.stack(passes).mean(0)[0].permute(1, 2, 0).numpy()
    assert np.abs(np.round(clamped_first * 255) - pair[1]).max() <= 1
    assert np.abs(pair[0] - pair[1]).mean() < 1 and np.abs(pair[1] - written).max() > 1  # and x8 is not one pass
    assert toolkit_main(["denoise", str(out), str(noisy_file), str(tmp_path / "high.png"), "--sigma=80"]) == 0
    assert "--sigma=80 is above the noise levels this model trained on (0-50/255)" in capsys.readouterr().out
    scores = {}
    for model, name in ((run, "run.json"), (out, "onnx.json")):
        assert toolkit_main(["benchmark-denoiser", str(model), "--clean", str(clean_folder), "--sigmas", "25",
                             "--out", str(tmp_path / name), "--wandb_mode=disabled"]) == 0
        scores[name] = json.loads((tmp_path / name).read_text())
    assert scores["onnx.json"]["sigmas"]["25.0"]["model"]["psnr"] == pytest.approx(
        scores["run.json"]["sigmas"]["25.0"]["model"]["psnr"], abs=1e-3)
    assert scores["onnx.json"]["exported_precision"] == "fp32" and scores["run.json"]["exported_precision"] is None
    assert "this toolkit (fp32 ONNX graph)" in scores["onnx.json"]["table"]
    # what an exported file cannot do is refused, saying why
    for option, why in (("--mixed_precision=bf16", "runs in the precision it was exported in"),
                        ("--device=cuda", "which onnxruntime runs on the CPU here")):
        assert toolkit_main(["denoise", str(out), str(noisy_file), str(tmp_path / "x.png"), option]) == 2
        assert why in capsys.readouterr().err
    (tmp_path / "broken.onnx").write_bytes(b"not a graph")
    assert toolkit_main(["denoise", str(tmp_path / "broken.onnx"), str(noisy_file), str(tmp_path / "x.png")]) == 2
    assert "cannot be read as an ONNX file" in capsys.readouterr().err and not (tmp_path / "x.png").exists()


def test_an_autoencoder_sized_by_its_input_is_exported_at_the_runs_size(tiny_intel, tmp_path, capsys):
    run = tmp_path / "ae"
    run_in_process("autoencoder", [f"--data={tiny_intel}", "--model=AE10", f"--run_dir={run}", "--max_steps=1",
                                   "--image_size=48", "--batch_size=8", "--num_workers=1", "--figures=false"])
    out = tmp_path / "ae.onnx"
    assert toolkit_main(["export", str(run), str(out)]) == 0
    assert "exporting it for 48x48 images, the run's size" in capsys.readouterr().out
    assert toolkit_main(["denoise", str(out), str(tmp_path), str(tmp_path / "out")]) == 2  # one size only: the run
    assert f"{out} was exported for 48x48 images only" in capsys.readouterr().err
    meta = metadata(out)
    assert meta["conditioned"] is False and list(meta["inputs"]) == ["noisy"]
    assert "3, 48, 48)" in meta["inputs"]["noisy"] and "3, 48, 48)" in meta["outputs"]["denoised"]
    assert session(out).get_inputs()[0].shape[1:] == [3, 48, 48]
    image = np.random.default_rng(1).random((3, 3, 48, 48), dtype=np.float32)
    assert session(out).run(None, {"noisy": image})[0].shape == (3, 3, 48, 48)
    # not told the noise level: no int8 (its check is per noise level), said before any image is read
    assert toolkit_main(["export", str(run), str(tmp_path / "int8.onnx"), "--int8", str(tmp_path / "none")]) == 2
    assert "a denoiser that is not told the noise level (AE10): --int8 takes classifiers and noise-conditioned " \
        "denoisers" in capsys.readouterr().err


def test_export_refusals_say_why_and_leave_the_old_file(classifier_run, tmp_path, capsys, monkeypatch):
    run = classifier_run
    assert toolkit_main(["export", str(run), str(tmp_path / "model.onx")]) == 2
    assert "name the ONNX file with .onnx (e.g. model.onnx)" in capsys.readouterr().err
    assert toolkit_main(["export", str(tmp_path / "nowhere"), str(tmp_path / "model.onnx")]) == 2
    assert "does not exist: pass a run directory" in capsys.readouterr().err
    (tmp_path / "earlier.onnx").write_bytes(b"an exported file")
    assert toolkit_main(["export", str(tmp_path / "earlier.onnx"), str(tmp_path / "model.onnx")]) == 2
    assert "earlier.onnx is an exported file already: export from the run directory" in capsys.readouterr().err
    (tmp_path / "earlier.onnx").unlink()
    (tmp_path / "a-file").write_text("")
    with pytest.raises(SystemExit):  # argparse: an output under a file
        toolkit_main(["export", str(run), str(tmp_path / "a-file" / "model.onnx")])
    assert not list(tmp_path.rglob("*.onnx"))
    capsys.readouterr()
    # --opset: another ONNX opset, recorded; one torch's exporter does not write is refused as the line is read
    assert toolkit_main(["export", str(run), str(tmp_path / "opset18.onnx"), "--opset", "18"]) == 0
    assert metadata(tmp_path / "opset18.onnx")["opset"] == 18
    with pytest.raises(SystemExit):
        toolkit_main(["export", str(run), str(tmp_path / "opset16.onnx"), "--opset", "16"])
    assert "--opset: takes a whole number of 18 or more" in capsys.readouterr().err
    # a torch older than its exporter needs is said, with the fix
    with monkeypatch.context() as patched:
        patched.setattr(toolkit.export.torch, "__version__", "2.5.1+cpu")
        assert toolkit_main(["export", str(run), str(tmp_path / "old.onnx")]) == 2
    assert "exporting needs torch 2.6 or newer" in capsys.readouterr().err and not (tmp_path / "old.onnx").exists()
    # a graph that disagrees with PyTorch is not written, and the file there before stays as it was
    out = tmp_path / "model.onnx"
    out.write_bytes(b"an earlier export")
    monkeypatch.setattr(toolkit.export, "EXPORT_TOLERANCE", -1.0)
    assert toolkit_main(["export", str(run), str(out)]) == 2
    assert "the ONNX graph disagrees with the PyTorch model" in capsys.readouterr().err
    assert out.read_bytes() == b"an earlier export" and not list(tmp_path.glob(".*partial*"))


def test_the_onnx_check_script_compares_predictions_and_speed_on_a_folder(classifier_run, tiny_intel):
    script = Path(__file__).resolve().parents[1] / "scripts" / "onnx_check.py"
    done = run_script([sys.executable, str(script), str(classifier_run), str(tiny_intel / "seg_test"), "--images",
                       "20", "--batch_size", "4", "--ensemble", str(classifier_run)])  # the same run twice: its mean
    assert done.returncode == 0, done.stderr[-2000:]
    assert "20 images of" in done.stdout and "the mean of 2 runs of SceneCNN at 32px, batches of 4" in done.stdout
    agreed = re.search(r"onnxruntime: predicted class the same as PyTorch's for (\d+) of 20; largest difference of "
                       r"any probability (\S+)", done.stdout)
    assert agreed and int(agreed[1]) == 20 and float(agreed[2]) < 1e-4
    speeds = re.search(r"images per second: PyTorch ([\d.]+), onnxruntime ([\d.]+) \(([\d.]+)x PyTorch\)",
                       done.stdout)
    assert speeds and float(speeds[1]) > 0 and float(speeds[3]) == pytest.approx(float(speeds[2]) / float(speeds[1]),
                                                                                  abs=0.01)
    assert "cores" in done.stdout  # the machine named beside its figures
    # the run's held-out images with their labels, and the graph in int8 as a third way
    bits = int8_weight_bits()
    done = run_script([sys.executable, str(script), str(classifier_run), str(tiny_intel), "--held_out", "--int8",
                       str(tiny_intel / "seg_train"), "--int8_images", "8", "--batch_size", "4", *bits])
    assert done.returncode == 0, done.stderr[-2000:]
    held = len(json.loads(sorted((classifier_run / "checkpoints").glob("step-*"))[-1].joinpath(
        "trainer_state.json").read_text())["split"]["held_out"])
    assert f"{held} the run's held-out images of {tiny_intel}" in done.stdout and "fp32 and int8" in done.stdout
    assert re.search(rf"onnxruntime int8: predicted class the same as PyTorch's for \d+ of {held}", done.stdout)
    assert re.search(r"accuracy: PyTorch [\d.]+%, onnxruntime [\d.]+%, onnxruntime int8 [\d.]+%", done.stdout)
    assert re.search(r"onnxruntime int8 [\d.]+ \([\d.]+x PyTorch\)", done.stdout)


def test_an_int8_classifier_is_calibrated_on_images_the_run_did_not_hold_out_and_checked(classifier_run, tiny_intel,
                                                                                         tmp_path, capsys,
                                                                                         monkeypatch):
    run = classifier_run
    out = tmp_path / "int8.onnx"
    bits = int8_weight_bits()
    assert toolkit_main(["export", str(run), str(out), "--int8", str(tiny_intel / "seg_train"), "--int8_images", "16",
                         "--wandb_mode=offline", *bits]) == 0
    said = capsys.readouterr().out
    assert f"[export] wrote {out}" in said and ", int8), a classifier" in said
    meta = metadata(out)
    int8 = meta["int8"]
    assert meta["precision"] == "int8" and int8["calibration_images"] == 16 and int8["check_images"] == 64
    assert int8["agreement"] >= toolkit.export.INT8_MIN_AGREEMENT and int8["held_out_skipped"] > 0
    assert (f"[export] int8: ranges from 16 images of {tiny_intel / 'seg_train'}, {int8['held_out_skipped']} held "
            f"out by the run skipped; on 64 other images of it the int8 graph picks the fp32 graph's class for "
            f"{int8['agreement']:.1%}") in said
    assert int8["weight_bits"] == (7 if bits else 8) and int8["checked_with_vnni"] == cpu_has_int8_dot_products()
    assert int8["checked_on"]
    assert ("weights in 7 bits (--int8_reduce_range)" if bits else "export with --int8_reduce_range") in said
    graph = onnx.load(str(out))
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= {node.op_type for node in graph.graph.node}
    assert any(weights.data_type == onnx.TensorProto.INT8 for weights in graph.graph.initializer)
    assert b"export/int8_agreement" in offline_wandb_bytes(tmp_path / "int8-wandb" / "wandb", b"export/int8_agreement")
    # the same inputs and outputs as the fp32 graph, probabilities near its own
    files = sorted((tiny_intel / "seg_test").rglob("*.jpg"))[:8]
    pixels = np.stack([load_rgb(file, 32) for file in files]).transpose(0, 3, 1, 2)
    fp32 = tmp_path / "fp32.onnx"
    assert toolkit_main(["export", str(run), str(fp32)]) == 0 and metadata(fp32)["precision"] == "fp32"
    quantized, plain = (session(path).run(["probabilities"], {"images": pixels})[0] for path in (out, fp32))
    assert quantized.shape == plain.shape and np.allclose(quantized.sum(1), 1, atol=1e-3)
    assert np.abs(quantized - plain).max() < 0.2
    capsys.readouterr()

    # images the run held out never set the ranges: a folder of nothing else is refused, saying so
    from toolkit.inference import load_trained_model
    from toolkit.predict import held_out_images

    held = tmp_path / "held-out-only"
    held.mkdir()
    files, _ = held_out_images(str(tiny_intel), [load_trained_model(run)[1]], [str(run)])
    for index, file in enumerate(files):
        (held / f"{index}-{file.name}").write_bytes(file.read_bytes())
    assert toolkit_main(["export", str(run), str(tmp_path / "x.onnx"), "--int8", str(held)]) == 2
    assert (f"0 usable image(s) ({len(files)} image files, 0 that do not decode, {len(files)} held out by the run "
            "for reporting)") in capsys.readouterr().err
    # refusals: no such folder, --int8_images alone, a denoiser; an int8 graph that strays from the fp32 graph is
    # not written and the earlier file stays
    assert toolkit_main(["export", str(run), str(tmp_path / "x.onnx"), "--int8", str(tmp_path / "none")]) == 2
    assert f"--int8 {tmp_path / 'none'}: not a folder; give a folder of images" in capsys.readouterr().err
    assert toolkit_main(["export", str(run), str(tmp_path / "x.onnx"), "--int8_images", "16"]) == 2
    assert "--int8_images is an option of --int8 FOLDER: give --int8 too" in capsys.readouterr().err
    assert toolkit_main(["export", str(run), str(tmp_path / "x.onnx"), "--int8_reduce_range"]) == 2
    assert "--int8_reduce_range is an option of --int8 FOLDER" in capsys.readouterr().err
    # weights in 7 bits for CPUs without VNNI (symmetric: -64..64, where 8 bits reach 127), said and recorded
    seven = tmp_path / "int8-7bit.onnx"
    assert toolkit_main(["export", str(run), str(seven), "--int8", str(tiny_intel / "seg_train"), "--int8_images",
                         "16", "--int8_reduce_range"]) == 0
    assert "weights in 7 bits (--int8_reduce_range)" in capsys.readouterr().out
    assert metadata(seven)["int8"]["weight_bits"] == 7

    def largest_weight(path: Path) -> int:
        return max(int(np.abs(onnx.numpy_helper.to_array(tensor).astype(int)).max())
                   for tensor in onnx.load(str(path)).graph.initializer
                   if tensor.data_type == onnx.TensorProto.INT8 and tensor.dims)

    assert largest_weight(seven) == 64 and largest_weight(out) == (64 if bits else 127)
    # 8-bit weights checked on a CPU without VNNI: said, with what to do about it
    with monkeypatch.context() as patched:
        patched.setattr(toolkit.export, "cpu_has_int8_dot_products", lambda: False)
        assert toolkit_main(["export", str(run), str(tmp_path / "no-vnni.onnx"), "--int8",
                             str(tiny_intel / "seg_train"), "--int8_images", "16"]) == 0
    assert "this CPU has no VNNI, so the check above ran with the 16-bit sums" in capsys.readouterr().out
    assert metadata(tmp_path / "no-vnni.onnx")["int8"]["checked_with_vnni"] is False
    # and a file of 8-bit weights evaluated on a CPU without VNNI (pretended) says it may saturate there, once
    with monkeypatch.context() as patched:
        patched.setattr("toolkit.train.precision.cpu_has_int8_dot_products", lambda: False)
        assert toolkit_main(["evaluate", str(tmp_path / "no-vnni.onnx"), str(tiny_intel), "--held_out", "--out",
                             str(tmp_path / "ev-no-vnni"), "--wandb_mode=disabled"]) == 0
    assert capsys.readouterr().err.count("holds 8-bit weights, checked on") == 1
    with pytest.raises(SystemExit):
        toolkit_main(["export", str(run), str(tmp_path / "x.onnx"), "--int8", str(held), "--int8_images", "4"])
    assert "--int8_images: takes a whole number of 8 or more" in capsys.readouterr().err
    monkeypatch.setattr(toolkit.export, "INT8_MIN_AGREEMENT", 1.01)
    earlier = out.read_bytes()
    assert toolkit_main(["export", str(run), str(out), "--int8", str(tiny_intel / "seg_train"), "--int8_images",
                         "16"]) == 2
    assert "the int8 graph picks the fp32 graph's class for only" in capsys.readouterr().err
    assert out.read_bytes() == earlier and not list(tmp_path.glob(".*partial*"))
    assert not (tmp_path / "x.onnx").exists()


def test_an_int8_blind_denoiser_is_calibrated_on_clean_images_it_did_not_hold_out_and_checked_per_noise_level(
        classifier_run, tmp_path, capsys, monkeypatch):
    from toolkit.denoising_benchmark import validation_images_of

    rng = np.random.default_rng(3)
    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(30):  # smooth colour ramps with a block: something for the network to keep
        ramp = np.linspace(0, 1, 72)[None, :, None] * rng.uniform(60, 200, 3) + rng.uniform(20, 50, 3)
        pixels = np.repeat(ramp, 64, axis=0)
        pixels[10:30, 20:50] = rng.uniform(0, 255, 3)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(photos / f"{index:02d}.png")
    run = tmp_path / "blind"
    run_in_process("blind_denoiser", [f"--data={photos}", f"--run_dir={run}", *BLIND])
    held = validation_images_of(str(run), photos, log=lambda _: None)
    assert held
    out = tmp_path / "blind-int8.onnx"
    bits = int8_weight_bits()
    assert toolkit_main(["export", str(run), str(out), "--int8", str(photos), "--int8_images", "8",
                         "--wandb_mode=offline", *bits]) == 0
    said = capsys.readouterr().out
    assert f"[export] wrote {out}" in said and ", int8), a denoiser" in said
    meta = metadata(out)
    int8 = meta["int8"]
    assert meta["precision"] == "int8" and int8["calibration_images"] == 8 and int8["check_images"] == 16
    assert int8["calibration_noise"] == {"sigma_min": 0.0, "sigma_max": pytest.approx(50.0), "clip": False}
    assert list(int8["psnr_loss"]) == ["15", "25", "50"] and int8["held_out_skipped"] <= len(held)
    assert all(loss <= toolkit.export.INT8_MAX_PSNR_LOSS for loss in int8["psnr_loss"].values())
    assert all(int8["psnr_fp32"][level] - int8["psnr_int8"][level] == pytest.approx(loss)
               for level, loss in int8["psnr_loss"].items())
    assert re.search(rf"\[export\] int8: ranges from crops of 8 images of {re.escape(str(photos))}.*, noisy at sigma "
                     r"0-50; on crops of 16 other images of it, mean PSNR at sigma 15 / 25 / 50: int8 [\d.]+ / [\d.]+ "
                     r"/ [\d.]+ dB, fp32 [\d.]+ / [\d.]+ / [\d.]+ dB \(int8 [-+][\d.]+ / [-+][\d.]+ / [-+][\d.]+ dB\)",
                     said)
    assert b"export/int8_psnr_loss_sigma_15" in offline_wandb_bytes(tmp_path / "blind-int8-wandb" / "wandb",
                                                                    b"export/int8_psnr_loss_sigma_15")
    # in int8: the convolutions but the first (noisy pixels and noise level in: 4 channels) and the last (the noise
    # estimate out: 3 channels), whose weights stay float
    graph = onnx.load(str(out)).graph
    weights = {tensor.name: tensor for tensor in graph.initializer}
    produced_by = {output: node for node in graph.node for output in node.output}
    convolutions = [node for node in graph.node if node.op_type == "Conv"]

    def weight_of(conv) -> tuple[int, np.ndarray]:
        source = conv.input[1]
        if source in produced_by:  # DequantizeLinear(int8 weights)
            quantized = weights[produced_by[source].input[0]]
            return quantized.data_type, onnx.numpy_helper.to_array(quantized)
        return weights[source].data_type, onnx.numpy_helper.to_array(weights[source])

    (first_type, first), (last_type, last) = weight_of(convolutions[0]), weight_of(convolutions[-1])
    assert first.shape[1] == 4 and last.shape[0] == 3 and first_type == last_type == onnx.TensorProto.FLOAT
    assert all(weight_of(conv)[0] == onnx.TensorProto.INT8 for conv in convolutions[1:-1])
    # any size, as the fp32 graph takes it, and near its output
    fp32 = tmp_path / "blind.onnx"
    assert toolkit_main(["export", str(run), str(fp32)]) == 0
    noisy = np.clip(rng.random((1, 3, 37, 53)), 0, 1).astype(np.float32)
    feed = {"noisy": noisy, "sigma": np.array([25.0], np.float32)}
    quantized, plain = (session(path).run(None, feed)[0] for path in (out, fp32))
    assert quantized.shape == plain.shape == noisy.shape and np.abs(quantized - plain).max() < 0.1
    capsys.readouterr()

    # the images the run held out never set the ranges: asked for one image more than the rest, it is refused, and
    # every held-out image is counted
    too_many = 30 - len(held) - toolkit.export.INT8_DENOISER_CHECK_IMAGES + 1
    assert toolkit_main(["export", str(run), str(tmp_path / "x.onnx"), "--int8", str(photos), "--int8_images",
                         str(too_many)]) == 2
    assert (f"{30 - len(held)} usable image(s) (30 image files, 0 that do not decode, 0 with a side under 16 px, "
            f"{len(held)} held out by the run for validation); it needs {too_many + 16}") in capsys.readouterr().err
    small = tmp_path / "small"
    small.mkdir()
    Image.fromarray(np.zeros((12, 40, 3), np.uint8)).save(small / "strip.png")
    (small / "broken.png").write_bytes(b"not an image")
    assert toolkit_main(["export", str(run), str(tmp_path / "x.onnx"), "--int8", str(small)]) == 2
    assert ("0 usable image(s) (2 image files, 1 that do not decode, 1 with a side under 16 px, 0 held out by the run "
            "for validation); it needs 48: 32 to calibrate (--int8_images) and 16 to check") in capsys.readouterr().err
    # an int8 graph that loses more than the allowed PSNR is not written, and the earlier file stays; where the CPU has
    # no VNNI, the advice starts with weights in 7 bits
    monkeypatch.setattr(toolkit.export, "INT8_MAX_PSNR_LOSS", -1.0)
    earlier = out.read_bytes()
    assert toolkit_main(["export", str(run), str(out), "--int8", str(photos), "--int8_images", "8", *bits]) == 2
    refused = capsys.readouterr().err
    assert re.search(r"the int8 graph's mean PSNR is -?[\d.]+ dB below the fp32 graph's at sigma \d+ on 16 check "
                     r"images \(at most -1 dB allowed\); not written", refused)
    assert "Export in fp32 (without --int8)" in refused and "try --int8_reduce_range" not in refused
    monkeypatch.setattr(toolkit.export, "cpu_has_int8_dot_products", lambda: False)
    assert toolkit_main(["export", str(run), str(out), "--int8", str(photos), "--int8_images", "8"]) == 2
    assert "This CPU has no VNNI" in capsys.readouterr().err and out.read_bytes() == earlier
    assert not (tmp_path / "x.onnx").exists()
    monkeypatch.undo()
    # the int8 file scored by the benchmark on the run's own held-out images, found through the run it came from
    assert toolkit_main(["benchmark-denoiser", str(out), "--clean", str(photos), "--validation_images", "--sigmas",
                         "25", "--out", str(tmp_path / "int8.json"), "--wandb_mode=disabled"]) == 0
    scored = json.loads((tmp_path / "int8.json").read_text())
    assert scored["images"] == len(held) and scored["exported_precision"] == "int8"
    assert "this toolkit (int8 ONNX graph)" in scored["table"]
    # an int8 file of 8-bit weights run on a CPU without VNNI (pretended here) says it may saturate there; 7-bit not
    with monkeypatch.context() as patched:
        patched.setattr("toolkit.train.precision.cpu_has_int8_dot_products", lambda: False)
        assert toolkit_main(["denoise", str(out), str(photos / "00.png"), str(tmp_path / "saturate.png"),
                             "--sigma=15"]) == 0
    assert ("holds 8-bit weights, checked on" in capsys.readouterr().err) is not bool(bits)
    # a classifier's file is not a denoiser, nor a denoiser's a classifier
    classifier_file = tmp_path / "classifier.onnx"
    assert toolkit_main(["export", str(classifier_run), str(classifier_file)]) == 0
    capsys.readouterr()
    assert toolkit_main(["denoise", str(classifier_file), str(photos), str(tmp_path / "out")]) == 2
    assert "holds a classifier, not a denoiser" in capsys.readouterr().err
    assert toolkit_main(["predict", str(out), str(photos), "--out", str(tmp_path / "x.csv"),
                         "--wandb_mode=disabled"]) == 2
    assert "holds a denoiser, not a classifier; denoise images with `toolkit denoise`" in capsys.readouterr().err
    # scripts/onnx_check.py: the run's held-out images, PyTorch, fp32 and int8 graphs
    script = Path(__file__).resolve().parents[1] / "scripts" / "onnx_check.py"
    done = run_script([sys.executable, str(script), str(run), str(photos), "--held_out", "--onnx", str(fp32),
                       "--int8", str(photos), "--int8_images", "8", "--sigma", "25", *bits])
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{len(held)} the run's held-out images of {photos}" in done.stdout and "fp32 and int8" in done.stdout
    assert re.search(r"mean PSNR: PyTorch [\d.]+ dB, onnxruntime [\d.]+ dB, onnxruntime int8 [\d.]+ dB", done.stdout)
    assert re.search(r"onnxruntime int8 [\d.]+ \([\d.]+x PyTorch\)", done.stdout)
