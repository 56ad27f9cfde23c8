"""Data-parallel training with two CPU processes (gloo), launched the way the README says: results, order,
failures that must end every process, kills, resumes, per-process random streams, node-local run folders."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import RECIPES, logged_steps, run_command_line, run_script
from PIL import Image
from test_recipes import assert_same_final_weights

from toolkit.cli import main as toolkit_main
from toolkit.runs import read_metrics, series

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
CPU_ENV = {"ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled",
           "PYTHONFAULTHANDLER": "1"}  # a process that aborts prints where each of its threads was
COMMON = ["--width=4", "--image_size=32", "--batch_size=8", "--eval_every=3", "--checkpoint_every=2",
          "--num_workers=1", "--epochs=2", "--figures=false"]


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, queue = [], [pid]
    while queue:
        current = queue.pop()
        tree.append(current)
        queue += children.get(current, [])
    return tree


def free_port() -> int:
    """A port nothing listens on (tests may run side by side: torchrun's default 29500 would collide)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun_command(args: list[str], recipe: str = "cnn") -> list[str]:
    return [TORCHRUN, "--nproc_per_node", "2", "--master_port", str(free_port()), str(RECIPES / f"{recipe}.py"),
            *args]


def torchrun(args: list[str], recipe: str = "cnn", env: dict | None = None, timeout: int = 600):
    return run_script(torchrun_command(args, recipe), env={**CPU_ENV, **(env or {})}, timeout=timeout)


def ended(result) -> str:
    """How a failed launch ended: the main process's last lines (how far the run got) and the end of stderr (torchrun
    names the rank that failed first, and a rank that aborted says why only there)."""
    return f"stdout ends:\n{result.stdout[-1500:]}\nstderr ends:\n{result.stderr[-3000:]}"


@pytest.fixture(scope="module")
def odd_intel(tiny_intel, tmp_path_factory) -> Path:
    """tiny_intel with one test image less: 35, so the two processes' shards differ in size."""
    root = tmp_path_factory.mktemp("odd") / "odd-scenes"
    shutil.copytree(tiny_intel, root)
    sorted((root / "seg_test" / "street").iterdir())[-1].unlink()
    return root


def test_two_cpu_processes_train_together_survive_sigkill_resume_exactly_and_keep_the_images_order(odd_intel,
                                                                                                 tmp_path, capsys):
    """One uninterrupted two-process run, checked for what two processes must get right; then the same run
    killed mid-way with SIGKILL (torchrun and both workers, as a scheduler kills a job) and resumed must end
    with the same weights. 40 iterations: long enough to be killed between its checkpoints."""
    common = [f"--data={odd_intel}", *COMMON, "--epochs=4", "--batch_size=4", "--eval_every=5"]
    whole = torchrun([*common, f"--run_dir={tmp_path / 'whole'}"])
    assert whole.returncode == 0, ended(whole)
    summary = json.loads((tmp_path / "whole" / "summary.json").read_text())
    config = json.loads((tmp_path / "whole" / "config.json").read_text())
    assert config["num_processes"] == 2 and config["global_batch"] == 8
    assert "global batch 8 = 4 per process x 2 process(es)" in whole.stdout
    assert summary["test_images"] == 35  # every test image scored once, none padded in twice (shards of 18 and 17)
    assert summary["steps"] == 4 * (84 // (4 * 2))  # each iteration consumes 4 images per process
    steps = [step for step, _ in series(read_metrics(tmp_path / "whole"), "train/loss")]
    assert steps == sorted(set(steps))  # one set of metrics, not one per process
    newest = sorted((tmp_path / "whole" / "checkpoints").glob("step-*"))[-1]
    states = {p.name: p for p in newest.glob("random_states_*.pkl")}
    assert set(states) == {"random_states_0.pkl", "random_states_1.pkl"}
    # each process draws its own dropout: their torch random streams differ (they were identical before)
    torch_states = [torch.load(states[f"random_states_{r}.pkl"], weights_only=False)["torch_manual_seed"]
                    for r in (0, 1)]
    assert not torch.equal(torch_states[0], torch_states[1])

    # the saved per-image outputs follow the images' order, whatever process scored each image
    probabilities = np.load(tmp_path / "whole" / "test_probabilities.npy")
    labels = np.load(tmp_path / "whole" / "test_labels.npy")
    assert probabilities.shape == (35, 6)
    assert (probabilities.argmax(1) == labels).mean() == pytest.approx(summary["test_accuracy"])
    out = tmp_path / "evaluate"  # the same checkpoint, scored by one process decoding the files itself
    assert toolkit_main(["evaluate", str(tmp_path / "whole"), str(odd_intel / "seg_test"), "--out", str(out)]) == 0
    rows = (out / "predictions.csv").read_text().splitlines()[1:]
    alone = np.array([[float(x) for x in row.split(",")[-len(summary["classes"]) - 1:-1]] for row in rows])
    assert np.allclose(alone, probabilities, atol=1e-4)

    broken = tmp_path / "broken"
    process = subprocess.Popen(torchrun_command([*common, f"--run_dir={broken}"]), env={**os.environ, **CPU_ENV},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    killed_at = None
    while time.monotonic() < deadline and process.poll() is None:
        steps = logged_steps(broken)
        if steps and steps[-1] >= 9:
            killed_at = steps[-1]
            for pid in process_tree(process.pid):
                os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    process.wait()
    assert killed_at is not None and killed_at < 40, "the run ended before it could be killed"
    time.sleep(2)
    checkpoint = sorted((broken / "checkpoints").glob("step-*"))[-1]
    assert not (broken / "summary.json").exists() and int(checkpoint.name[5:]) < 40  # it really died mid-run
    resumed = torchrun([*common, f"--run_dir={broken}", "--resume"])
    assert resumed.returncode == 0, ended(resumed)
    assert f"resumed from {checkpoint}" in resumed.stdout
    assert_same_final_weights(tmp_path / "whole", broken)
    # a resume with another number of processes is refused with one line (in this process: a script's start-up
    # would add nothing that the recipe's command line does not already check)
    status, _, err = run_command_line("cnn", [*common, f"--run_dir={broken}", "--resume"], capsys)
    assert status == 2 and "2 process(es) and this run has 1" in err


@pytest.mark.parametrize("recipe, args", [
    ("fast_cnn", ["--train_image_sizes=24,32", "--image_size=40", "--widths=8,16,16,32", "--epochs=2"]),
    ("efficientnet_lite0", ["--image_size=32", "--train_from_block=12", "--epochs=2"])])
def test_the_other_classifiers_score_with_two_processes_what_their_checkpoint_scores_alone(recipe, args, odd_intel,
                                                                                           tmp_path):
    """fast_cnn (a second stored size for evaluation, BatchNorm, a weight average) and EfficientNet-Lite0's top mode
    (the frozen blocks' features cached by one process, read by both): their saved test probabilities, calibrated,
    equal what `toolkit evaluate` gives for the checkpoint in one process, image by image, and their metrics are
    logged once per step."""
    run_dir = tmp_path / recipe
    result = torchrun([f"--data={odd_intel}", f"--run_dir={run_dir}", *args, "--batch_size=8", "--eval_batch_size=32",
                       "--eval_every=3", "--checkpoint_every=2", "--num_workers=1", "--figures=false",
                       "--mixed_precision=no"], recipe=recipe)
    assert result.returncode == 0, ended(result)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["test_images"] == 35
    steps = [step for step, _ in series(read_metrics(run_dir), "train/loss")]
    assert steps == sorted(set(steps))
    out = tmp_path / "evaluate"
    assert toolkit_main(["evaluate", str(run_dir), str(odd_intel / "seg_test"), "--out", str(out)]) == 0
    rows = (out / "predictions.csv").read_text().splitlines()[1:]
    alone = np.array([[float(x) for x in row.split(",")[-len(summary["classes"]) - 1:-1]] for row in rows])
    assert np.allclose(alone, np.load(run_dir / "test_probabilities.npy"), atol=1e-4)
    scored = json.loads((out / "metrics.json").read_text())
    assert scored["accuracy"] == pytest.approx(summary["test_accuracy"])
    assert scored["loss"] == pytest.approx(summary["test_loss_calibrated"], rel=1e-4)


def test_the_blind_denoiser_trains_with_two_processes_and_scores_every_validation_tile_once(tmp_path):
    run_dir = tmp_path / "blind"
    result = torchrun(["--data=synthetic", "--tile_size=48", "--patch_size=32", "--batch_size=4", "--eval_every=5",
                       "--num_workers=1", "--grid_images=2", "--epochs=1", "--reductions=1,2",
                       "--model_kwargs=widths=(8,16,32),blocks=1", f"--run_dir={run_dir}"], recipe="blind_denoiser")
    assert result.returncode == 0, ended(result)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["val_tiles"] == 18  # 2 held-out images x 9 tiles, not padded
    steps = [step for step, _ in series(read_metrics(run_dir), "train/loss")]
    assert steps == sorted(set(steps)) and steps[-1] == summary["steps"]
    assert {"val_psnr_15", "val_psnr_50", "val/x2/psnr_25"} <= set(summary) | {
        key for record in read_metrics(run_dir) for key in record}


def test_two_processes_time_a_budget_together_and_train_as_the_epochs_it_chose(tiny_intel, tmp_path):
    """--train_minutes with two processes: each times as many stand-in steps as the one that needs most (their
    steps synchronise the gradients, so unequal counts would hang), the slowest median plans, and the timing
    leaves no trace: the weights equal --epochs=1 launched the same way. With minutes for a few epochs both
    re-plan at the same steps from the slowest clock (a process that chose another total would wait forever
    for the other's gradients) and train the last plan."""
    common = [f"--data={tiny_intel}", *[arg for arg in COMMON if not arg.startswith("--epochs")]]
    budget = torchrun([*common, "--train_minutes=0.0001", f"--run_dir={tmp_path / 'budget'}"], timeout=300)
    assert budget.returncode == 0, ended(budget)
    said = budget.stdout + budget.stderr
    assert "timed), so 1 epochs" in said and "shorter than one epoch" in said
    assert said.count("[budget]") == 1  # the main process speaks for both; spent at once, so no re-plan
    chosen = json.loads((tmp_path / "budget" / "config.json").read_text())["budget"]
    assert chosen["epochs"] == 1 and chosen["seconds_per_step"] > 0 and chosen["replans"] == []
    epochs = torchrun([*common, "--epochs=1", f"--run_dir={tmp_path / 'epochs'}"], timeout=300)
    assert epochs.returncode == 0, ended(epochs)
    assert_same_final_weights(tmp_path / "budget", tmp_path / "epochs")

    one_epoch = json.loads((tmp_path / "epochs" / "summary.json").read_text())["train_seconds"]
    minutes = 4 * max(one_epoch, 0.5) / 60  # some epochs, start-up included (which a slower one must not use up)
    replanned = torchrun([*common, f"--train_minutes={minutes:.5f}", f"--run_dir={tmp_path / 'replanned'}"],
                         timeout=300)
    assert replanned.returncode == 0, ended(replanned)
    chosen = json.loads((tmp_path / "replanned" / "config.json").read_text())["budget"]
    summary = json.loads((tmp_path / "replanned" / "summary.json").read_text())
    assert 1 <= len(chosen["replans"]) <= 9  # the first at a tenth of the plan or of the minutes
    assert replanned.stdout.count("[budget] re-planned at iteration") == len(chosen["replans"])
    assert summary["steps"] == chosen.get("stopped_at", chosen["steps"])


def test_more_processes_than_validation_or_test_images(tmp_path):
    data = tmp_path / "data"
    for name, count in (("a", 10), ("b", 30)):
        for index in range(count):
            pixels = np.random.default_rng(index + 100 * len(name)).integers(0, 255, (32, 32, 3), dtype=np.uint8)
            (data / "seg_train" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(data / "seg_train" / name / f"{index}.png")
    for name in ("a", "b"):
        (data / "seg_test" / name).mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), (200, 10, 10)).save(data / "seg_test" / "a" / "only.png")
    result = torchrun([f"--data={data}", *COMMON, "--val_fraction=0.04", "--batch_size=4",
                       f"--run_dir={tmp_path / 'run'}"], timeout=300)
    assert result.returncode == 0, ended(result)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test_images"] == 1 and "validation 1," in summary["data"]  # one process scored nothing


def test_a_user_error_every_process_finds_is_said_once(tiny_intel, tmp_path):
    result = torchrun([f"--data={tiny_intel}", *COMMON, "--batch_size=4096", f"--run_dir={tmp_path / 'run'}"],
                      timeout=300)
    assert result.returncode != 0
    said = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(said) == 1 and "batch size 4096 x 2 process(es) is more than" in said[0], ended(result)


def test_a_full_disk_on_another_process_stops_every_process_with_one_message(tiny_intel, tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK') == '1':\n"
        "    import torch\n"
        "    _save = torch.save\n"
        "    def _full(obj, f, *args, **kwargs):\n"
        "        if 'random_states' in str(f):\n"
        "            raise OSError(28, 'No space left on device')\n"
        "        return _save(obj, f, *args, **kwargs)\n"
        "    torch.save = _full\n")
    started = time.monotonic()
    result = torchrun([f"--data={tiny_intel}", *COMMON, f"--run_dir={tmp_path / 'run'}"],
                      env={"PYTHONPATH": f"{hook}:{os.environ.get('PYTHONPATH', '')}"}, timeout=300)
    assert time.monotonic() - started < 240  # ended, not deadlocked
    assert result.returncode != 0
    assert "error: process 1: could not write checkpoint" in result.stderr and "No space left" in result.stderr
    assert not list((tmp_path / "run" / "checkpoints").glob("step-*"))  # nothing half-written looks complete


def test_two_machines_without_a_shared_filesystem_keep_and_resume_their_own_checkpoints(tiny_intel, tmp_path):
    """Two 'machines' on this one: two torchrun node agents with different working directories, so the same
    relative --run_dir names two different folders, as node-local disks would."""
    common = [f"--data={tiny_intel}", *COMMON, "--run_dir=runs/node-local"]

    def two_nodes(args: list[str]):
        nodes, port = [], str(free_port())
        for rank in (0, 1):
            workdir = tmp_path / f"node{rank}"
            workdir.mkdir(exist_ok=True)
            nodes.append(subprocess.Popen([TORCHRUN, "--nnodes", "2", "--nproc_per_node", "1", "--node_rank",
                                           str(rank), "--master_addr", "127.0.0.1", "--master_port", port,
                                           str(RECIPES / "cnn.py"), *args], cwd=workdir,
                                          env={**os.environ, **CPU_ENV}, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
        return [(node.communicate(timeout=400), node.returncode) for node in nodes]

    first = two_nodes([*common, "--max_steps=3"])
    assert all(code == 0 for _, code in first), first[0][0][1][-2000:] + first[1][0][1][-2000:]
    assert "local to each machine" in first[0][0][0]
    for rank in (0, 1):  # each machine holds a complete checkpoint of its own
        assert sorted(p.name for p in (tmp_path / f"node{rank}" / "runs/node-local/checkpoints").glob("step-*"))
    resumed = two_nodes([*common, "--resume"])
    assert all(code == 0 for _, code in resumed), resumed[1][0][1][-3000:]
    assert "resumed from runs/node-local/checkpoints/step-00000003" in resumed[0][0][0]
    (tmp_path / "node1" / "runs/node-local/checkpoints").rename(tmp_path / "node1" / "lost")
    refused = two_nodes([*common, "--resume"])  # node 1 lost its copies: no common step to resume from
    assert any(code != 0 for _, code in refused)
    assert "hold no checkpoint in common" in refused[0][0][1] + refused[1][0][1]
