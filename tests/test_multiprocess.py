"""Data-parallel training with two CPU processes (gloo), launched the way the README says."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import RECIPES, run_script
from test_recipes import assert_same_final_weights

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


def torchrun(args: list[str]):
    torchrun_path = Path(sys.executable).with_name("torchrun")
    return run_script([str(torchrun_path), "--nproc_per_node", "2", str(RECIPES / "cnn.py"), *args],
                      env={"ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"})


def test_two_cpu_processes_train_together_and_resume_exactly(tiny_intel, tmp_path):
    common = [f"--data={tiny_intel}", "--width=4", "--resolution=32", "--batch_size=8", "--eval_every=3",
              "--checkpoint_every=2", "--num_workers=1", "--epochs=2"]
    whole = torchrun([*common, f"--run_dir={tmp_path / 'whole'}"])
    assert whole.returncode == 0, whole.stderr[-3000:]
    summary = json.loads((tmp_path / "whole" / "summary.json").read_text())
    config = json.loads((tmp_path / "whole" / "config.json").read_text())
    assert config["num_processes"] == 2
    assert summary["test_images"] == 36  # every test image scored once, none padded in twice
    assert summary["steps"] == 2 * (84 // (8 * 2))  # each iteration consumes 8 images per process
    steps = [json.loads(line)["step"] for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()
             if "train/loss" in line]
    assert steps == sorted(set(steps))  # one set of metrics, not one per process
    newest = sorted((tmp_path / "whole" / "checkpoints").glob("step-*"))[-1]
    assert {p.name for p in newest.glob("random_states_*.pkl")} == {"random_states_0.pkl", "random_states_1.pkl"}

    first = torchrun([*common, f"--run_dir={tmp_path / 'split'}", "--max_steps=3"])
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = torchrun([*common, f"--run_dir={tmp_path / 'split'}", "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_final_weights(tmp_path / "whole", tmp_path / "split")
