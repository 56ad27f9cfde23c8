"""Short runs on the real Intel training split (../shared/data), skipped where it is absent."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import SHARED_DATA
from test_recipes import run_in_process

INTEL = Path(os.environ.get("SCENE_TOOLKIT_SHARED_DATA", SHARED_DATA)) / "intel"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (INTEL / "seg_train").is_dir(), reason="real Intel data not available")]


def test_cnn_learns_on_a_subset_of_the_real_intel_split(tmp_path):
    summary = run_in_process("cnn", [f"--data={INTEL}", f"--run_dir={tmp_path / 'run'}", "--max_train_images=600",
                                     "--width=8", "--image_size=48", "--batch_size=40", "--epochs=3",
                                     "--eval_every=0", "--checkpoint_every=0", "--val_fraction=0.02",
                                     "--holdout_fraction=0.02", "--num_workers=2"])
    assert summary["test_split"] == "holdout" and summary["test_images"] >= 270
    assert summary["synthetic_data"] is False
    assert summary["test_accuracy"] > 0.3  # 6 classes: chance is 1/6; 45 steps of a small CNN clear it
    manifests = [json.loads(path.read_text()) for path in
                 Path(os.environ["SCENE_TOOLKIT_CACHE"]).glob("intel-seg_train-*/manifest.json")]
    assert [m["num_samples"] for m in manifests if m["root"] == str((INTEL / "seg_train").resolve())] == [14034]
