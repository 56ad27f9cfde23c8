"""Bad data, bad input and faults: a generated corpus of broken files, kills, NaNs, full disks."""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import RECIPES, TINY_CLASSIFIER, logged_steps, run_command_line, run_script
from PIL import Image
from safetensors.torch import load_file
from test_recipes import assert_same_final_weights, run_in_process

from toolkit.cli import main as toolkit_main
from toolkit.data.beton import cached_beton
from toolkit.data.check import check_dataset
from toolkit.data.classification import load_classification_data
from toolkit.data.folders import scan_labeled_folder
from toolkit.data.settings import ClassificationDataSettings
from toolkit.errors import DataError, TrainingDiverged
from toolkit.runs import read_metrics, series


def _photo(seed: int, size=(40, 40)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def messy(tmp_path_factory) -> Path:
    """An Intel-layout collection with one of every real-world problem, and a few good images per class."""
    root = tmp_path_factory.mktemp("messy")
    train, test = root / "seg_train", root / "seg_test"
    for split, count in ((train, 6), (test, 2)):
        for c, name in enumerate(("beach", "city", "woods")):
            (split / name).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(_photo(100 * c + i + (50 if split == test else 0))).save(split / name / f"{i}.jpg")
    jpeg = io.BytesIO()
    Image.fromarray(_photo(7)).save(jpeg, format="JPEG")
    (train / "beach" / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (train / "beach" / "empty.jpg").write_bytes(b"")
    (train / "beach" / "notes.jpg").write_text("this is a text file named .jpg")
    Image.fromarray(_photo(8)).save(train / "city" / "png_inside.jpg", format="PNG")
    Image.fromarray(_photo(9)[..., 0]).save(train / "city" / "gray.png")  # L
    Image.fromarray(_photo(10)).convert("CMYK").save(train / "city" / "cmyk.jpg")
    rgba = np.dstack([_photo(11), np.full((40, 40), 128, np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(train / "woods" / "alpha.png")
    Image.fromarray(_photo(12)).convert("P").save(train / "woods" / "palette.png")
    Image.fromarray(_photo(13, (7, 5))).save(train / "woods" / "tiny.png")
    Image.fromarray(_photo(14, (1200, 900))).save(train / "woods" / "huge.jpg")
    duplicate = _photo(15)
    Image.fromarray(duplicate).save(train / "beach" / "copy_a.png")
    Image.fromarray(duplicate).save(train / "city" / "copy_b.png")  # same pixels, another label
    (train / "empty_class").mkdir()
    return root


def test_data_check_finds_every_problem(messy):
    report = check_dataset(messy, image_size=32)
    train = report["splits"]["seg_train"]
    unreadable = {Path(item["file"]).name: item["reason"] for item in train["unreadable"]}
    assert set(unreadable) == {"truncated.jpg", "empty.jpg", "notes.jpg"}
    assert "empty file" in unreadable["empty.jpg"] and "not an image" in unreadable["notes.jpg"]
    assert "truncated" in unreadable["truncated.jpg"] or "decode" in unreadable["truncated.jpg"]
    assert [Path(item["file"]).name for item in train["extension_mismatch"]] == ["png_inside.jpg"]
    assert train["non_rgb"] == {"CMYK": 1, "L": 1, "P": 1, "RGBA": 1}
    assert [Path(f).name for f in train["smaller_than_image_size"]] == ["tiny.png"]
    assert train["empty_classes"] == ["empty_class"]
    conflicting = [g for g in report["duplicates"]["groups"] if g["conflicting_labels"]]
    assert len(conflicting) == 1 and conflicting[0]["classes"] == ["beach", "city"]
    assert any("seg_test has classes" in error for error in report["errors"])  # empty_class only in train


def test_data_check_command_exit_status_and_json(messy, tmp_path, capsys):
    status = toolkit_main(["data", "check", str(messy), "--json", str(tmp_path / "r.json"), "--image_size=32"])
    assert status == 1  # the train/test class lists differ: training on both would fail
    text = capsys.readouterr().out
    assert "CONFLICTING LABELS beach/city" in text and "NOT USABLE" in text
    assert json.loads((tmp_path / "r.json").read_text())["duplicates"]["conflicting"] == 1
    os.rmdir(messy / "seg_train" / "empty_class")
    try:
        assert toolkit_main(["data", "check", str(messy), "--json", str(tmp_path / "r2.json")]) == 0
    finally:
        (messy / "seg_train" / "empty_class").mkdir()
    # decoding every image shows a bar with its rate and ETA (forced on here: the test's stream is no terminal)
    shown = run_script([sys.executable, "-m", "toolkit.cli", "data", "check", str(messy), "--json",
                        str(tmp_path / "r3.json")], env={"SCENE_TOOLKIT_PROGRESS": "1"})
    final = [line for line in shown.stderr.replace("\r", "\n").splitlines() if line.startswith("checking images: 100%")]
    assert final and "img/s" in final[-1], shown.stderr[-2000:]


def _with_reader_gone(args: list[str]) -> subprocess.CompletedProcess:
    """Run a command whose standard output is a pipe nobody reads any more (`... | head` once head has exited)."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        return subprocess.run(args, stdout=writer, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(writer)


def test_output_into_a_closed_pipe_stops_quietly_like_unix_tools(messy, tmp_path):
    """`toolkit data check ROOT | head -1`: once head has gone, the toolkit stops with 141 (the shell's status for
    a writer killed by SIGPIPE) and no traceback; so does a recipe. A broken pipe that is not standard output's
    is a bug and keeps its traceback."""
    shown = _with_reader_gone([sys.executable, "-m", "toolkit.cli", "data", "check", str(messy), "--json",
                               str(tmp_path / "r.json")])
    assert shown.returncode == 141 and shown.stderr == "", shown.stderr[-2000:]
    recipe = ("import dataclasses, sys; from toolkit.run import run_recipe\n"
              "@dataclasses.dataclass\nclass Config:\n    lines: int = 10\n"
              "def main(cfg):\n    for i in range(cfg.lines): print('line', i)\n"
              "run_recipe(main, Config, sys.argv[1:])")
    shown = _with_reader_gone([sys.executable, "-c", recipe, "--lines=100000"])
    assert shown.returncode == 141 and shown.stderr == "", shown.stderr[-2000:]
    elsewhere = ("import os, sys; from toolkit.run import run_recipe; import dataclasses\n"
                 "@dataclasses.dataclass\nclass Config:\n    lines: int = 10\n"
                 "def main(cfg):\n    reader, writer = os.pipe(); os.close(reader); os.write(writer, b'x')\n"
                 "run_recipe(main, Config, sys.argv[1:])")
    shown = run_script([sys.executable, "-c", elsewhere])
    assert shown.returncode == 1 and "BrokenPipeError" in shown.stderr


def test_preprocessing_converts_what_it_can_and_skips_the_rest(messy, cache_dir):
    listing = scan_labeled_folder(messy / "seg_train")
    stored = cached_beton("messy", listing.root, listing.files, listing.labels, listing.classes, 24,
                          cache_dir=cache_dir)
    skipped = {item["file"] for item in stored.manifest["skipped"]}
    assert skipped == {"beach/truncated.jpg", "beach/empty.jpg", "beach/notes.jpg"}
    assert {"city/gray.png", "city/cmyk.jpg", "woods/alpha.png", "woods/palette.png"} <= \
        set(stored.manifest["converted_to_rgb"])
    assert stored.num_samples == len(listing.files) - 3  # huge, tiny and PNG-named-jpg are resized and kept


def test_colour_profiles_are_gone_through_to_srgb_wherever_images_are_read(tmp_path, cache_dir):
    """A colour profile says what a file's numbers mean as colours: preprocessing, predict and the data doctor read such
    pixels as sRGB through it (RGB, RGBA, palette, grey, grey with alpha, 16-bit grey and CMYK alike), as a
    colour-managed viewer shows them and as the training images were. The profiles are built by hand with their colours
    worked out (tests/icc_profiles.py): linear light stored as 128 is sRGB's 188. An sRGB profile changes nothing; one
    that cannot be read, or that describes another colour space than the pixels', is not used, and the data doctor says
    so."""
    from icc_profiles import ideal_inks_cmyk_profile, linear_grey_profile, linear_rgb_profile, srgb_encoded
    from PIL import ImageCms

    from toolkit.data.images import load_rgb, pixel_hash

    mid = round(255 * float(srgb_encoded(128 / 255)))  # 188
    folder = tmp_path / "data" / "scenes"
    folder.mkdir(parents=True)
    linear, grey = linear_rgb_profile(), linear_grey_profile()
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    plain = Image.new("RGB", (24, 24), (128, 128, 128))
    plain.save(folder / "linear.png", icc_profile=linear)
    plain.save(folder / "linear.jpg", icc_profile=linear, quality=100)
    Image.new("RGBA", (24, 24), (128, 128, 128, 255)).save(folder / "linear_alpha.png", icc_profile=linear)
    plain.quantize(4).save(folder / "palette.png", icc_profile=linear)
    Image.new("L", (24, 24), 128).save(folder / "grey.png", icc_profile=grey)
    Image.new("LA", (24, 24), (128, 255)).save(folder / "grey_alpha.png", icc_profile=grey)
    Image.fromarray(np.full((24, 24), 128 * 257, dtype=np.uint16)).save(folder / "grey16.png", icc_profile=grey)
    Image.new("CMYK", (24, 24), (128, 0, 0, 0)).save(folder / "press.tif", icc_profile=ideal_inks_cmyk_profile())
    plain.save(folder / "srgb.png", icc_profile=srgb)
    plain.save(folder / "broken.png", icc_profile=b"not a colour profile")
    plain.save(folder / "mismatched.png", icc_profile=ideal_inks_cmyk_profile())
    expected = {"linear.png": (mid,) * 3, "linear.jpg": (mid,) * 3, "linear_alpha.png": (mid,) * 3,
                "palette.png": (mid,) * 3, "grey.png": (mid,) * 3, "grey_alpha.png": (mid,) * 3,
                "grey16.png": (mid,) * 3, "press.tif": (mid, 255, 255),
                "srgb.png": (128,) * 3, "broken.png": (128,) * 3, "mismatched.png": (128,) * 3}
    for name, colour in expected.items():
        pixels = load_rgb(folder / name).astype(int)
        assert np.abs(pixels - np.array(colour)).max() <= 1, (name, pixels[0, 0], colour)

    report = check_dataset(tmp_path / "data", image_size=16)
    summary = report["splits"]["seg_train"]  # a folder of class folders is its own training split
    assert summary["colour_profiles"] == {"Linear sRGB primaries (test)": 4, "Linear grey (test)": 3,
                                          "Ideal inks (test)": 1}
    assert {Path(item["file"]).name: item["reason"] for item in summary["unused_profiles"]} == {
        "broken.png": "a colour profile that cannot be read, not used",
        "mismatched.png": "a CMYK colour profile on RGB pixels, not used"}
    assert any("8 images carry colour profiles other than sRGB" in warning for warning in report["warnings"])
    assert any("2 images carry a colour profile that cannot be used" in warning for warning in report["warnings"])

    listing = scan_labeled_folder(tmp_path / "data")
    stored = cached_beton("profiles", listing.root, listing.files, listing.labels, listing.classes, 24,
                          storage="raw", cache_dir=cache_dir, num_workers=1)
    assert set(stored.manifest["converted_to_rgb"]) == {f"scenes/{name}" for name in (
        "linear.png", "linear.jpg", "linear_alpha.png", "palette.png", "grey.png", "grey_alpha.png", "grey16.png",
        "press.tif")}
    assert stored.manifest["pixel_hashes"][listing.files.index(folder / "linear.png")] == pixel_hash(
        load_rgb(folder / "linear.png"))  # what was stored is what every reader reads


def test_conflicting_duplicates_can_be_left_out_of_training(messy, cache_dir):
    settings = ClassificationDataSettings(data=str(messy), test_split="none", val_fraction=0.2, holdout_fraction=0.0,
                                          image_size=24)
    kept = load_classification_data(settings, 0, cache_dir=cache_dir, log=lambda *_: None)
    dropped = load_classification_data(dataclasses.replace(settings, drop_conflicting_duplicates=True), 0,
                                       cache_dir=cache_dir, log=lambda *_: None)
    total = lambda d: len(d.train_indices) + len(d.val_indices)  # noqa: E731
    assert total(kept) - total(dropped) == 2


def test_a_test_split_with_other_classes_is_refused(messy):
    with pytest.raises(DataError, match="missing: .*empty_class"):
        load_classification_data(ClassificationDataSettings(data=str(messy), val_fraction=0.2, holdout_fraction=0.0,
                                                            image_size=24), 0, log=lambda *_: None)


def test_a_full_disk_while_writing_a_beton_is_a_clear_error_and_leaves_nothing(tmp_path, monkeypatch, tiny_intel):
    from ffcv.memory_allocator import MemoryAllocator

    def disk_full(self):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(MemoryAllocator, "flush_page", disk_full)  # inherited by the forked writer processes
    listing = scan_labeled_folder(tiny_intel / "seg_train")
    started = time.monotonic()
    with pytest.raises(DataError, match="disk full while writing"):
        cached_beton("full", listing.root, listing.files, listing.labels, listing.classes, 16,
                     cache_dir=tmp_path / "cache")
    assert time.monotonic() - started < 60  # stopped, not hung waiting for the dead writer
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert leftovers == []


def test_a_run_that_diverges_after_a_checkpoint_keeps_that_checkpoint_good(tiny_intel, tmp_path):
    run_dir = tmp_path / "run"
    args = [f"--data={tiny_intel}", f"--run_dir={run_dir}", "--width=4", *TINY_CLASSIFIER, "--checkpoint_every=1"]
    run_in_process("cnn", [*args, "--max_steps=3"])  # three good checkpoints' worth of training
    good = sorted((run_dir / "checkpoints").glob("step-*"))
    assert [c.name for c in good] == ["step-00000002", "step-00000003"]
    before = {c.name: load_file(c / "model.safetensors") for c in good}
    with pytest.raises(TrainingDiverged, match="became NaN or infinite by iteration 4|became nan at iteration"):
        run_in_process("cnn", [*args, "--resume", "--lr=inf"])  # the first resumed step makes the weights infinite
    after = sorted((run_dir / "checkpoints").glob("step-*"))
    assert [c.name for c in after] == ["step-00000002", "step-00000003"]  # nothing non-finite was saved
    for checkpoint in after:
        weights = load_file(checkpoint / "model.safetensors")
        assert all(torch.isfinite(t).all() for t in weights.values())
        assert all(torch.equal(weights[k], before[checkpoint.name][k]) for k in weights)


def test_gradient_accumulation_applies_the_last_partial_accumulation(tiny_intel, tmp_path):
    """10 iterations in batches accumulated by 3: the optimizer steps at 3, 6, 9 and, at the end, 10."""
    args = [f"--data={tiny_intel}", "--width=4", *TINY_CLASSIFIER, "--grad_accumulation=3", "--checkpoint_every=9",
            "--keep_checkpoints=3", "--eval_every=0"]
    summary = run_in_process("cnn", [*args, f"--run_dir={tmp_path / 'run'}"])
    assert summary["steps"] == 10
    at_nine = load_file(tmp_path / "run" / "checkpoints" / "step-00000009" / "model.safetensors")
    final = load_file(tmp_path / "run" / "checkpoints" / "step-00000010" / "model.safetensors")
    assert any(not torch.equal(at_nine[k], final[k]) for k in final)  # step 10's gradient was not dropped
    # a stop by --max_steps rounds down to a whole accumulation, so that --resume continues exactly
    stopped = run_in_process("cnn", [*args, f"--run_dir={tmp_path / 'split'}", "--max_steps=5"])
    assert stopped["steps"] == 3
    run_in_process("cnn", [*args, f"--run_dir={tmp_path / 'split'}", "--resume"])
    assert_same_final_weights(tmp_path / "run", tmp_path / "split")


def test_a_run_inside_a_program_gives_sigterm_back_and_forked_workers_still_end_on_it(tiny_intel, tmp_path):
    """A run's stop-at-next-step SIGTERM handler lasts as long as its training. Left installed, every pool
    forked afterwards in the same program (predict, the data doctor) inherited it: its workers survived the
    SIGTERM the pool sends on exit, and the pool waited for them forever (a hang seen in CI)."""
    from toolkit.run import install_stop_handler, restore_sigterm
    from toolkit.worker_pool import forked_pool

    def programs_own(signum, frame):  # what an embedding program (a notebook, a scheduler) may have set
        pass

    previous = signal.signal(signal.SIGTERM, programs_own)
    try:
        args = [f"--data={tiny_intel}", "--width=4", *TINY_CLASSIFIER, "--max_steps=2", "--eval_every=0"]
        run_in_process("cnn", [*args, f"--run_dir={tmp_path / 'done'}"])
        assert signal.getsignal(signal.SIGTERM) is programs_own
        with pytest.raises(TrainingDiverged):
            run_in_process("cnn", [*args, f"--run_dir={tmp_path / 'diverged'}", "--lr=inf"])
        assert signal.getsignal(signal.SIGTERM) is programs_own  # an error gives it back too

        install_stop_handler()  # as during training: forked workers must not keep this handler
        with forked_pool(2) as pool:
            assert pool.apply(signal.getsignal, (signal.SIGTERM,)) == signal.SIG_DFL
    finally:
        restore_sigterm(previous)
    # The hang itself: under the training handler, many pools, ended by their work (close) or by an error
    # (terminate), in two busy processes at once. Workers that kept the handler hung the 8th pool; workers that
    # reset it in their initializer still hung now and then under load (a SIGTERM before the initializer ran).
    # In child processes, so that a regression fails in seconds (killed with SIGKILL: they would ignore SIGTERM).
    script = ("from toolkit.run import install_stop_handler\n"
              "from toolkit.worker_pool import forked_pool\n"
              "install_stop_handler()\n"
              "for index in range(80):\n"
              "    try:\n"
              "        with forked_pool(2) as pool:\n"
              "            assert sum(pool.imap(abs, range(-100, 0), chunksize=16)) == 5050\n"
              "            if index % 2:\n"
              "                raise KeyError('a pool left by an error')\n"
              "    except KeyError:\n"
              "        pass\n"
              "print('all pools ended')\n")
    children = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for _ in range(2)]
    for child in children:
        try:
            out, err = child.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            for other in children:
                other.kill()
            pytest.fail("a forked pool never ended: its workers survived the pool's SIGTERM")
        assert child.returncode == 0 and "all pools ended" in out, err[-2000:]


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_at_the_next_step_and_resume_loses_nothing(tiny_intel, tmp_path, uninterrupted):
    common = [f"--data={tiny_intel}", *KILL_RUN]
    stopped = tmp_path / "stopped"
    env = {**os.environ, "WANDB_MODE": "disabled"}
    process = subprocess.Popen([sys.executable, str(RECIPES / "cnn.py"), *common, f"--run_dir={stopped}"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        steps = logged_steps(stopped)
        if steps and steps[-1] >= 7:
            process.send_signal(signal.SIGTERM)  # what a spot machine or SLURM sends before taking the machine
            break
        time.sleep(0.01)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-2000:]
    assert "asked to stop (SIGTERM); saved a checkpoint at iteration" in stderr and "--resume" in stderr
    stopped_at = int(re.search(r"saved a checkpoint at iteration (\d+)", stderr).group(1))
    newest = sorted((stopped / "checkpoints").glob("step-*"))[-1]
    assert int(newest.name[5:]) == stopped_at == logged_steps(stopped)[-1]  # at most one step after the signal
    assert stopped_at < 30 and not (stopped / "summary.json").exists()
    resumed = run_script([sys.executable, str(RECIPES / "cnn.py"), *common, f"--run_dir={stopped}", "--resume"])
    assert resumed.returncode == 0 and f"at iteration {stopped_at}" in resumed.stdout
    assert_same_final_weights(uninterrupted, stopped)


def test_bad_paths_at_every_door_get_one_line_errors(tmp_path, tiny_intel, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("")
    for index in range(12):  # a folder of one class (images of distinct pixels, so none is a copy)
        (tmp_path / "one_class" / "beach").mkdir(parents=True, exist_ok=True)
        Image.fromarray(_photo(500 + index)).save(tmp_path / "one_class" / "beach" / f"{index}.png")
    recipes = [
        ("cnn", [f"--data={tmp_path}/nothing"], "does not exist"),
        ("cnn", ["--resume", f"--run_dir={tmp_path}", "--lr=0"], "--lr must"),
        ("cnn", [f"--data={tmp_path / 'empty'}", f"--run_dir={tmp_path}/e"], "no 'seg_train'"),
        ("cnn", ["--seed=-1"], "--seed must be 0 or more"),
        ("fast_cnn", [f"--data={tiny_intel}", "--train_image_sizes=4", f"--run_dir={tmp_path}/small"],
         "too small for FastResNet"),
        ("cnn", [f"--data={tiny_intel}", "--image_size=8", f"--run_dir={tmp_path}/cnn8"],
         "too small for four 2x2 pools (need at least 16)"),
        ("cnn", [f"--data={tiny_intel}", f"--run_dir={tmp_path}/a_file"], "a_file is a file, not a folder"),
        ("resnet18", [f"--data={tiny_intel}", f"--run_dir={tmp_path}/a_file/run"], "a_file is a file, not a folder"),
        ("cnn", [f"--data={tmp_path / 'one_class'}", f"--run_dir={tmp_path}/one"],
         "a classifier needs images of two classes or more; " + f"{tmp_path / 'one_class'} has images of 1 (beach)"),
        ("cnn", [f"--data={tmp_path / 'a_file'}", f"--run_dir={tmp_path}/f"], "a_file is a file: pass the folder"),
        ("blind_denoiser", [f"--data={tmp_path / 'a_file'}", f"--run_dir={tmp_path}/b"], "a_file is a file: pass"),
        ("cnn", [f"--data={tiny_intel}", f"--cache_dir={tmp_path / 'a_file'}/cache", f"--run_dir={tmp_path}/c"],
         f"--cache_dir ({tmp_path / 'a_file'}/cache) cannot be a folder: {tmp_path / 'a_file'} is a file"),
    ]
    for recipe, args, message in recipes:
        status, _, err = run_command_line(recipe, args, capsys)
        assert status == 2 and message in err and "Traceback" not in err, (recipe, args, err[-2000:])
    for args, message in ((["denoise", str(tmp_path / "nothing"), "a", "b"], "does not exist"),
                          (["data", "check", str(tmp_path / "nothing")], "is not a folder")):
        assert toolkit_main(args) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (args, err)
    assert toolkit_main(["data", "check", str(tmp_path / "one_class"), "--json", str(tmp_path / "one.json")]) == 1
    assert "seg_train: images of one class only (beach); a classifier needs two or more" in capsys.readouterr().out
    from toolkit.run import RunSettings, run_recipe

    def refused_by_the_file_system(cfg):
        (tmp_path / "gone" / "metrics.json").write_text("")  # a folder removed under a running recipe

    with pytest.raises(SystemExit) as stopped:
        run_recipe(refused_by_the_file_system, RunSettings, [])
    assert stopped.value.code == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'gone' / 'metrics.json'}: No such file or directory\n"
    result = run_script([sys.executable, str(RECIPES / "cnn.py"), "--lr=-1"])  # and once as a real script
    assert result.returncode == 2 and "--lr must be greater than 0" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_checkpoint_from_another_model_is_refused_on_resume(tiny_intel, tmp_path):
    from toolkit.errors import CheckpointError

    run_in_process("cnn", [f"--data={tiny_intel}", f"--run_dir={tmp_path}", "--width=4", "--max_steps=2",
                           *TINY_CLASSIFIER])
    with pytest.raises(CheckpointError, match="holds a cnn run, not a resnet18 run"):
        run_in_process("resnet18", [f"--data={tiny_intel}", f"--run_dir={tmp_path}", "--resume", "--weights=none",
                                    *TINY_CLASSIFIER])


KILL_RUN = ["--width=4", "--image_size=32", "--batch_size=8", "--eval_batch_size=4", "--eval_every=3",
            "--checkpoint_every=2", "--num_workers=1", "--epochs=3", "--figures=false"]


@pytest.fixture(scope="module")
def uninterrupted(tiny_intel, cache_dir, tmp_path_factory) -> Path:
    """The run every kill and stop below must reproduce exactly, once for the module (a script, not a terminal:
    it also shows that logs without a terminal carry no progress bar)."""
    whole = tmp_path_factory.mktemp("uninterrupted") / "whole"
    result = run_script([sys.executable, str(RECIPES / "cnn.py"), f"--data={tiny_intel}", *KILL_RUN,
                         f"--run_dir={whole}"], env={"WANDB_MODE": "disabled", "SCENE_TOOLKIT_CACHE": str(cache_dir)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "it/s" not in result.stderr and "[val] iteration 3" in result.stdout
    return whole


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", ["step", "checkpoint", "evaluation"])
def test_sigkill_at_any_moment_then_resume_equals_an_uninterrupted_run(tiny_intel, tmp_path, kill_at, uninterrupted):
    common = [f"--data={tiny_intel}", *KILL_RUN]
    whole = uninterrupted
    broken = tmp_path / "broken"
    rng = np.random.default_rng({"step": 1, "checkpoint": 2, "evaluation": 3}[kill_at])
    target = int(rng.integers(4, 20))
    env = {**os.environ, "WANDB_MODE": "disabled"}
    process = subprocess.Popen([sys.executable, str(RECIPES / "cnn.py"), *common, f"--run_dir={broken}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        steps = logged_steps(broken)
        partial = list((broken / "checkpoints").glob(".partial-*")) if (broken / "checkpoints").exists() else []
        if kill_at == "checkpoint" and partial and steps and steps[-1] >= target:
            break  # a checkpoint is being written right now
        if kill_at == "evaluation" and steps and steps[-1] >= target and steps[-1] % 3 == 0:
            break  # the step before a validation pass was just logged
        if kill_at == "step" and steps and steps[-1] >= target:
            break
        time.sleep(0.002)
    assert process.poll() is None, "the run finished before it could be killed: make it longer"
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_after = logged_steps(broken)[-1]
    # the kill landed where the test says it did
    records = read_metrics(broken)  # a line cut by the kill is left out
    if kill_at == "checkpoint":  # mid-write: the partial folder is still there and was never published
        partial = list((broken / "checkpoints").glob(".partial-*"))
        assert partial and not (broken / "checkpoints" / partial[0].name.removeprefix(".partial-")).exists()
    if kill_at == "evaluation":  # after the step, before its validation scores were logged
        assert killed_after % 3 == 0 and not any("val/loss" in r for r in records if r["step"] == killed_after)
    assert not (broken / "summary.json").exists()
    resumed = run_script([sys.executable, str(RECIPES / "cnn.py"), *common, f"--run_dir={broken}", "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    loaded = re.search(r"resumed from \S+step-(\d+) at iteration (\d+)", resumed.stdout)
    assert loaded and 0 < int(loaded.group(2)) <= killed_after  # it continued from a checkpoint, not from zero
    assert_same_final_weights(whole, broken)
    summaries = [json.loads((d / "summary.json").read_text()) for d in (whole, broken)]
    assert summaries[0]["test_accuracy"] == summaries[1]["test_accuracy"]
    assert summaries[0]["test_loss"] == summaries[1]["test_loss"]
    steps = logged_steps(broken)
    train_steps = [step for step, _ in series(read_metrics(broken), "train/loss")]
    assert train_steps == sorted(set(train_steps)) and steps[-1] == summaries[0]["steps"]


def test_a_fresh_run_never_overwrites_a_run_with_checkpoints(tiny_intel, tmp_path):
    from toolkit.errors import UserError

    args = [f"--data={tiny_intel}", f"--run_dir={tmp_path}", "--width=4", "--max_steps=2", *TINY_CLASSIFIER]
    run_in_process("cnn", args)
    before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    with pytest.raises(UserError, match="already holds a run with checkpoints: pass --resume"):
        run_in_process("cnn", args)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before
