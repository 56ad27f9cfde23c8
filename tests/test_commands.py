"""The `toolkit` command: data exploration and the benchmark, on tiny data."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_script
from PIL import Image

from toolkit.cli import main as toolkit_main

TOOLKIT = [sys.executable, "-m", "toolkit.cli"]


def test_explore_writes_counts_examples_and_split_balance(tiny_intel, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "explore"
    assert toolkit_main(["data", "explore", str(tiny_intel), "--out", str(out)]) == 0
    report = json.loads((out / "exploration.json").read_text())
    assert report["counts"]["seg_train"] == {name: 16 for name in report["classes"]}
    assert report["counts"]["seg_test"]["sea"] == 6 and report["counts"]["seg_pred"] == {"(unlabeled)": 12}
    balance = report["split_balance"]
    assert set(balance) == {"train", "validation"}  # seg_test exists: nothing is held out of training
    assert sum(balance["validation"].values()) == 12 and sum(balance["train"].values()) == 84
    for figure in ("class_counts.png", "examples.png", "split_balance.png"):
        assert (out / figure).stat().st_size > 1000
    assert list((out / "wandb").glob("offline-run-*"))


def test_explore_on_a_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert toolkit_main(["data", "explore", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_output_paths_that_cannot_be_written_are_refused_before_any_work(tmp_path, capsys, monkeypatch):
    """An --out (or --json) naming a folder where a file goes, or standing below a file, is refused as the command
    line is read, before a benchmark or a prediction runs for minutes; a file system's refusal met later (a full
    disk, a vanished folder) is one line too, while any other failure keeps its traceback."""
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for args, message in (
            (["benchmark-denoiser", "none", "--clean", str(tmp_path), "--out", str(tmp_path)],
             f"argument --out: {tmp_path} is a folder: name the file to write"),
            (["predict", "run", "image.png", "--out", str(a_file / "p.csv")],
             f"argument --out: {a_file} is a file, so {a_file / 'p.csv'} cannot be written below it"),
            (["data", "check", str(tmp_path), "--json", str(tmp_path)], "argument --json:"),
            (["evaluate", "run", str(tmp_path), "--out", str(a_file / "deeper")],
             f"argument --out: {a_file} is a file: name a folder"),
            (["report", "run", "--out", str(a_file)], "is a file: name a folder"),
            (["compare-benchmarks", "a.json", "b.json", "--out", str(tmp_path)], "is a folder"),
            (["wandb-report", "study", "--out", str(a_file)], "is a file: name a folder"),
            # counts out of range are refused as they are read too: a batch of 0 gathered every image into one
            (["predict", "run", "image.png", "--batch_size", "0"], "argument --batch_size: takes a whole number of 1"),
            (["predict", "run", "image.png", "--top_k", "two"], "argument --top_k: takes a whole number of 1 or more"),
            (["benchmark", "--tiny", "--images", "0"], "argument --images: takes a whole number of 1 or more"),
            (["benchmark-denoiser", "none", "--clean", ".", "--max_images", "-1"], "whole number of 0 or more")):
        with pytest.raises(SystemExit) as stopped:
            toolkit_main(args)
        assert stopped.value.code == 2 and message in capsys.readouterr().err, args

    assert toolkit_main(["wandb-report", "--publish", str(a_file.with_name("image.png"))]) == 2  # not there
    Image.new("RGB", (4, 4)).save(a_file.with_name("image.png"))  # not text at all
    assert toolkit_main(["wandb-report", "--publish", str(a_file.with_name("image.png"))]) == 2
    assert "is not a report definition written by toolkit wandb-report" in capsys.readouterr().err

    import toolkit.cli

    monkeypatch.setattr(toolkit.cli, "command_check", lambda args: (tmp_path / "gone" / "r.json").write_text(""))
    assert toolkit_main(["data", "check", str(tmp_path)]) == 2
    said = capsys.readouterr().err
    assert said == f"error: {tmp_path / 'gone' / 'r.json'}: No such file or directory\n"

    def broken(args):
        raise OSError("a failure of the code, not of the file system")

    monkeypatch.setattr(toolkit.cli, "command_check", broken)
    assert toolkit_main(["data", "check", str(tmp_path)]) == 1 and "Traceback" in capsys.readouterr().err


def test_benchmark_runs_on_tiny_data_and_writes_json(tiny_intel, tmp_path):
    out = tmp_path / "bench.json"
    result = run_script([*TOOLKIT, "benchmark", "--data", str(tiny_intel), "--images", "48", "--steps", "1",
                         "--tiny", "--only", "ceiling", "loaders", "steps", "pipeline", "--out", str(out),
                         "--wandb_mode=offline"], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["freed_memory_kept"] is True  # its steps timed as the training runs take them (glibc here)
    logged = tmp_path / "bench-wandb"  # the same figures as a W&B run (offline here)
    assert list((logged / "wandb").glob("offline-run-*"))
    steps_table = json.loads((logged / "tables" / "benchmark_steps.json").read_text())
    assert [row[0] for row in steps_table["rows"]] == list(results["steps"])
    assert json.loads((logged / "summary.json").read_text())["fp32_matmul_gflop_per_s"] > 0
    loaders = results["loaders"]
    study = next(v for k, v in loaders.items() if k.startswith("study"))
    assert study["ratio_vs_study"] == 1.0
    assert all(v["images_per_s"] > 0 and v["startup_s"] >= 0 for v in loaders.values())
    native = results["machine"]["native_bf16"]
    settings = 3 if native else 2  # fp32 NCHW, fp32 channels_last, and bf16 only where the CPU has it
    assert len(results["steps"]) == 5 * settings and all(v["images_per_s"] > 0 for v in results["steps"].values())
    assert any("blind_denoiser" in name for name in results["steps"])
    assert native or "bf16 not timed: this CPU has no native bf16" in result.stdout
    assert 0 <= results["pipeline"]["data_wait_share"] <= 1
    assert results["ceiling"]["fp32_matmul_gflop_per_s"] > 0
    assert ("bf16_matmul_gflop_per_s" in results["ceiling"]) == native
    for name, step in results["steps"].items():  # each share against the matmul ceiling of its own precision
        precision = name.split(" | ")[1].split()[0]
        assert step["share_of_ceiling"] == pytest.approx(
            step["gflop_per_s"] / results["ceiling"][f"{precision}_matmul_gflop_per_s"])
    assert "x study" in result.stdout and "GFLOP/s" in result.stdout
    assert "(the arithmetic ceiling; one short timing, --tiny)" in result.stdout  # a check, not a measurement


def test_benchmark_rejects_unknown_sections(tmp_path, capsys):
    assert toolkit_main(["benchmark", "--only", "nonsense", "--out", str(tmp_path / "b.json")]) == 2
    assert "unknown benchmark sections" in capsys.readouterr().err
    assert toolkit_main(["benchmark", "--only", "compile", "--compile_recipes", "resnet", "--out",
                         str(tmp_path / "b.json")]) == 2
    assert "--compile_recipes: unknown recipes ['resnet']" in capsys.readouterr().err


@pytest.mark.slow
def test_benchmark_compile_section_times_compiled_against_eager_steps_in_pairs(tmp_path):
    """`--only compile` compiles the chosen recipe's model with inductor (a real compile: tens of seconds even
    for the tiny ResUNet) and times it against eager in interleaved pairs."""
    out = tmp_path / "bench.json"
    result = run_script([*TOOLKIT, "benchmark", "--tiny", "--only", "compile", "--compile_recipes", "blind_denoiser",
                         "--steps", "3", "--out", str(out)], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    compiled = json.loads(out.read_text())["compile"]
    assert list(compiled) == ["resunet (blind_denoiser)"]  # only the recipe asked for
    r = compiled["resunet (blind_denoiser)"]
    assert r["pairs"] == 3 and r["batch"] == 4 and r["image_size"] == 32
    assert r["eager"]["step_s"] > 0 and r["compiled"]["step_s"] > 0 and r["speedup"] > 0
    assert r["compile_s"] == pytest.approx(r["compiled"]["first_step_s"] - r["eager"]["first_step_s"])
    assert r["compile_s"] > 1  # the first compiled step generated and built kernels
    if r["speedup"] > 1:  # paid back by the seconds saved per step at the measured speed-up
        saved = r["eager"]["step_s"] * (1 - 1 / r["speedup"])
        assert r["break_even_steps"] == pytest.approx(r["compile_s"] / saved)
    else:
        assert r["break_even_steps"] is None and "never" in result.stdout
    assert "torch.compile (inductor) against eager" in result.stdout and "break-even steps" in result.stdout


@pytest.mark.slow
def test_gpu_check_script_reports_every_recipe_it_runs(tmp_path):
    """The prepared accelerator check runs anywhere; on this CPU it must still report each part."""
    out = tmp_path / "check.json"
    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"
    result = run_script([sys.executable, str(script), "--steps", "12", "--model_steps", "1", "--images_per_class",
                         "30", "--tiny", "--only", "cnn", "--recipe_args=--batch_size=16 --width=4 --image_size=32",
                         "--out", str(out)], timeout=600)  # batches of 16: 12 steps fit in the epochs of this data
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["machine"]["cores"] >= 1 and next(iter(results["ceiling"].values())) > 0
    assert {name.split(" | ")[0].split(" (")[-1].rstrip(")") for name in results["models"]} >= {
        "cnn", "resnet18", "fast_cnn", "efficientnet_lite0", "blind_denoiser"}
    assert all(r["images_per_s"] > 0 for r in results["models"].values())
    recipes = results["recipes"]
    assert set(recipes) == {"cnn"}
    for r in recipes.values():  # steps 11-12 are the steady window; the first ten hold the start-up
        assert r["steps"] == 12 and r["batch_size"] == 16 and r["device"] == "cpu" and r["warmup_steps"] == 10
        assert r["steady_images_per_s"] > 0 and r["warmup_s"] > 0 and r["train_images_per_s"] > 0


def argument_printing_stand_ins(folder: Path) -> Path:
    """A folder of stand-ins for python, accelerate and toolkit that print their arguments, for reproduce.sh's BIN:
    the commands a step would run, read without running them."""
    folder.mkdir()
    for name in ("python", "accelerate", "toolkit"):
        (folder / name).write_text(f'#!/bin/bash\necho "{name} $*"\n')
        (folder / name).chmod(0o755)
    return folder


def test_reproduce_script_skips_studies_finished_at_the_seeds_asked_for(tmp_path):
    """scripts/reproduce.sh resumes where it stopped: a study whose JSON holds exactly the seeds asked for is
    skipped, for each training share of the cnn_gap step with its own seeds; more seeds would rerun it."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "reproduce.sh"
    for share, seeds in (("90", [0, 1]), ("99", [0])):
        (tmp_path / "cnn_gap" / f"share-{share}").mkdir(parents=True)
        (tmp_path / "cnn_gap" / f"share-{share}" / "comparison.json").write_text(json.dumps({"seeds": seeds}))
    (tmp_path / "cnn_gap" / "evaluate-seed-0-bf16").mkdir()  # the step's bf16 evaluation, finished too
    (tmp_path / "cnn_gap" / "evaluate-seed-0-bf16" / "metrics.json").write_text("{}")
    env = {"OUT": str(tmp_path), "STEPS": "cnn_gap", "BIN": str(Path(sys.executable).parent)}
    result = run_script(["bash", str(script)], env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "cnn_gap/share-90/comparison.json already finished at seeds 0,1, skipped" in result.stdout
    assert "cnn_gap/share-99/comparison.json already finished at seeds 0, skipped" in result.stdout
    assert "=== done" in result.stdout and "native bf16" in result.stdout  # every step names the CPU it ran on
    misspelt = run_script(["bash", str(script)], env={**env, "STEPS": "cnn_gap denoisr"}, timeout=60)
    assert misspelt.returncode == 2 and "STEPS names 'denoisr', which is not a step" in misspelt.stderr
    assert "===" not in misspelt.stdout  # refused before any step, rather than running none and saying done


def test_reproduce_script_gpu_step_trains_on_the_halves_when_asked_and_chooses_on_held_out_images(tmp_path):
    """The gpu_denoiser step, on a machine where torch sees a CUDA GPU: with GPU_REDUCTIONS=1,2 its run trains on the
    tiles and their halves under a name of its own, and each run's held-out CBSD432 images are scored whole and halved
    before McMaster. No GPU here: the commands it would run are read from stand-ins for python (saying a GPU is
    there), accelerate and toolkit that print their arguments."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "reproduce.sh"
    stand_ins = argument_printing_stand_ins(tmp_path / "bin")
    for reductions, run in (("", "blind_denoiser-gpu"), ("1,2", "blind_denoiser-gpu-reductions12")):
        env = {"OUT": str(tmp_path / "out"), "STEPS": "gpu_denoiser", "BIN": str(stand_ins),
               "GPU_REDUCTIONS": reductions}
        result = run_script(["bash", str(script)], env=env, timeout=60)
        assert result.returncode == 0, result.stderr[-2000:]
        lines = result.stdout.splitlines()
        launch = next(line for line in lines if line.startswith("accelerate launch"))
        assert f"--run_dir={tmp_path / 'out' / run} " in launch
        assert launch.endswith(f"--reductions={reductions or 1}")
        scored = [line for line in lines if line.startswith(f"toolkit benchmark-denoiser {tmp_path / 'out' / run} ")]
        assert len(scored) == 5 and all("--device cuda" in line for line in scored)
        assert all("--validation_images" in line for line in scored[:2]), "held-out images first, McMaster after"
        assert [line.split("--reduce ")[1].split()[0] for line in scored[:2]] == ["1", "2"]
        assert all("McMaster" in line and "--validation_images" not in line for line in scored[2:])


def test_reproduce_script_use_step_evaluates_the_efficientnet_seeds_together(tmp_path):
    """The use step scores EfficientNet-Lite0's seeds of the compare step as one ensemble on their held-out images
    (seed 0 first, the others after --ensemble, in order) and reports it beside the fast_cnn evaluation; with seed 0
    alone there is no ensemble to score. The commands are read from stand-ins that print their arguments."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "reproduce.sh"
    stand_ins = argument_printing_stand_ins(tmp_path / "bin")
    out = tmp_path / "out"
    seeds = out / "compare" / "efficientnet_lite0"
    (seeds / "seed-0").mkdir(parents=True)
    env = {"OUT": str(out), "STEPS": "use", "BIN": str(stand_ins), "DATA": "data/intel"}

    def lines() -> list[str]:
        result = run_script(["bash", str(script), "data/intel"], env=env, timeout=60)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout.splitlines()

    alone = lines()
    assert not [line for line in alone if "--ensemble" in line]
    # seed 0 in int8 too, scored on its held-out images beside PyTorch and the fp32 graph
    exported = [line for line in alone if line.startswith("toolkit export")]
    assert any(line.endswith("--int8 data/intel/seg_train") for line in exported)
    assert any("onnx_check.py" in line and "data/intel --held_out" in line and "--int8" in line for line in alone)
    int8_file = str(out / "efficientnet_lite0_int8.onnx")
    assert any(line.startswith(f"toolkit evaluate {int8_file} data/intel --held_out") for line in alone)
    report = next(line for line in alone if line.startswith("toolkit report") and "report_classifiers" in line)
    assert "evaluate_efficientnet_seeds" not in report
    assert str(out / "evaluate_efficientnet_int8") in report
    for seed in (2, 1):
        (seeds / f"seed-{seed}").mkdir()
    together = lines()
    evaluated = [line for line in together if line.startswith(f"toolkit evaluate {seeds / 'seed-0'} ")]
    assert len(evaluated) == 1 and "--held_out" in evaluated[0]
    assert evaluated[0].endswith(f"--ensemble {seeds / 'seed-1'} {seeds / 'seed-2'}")
    report = next(line for line in together if line.startswith("toolkit report") and "report_classifiers" in line)
    assert str(out / "evaluate_fast_cnn") in report and str(out / "evaluate_efficientnet_seeds") in report


def test_reproduce_script_mcmaster_step_compares_the_hour_with_cbm3d_image_by_image(tmp_path):
    """The mcmaster step scores the default (with CBM3D and non-local means) and the hour (told, blind, x8) on
    McMaster, then compares each of the hour's files with CBM3D's rows of the default's, image by image. The commands
    are read from stand-ins for python, accelerate and toolkit that print their arguments."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "reproduce.sh"
    stand_ins = argument_printing_stand_ins(tmp_path / "bin")
    out = tmp_path / "out"
    result = run_script(["bash", str(script)], env={"OUT": str(out), "STEPS": "mcmaster", "BIN": str(stand_ins)},
                        timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    scored = [line.split("--out ")[1].split()[0] for line in lines if line.startswith("toolkit benchmark-denoiser")]
    compared = [line for line in lines if line.startswith("toolkit compare-benchmarks")]
    assert len(compared) == 3  # the hour against CBM3D, then its int8 file against the hour and against CBM3D
    files = compared[0].split()[2:6]
    assert files[0] == str(out / "mcmaster.json") and set(files) <= set(scored)  # files the step itself writes
    assert files[1:] == [str(out / f"mcmaster-60min{suffix}.json") for suffix in ("", "-blind", "-x8")]
    assert "--base_method bm3d" in compared[0] and lines.index(compared[0]) > max(  # after the files it reads
        index for index, line in enumerate(lines) if line.startswith("toolkit benchmark-denoiser")
        and line.split("--out ")[1].split()[0] in files)
    default = next(line for line in lines if line.startswith("toolkit benchmark-denoiser")
                   and f"--out {out / 'mcmaster.json'}" in line)
    assert "--baselines bm3d nlm" in default  # CBM3D's rows are where the comparison reads them
    # the hour in int8, calibrated on CBSD432 (never McMaster), checked on McMaster three ways at each level
    (exported,) = [line for line in lines if line.startswith("toolkit export") and "--int8" in line]
    assert exported.endswith("--int8 data/denoise/CBSD432")
    checked = [line for line in lines if "onnx_check.py" in line and "--int8" in line]
    assert [line.split("--sigma ")[1] for line in checked] == ["15", "25", "50"]
    assert all("McMaster" in line and "--int8 data/denoise/CBSD432" in line for line in checked)
    int8_file = str(out / "blind_denoiser-60min-int8.onnx")
    (benchmarked,) = [line for line in lines if line.startswith(f"toolkit benchmark-denoiser {int8_file} ")]
    assert lines.index(benchmarked) > lines.index(exported) and "--sigmas 15 25 50" in benchmarked
    int8_json = str(out / "mcmaster-60min-int8.json")
    against = [line.split()[2:4] for line in compared if int8_json in line]
    assert against == [[str(out / "mcmaster-60min.json"), int8_json], [str(out / "mcmaster.json"), int8_json]]


def test_reproduce_script_denoiser_step_checks_the_hour_in_int8_on_held_out_images(tmp_path):
    """The denoiser step checks the hour's int8 graph on CBSD432's held-out images at each level (before the mcmaster
    step reads McMaster), calibrated on CBSD432. Read from stand-ins that print their arguments."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "reproduce.sh"
    stand_ins = argument_printing_stand_ins(tmp_path / "bin")
    result = run_script(["bash", str(script)], env={"OUT": str(tmp_path / "out"), "STEPS": "denoiser",
                                                    "BIN": str(stand_ins)}, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    checked = [line for line in result.stdout.splitlines() if "onnx_check.py" in line and "--int8" in line]
    assert [line.split("--sigma ")[1] for line in checked] == ["15", "25", "50"]
    assert all("CBSD432 --held_out --int8 data/denoise/CBSD432" in line for line in checked)


AVX2_CAPS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "SCENE_TOOLKIT_CPU_BF16": ""}


def test_the_avx2_path_on_any_cpu(tiny_intel, tmp_path):
    """With PyTorch's and oneDNN's kernels capped to AVX2 (on an AMX machine: the AVX2 machines' path), auto
    precision is fp32 (the benchmark's leaving emulated bf16 out is checked by the benchmark test where the CPU has
    no bf16, and by test_training_pieces' detection tests everywhere)."""
    from conftest import RECIPES

    run = run_script([sys.executable, str(RECIPES / "cnn.py"), f"--data={tiny_intel}", f"--run_dir={tmp_path / 'r'}",
                      "--width=4", "--image_size=32", "--batch_size=16", "--max_steps=2", "--num_workers=1"],
                     env={**AVX2_CAPS, "WANDB_MODE": "disabled"})
    assert run.returncode == 0, run.stderr[-2000:]
    assert "native bf16: no (PyTorch CPU kernels: AVX2)" in run.stdout
    assert json.loads((tmp_path / "r" / "config.json").read_text())["mixed_precision_used"] == "no"


def test_noise_estimates_script_reads_clipped_and_unclipped_noise(tiny_intel, tmp_path):
    folder = tmp_path / "two"
    folder.mkdir()
    for image in sorted((tiny_intel / "seg_pred").iterdir())[:2]:
        (folder / image.name).write_bytes(image.read_bytes())
    script = Path(__file__).resolve().parents[1] / "scripts" / "noise_estimates.py"
    done = run_script([sys.executable, str(script), str(folder), "--sigmas", "5", "25",
                       "--out", str(tmp_path / "e.json")])
    assert done.returncode == 0, done.stderr
    assert "| 25 | " in done.stdout and "clipped, 8-bit: toolkit" in done.stdout
    results = json.loads((tmp_path / "e.json").read_text())
    row = results["25.0"]
    assert set(row) == {"clipped, 8-bit", "unclipped"}
    assert set(row["clipped, 8-bit"]) == {"whole image", "wavelet", "toolkit"}
    ours = row["unclipped"]["toolkit"]
    assert 20 < ours["mean"] < 30 and ours["error"] >= abs(ours["mean"] - 25)  # small synthetic scenes: roughly right
    clipped = row["clipped, 8-bit"]
    assert clipped["toolkit"]["mean"] >= clipped["whole image"]["mean"]  # what clipping hid is not read as less noise
    for kind in ("clipped, 8-bit", "unclipped"):  # the patches see past the scenes' texture
        assert results["5.0"][kind]["toolkit"]["error"] < results["5.0"][kind]["wavelet"]["error"]


def test_profile_denoiser_script_times_each_levels_convolutions():
    """scripts/profile_denoiser.py groups the blocks' 3x3 convolutions by the resolution they run at: one
    ResBlock per level on the way down and one on the way up (2 convolutions each, forward and backward),
    one in the body; with the 2x2 fold the first level runs at half the patch size."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "profile_denoiser.py"
    for kwargs, first_level in (("widths=(8,16),blocks=1", "8 ch 32x32"),
                                ("widths=(8,16),blocks=1,pixel_unshuffle=True", "8 ch 16x16")):
        done = run_script([sys.executable, str(script), f"--model_kwargs={kwargs}", "--batch_size", "4",
                           "--patch_size", "32", "--steps", "2"])
        assert done.returncode == 0, done.stderr
        rows = {line[:16].strip(): line[16:].split() for line in done.stdout.splitlines() if " ch " in line}
        second_level = "16 ch 16x16" if first_level == "8 ch 32x32" else "16 ch 8x8"
        assert list(rows) == [first_level, second_level]
        assert [row[0] for row in rows.values()] == ["8", "4"]  # convolutions per step, forward and backward
        assert all(float(milliseconds) >= 0 and share.endswith("%") and float(rate) >= 0
                   for _, milliseconds, share, rate in rows.values())
        assert "s per training step" in done.stdout


def test_profile_denoiser_script_profiles_bf16_only_where_the_cpu_computes_it():
    """--precision bf16 profiles under autocast where the CPU has bf16 in hardware (forced here, so the test runs
    on every CPU: a tiny model, nothing timed is read) and is refused, with the fix, where it would be emulated."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "profile_denoiser.py"
    args = [sys.executable, str(script), "--model_kwargs=widths=(8,16),blocks=1", "--batch_size", "2",
            "--patch_size", "32", "--steps", "2", "--precision", "bf16"]
    refused = run_script(args, env={"SCENE_TOOLKIT_CPU_BF16": "0"})
    assert refused.returncode != 0 and "no native bf16" in refused.stderr and "--precision fp32" in refused.stderr
    assert "s per training step" not in refused.stdout
    done = run_script(args, env={"SCENE_TOOLKIT_CPU_BF16": "1"})
    assert done.returncode == 0, done.stderr
    assert "bf16, 2 x 32px" in done.stdout
    rows = [line for line in done.stdout.splitlines() if " ch " in line]
    assert [row.split()[:3] for row in rows] == [["8", "ch", "32x32"], ["16", "ch", "16x16"]]  # the convolutions seen


def test_figures_cost_script_times_runs_with_and_without_figures(tmp_path, capsys):
    """scripts/figures_cost.py times tiny CNN runs with --figures=true and false (in this process); only the
    first draws figures, both keep the tables and the test predictions."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("figures_cost", ROOT / "scripts" / "figures_cost.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    seconds = script.figure_seconds(tmp_path, pairs=1, untimed=0)
    assert {key: len(times) for key, times in seconds.items()} == {"true": 1, "false": 1}
    assert all(time > 0 for times in seconds.values() for time in times)
    drawn, plain = tmp_path / "run-0-true", tmp_path / "run-0-false"
    assert (drawn / "plots" / "test_examples.png").is_file() and not (plain / "plots").exists()
    assert (plain / "tables" / "test_per_class.json").is_file() and (plain / "test_probabilities.npy").is_file()
    with pytest.raises(SystemExit):
        script.main(["--pairs", "0"])
    assert "--pairs must be at least 1" in capsys.readouterr().err


PACKED_FFCV_CHECK = """
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import ffcv
from ffcv.libffcv import imdecode, resize_crop

unpacked, folder = Path(sys.argv[1]), Path(sys.argv[2])
assert Path(ffcv.__file__).is_relative_to(unpacked / "python"), ffcv.__file__
for file in sorted(folder.iterdir()):  # each image through FFCV's JPEG decoder, then its OpenCV resize
    image = np.asarray(Image.open(file).convert("RGB"))
    encoded = io.BytesIO()
    Image.fromarray(image).save(encoded, format="JPEG", quality=95, subsampling=0)
    by_pillow = np.asarray(Image.open(io.BytesIO(encoded.getvalue())).convert("RGB")).astype(int)
    source = np.frombuffer(encoded.getvalue(), dtype=np.uint8).copy()
    decoded = np.zeros_like(image)
    assert imdecode(source, decoded, image.shape[0], image.shape[1], image.shape[0], image.shape[1]) == 0
    assert np.abs(decoded.astype(int) - by_pillow).mean() < 3  # libjpeg-turbo's fast DCT: about 1.5 on photographs
    half = np.zeros((image.shape[0] // 2, image.shape[1] // 2, 3), dtype=np.uint8)
    resize_crop(decoded, 0, image.shape[0], 0, image.shape[1], half)
    assert abs(half.mean() - decoded.mean()) < 3
# the JPEG decoder and OpenCV came from the archive, not from this machine's system folders
mapped = {line.split()[-1] for line in open("/proc/self/maps") if ".so" in line}
for name in ("libturbojpeg", "libopencv_core", "libopencv_imgproc"):
    (path,) = {path for path in mapped if Path(path).name.startswith(name)}
    assert Path(path).is_relative_to(unpacked / "lib"), path
print("decoded", len(list(folder.iterdir())), "images with FFCV from", unpacked)
"""


def test_pack_ffcv_makes_an_archive_whose_ffcv_and_libraries_load_from_where_it_is_unpacked(tiny_intel, tmp_path):
    """scripts/pack_ffcv.sh: FFCV and the libraries its extension loads, in one archive; unpacked elsewhere and put on
    PYTHONPATH and LD_LIBRARY_PATH, a Python decodes and resizes JPEG images with it (as its loaders do), the JPEG
    decoder and OpenCV mapped from the archive. Only the suffix-free copy of the extension is left, as a Python of
    another version finds it."""
    archive = tmp_path / "out" / "ffcv-portable.tar.gz"
    packed = run_script(["bash", str(ROOT / "scripts" / "pack_ffcv.sh"), str(archive)],
                        env={"PYTHON": sys.executable}, cwd=ROOT, timeout=300)
    assert packed.returncode == 0, packed.stderr[-2000:]
    assert f"shared libraries; for {platform.machine()} Linux with glibc" in packed.stdout
    unpacked = tmp_path / "elsewhere"
    unpacked.mkdir()
    assert run_script(["tar", "-C", str(unpacked), "-xzf", str(archive)]).returncode == 0
    assert {p.name for p in (unpacked / "lib").iterdir()} >= {"libturbojpeg.so.0"}
    assert not any(p.name.startswith(("libc.so", "libstdc++", "libm.so")) for p in (unpacked / "lib").iterdir())
    for versioned in (unpacked / "python" / "ffcv").glob("_libffcv.cpython-*.so"):
        versioned.unlink()
    folder = tmp_path / "images" / "few"
    folder.mkdir(parents=True)
    for image in sorted((tiny_intel / "seg_pred").iterdir())[:3]:
        (folder / image.name).write_bytes(image.read_bytes())
    checked = run_script([sys.executable, "-c", PACKED_FFCV_CHECK, str(unpacked), str(folder)], timeout=300,
                         env={"PYTHONPATH": str(unpacked / "python"), "LD_LIBRARY_PATH": str(unpacked / "lib")})
    assert checked.returncode == 0, checked.stderr[-3000:]
    assert "decoded 3 images with FFCV from" in checked.stdout
    refused = run_script(["bash", str(ROOT / "scripts" / "pack_ffcv.sh"), str(tmp_path / "x.tar.gz")],
                         env={"PYTHON": str(tmp_path / "no-python")}, cwd=ROOT)
    assert refused.returncode == 2 and "run bash scripts/setup.sh first" in refused.stderr
    (tmp_path / "a-file").write_text("")
    refused = run_script(["bash", str(ROOT / "scripts" / "pack_ffcv.sh"), str(tmp_path / "a-file" / "x.tar.gz")],
                         env={"PYTHON": sys.executable}, cwd=ROOT)
    assert refused.returncode == 2 and "its folder cannot be made or written" in refused.stderr
