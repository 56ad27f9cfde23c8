"""Mixed precision choice, W&B modes and failures, atomic checkpoints."""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from toolkit.errors import CheckpointError
from toolkit.train import precision
from toolkit.train.checkpoint import complete_checkpoints, latest_checkpoint, load_checkpoint, save_checkpoint
from toolkit.train.tracking import RunLogger, choose_wandb_mode

# ---- mixed precision -------------------------------------------------------------------------------

@pytest.fixture
def cpu_without_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)


@pytest.fixture
def cpu_with_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)


def test_bf16_on_a_cpu_without_native_support_warns_and_runs_fp32(cpu_without_bf16):
    messages = []
    assert precision.choose_mixed_precision("bf16", "cpu", log=messages.append) == "no"
    assert "10x slower" in messages[0] and "--force_precision" in messages[0]
    assert precision.choose_mixed_precision("bf16", "cpu", force=True, log=messages.append) == "bf16"
    assert precision.choose_mixed_precision("auto", "cpu", log=messages.append) == "no"


def test_auto_uses_bf16_where_the_cpu_has_it(cpu_with_bf16, monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert precision.choose_mixed_precision("auto", "cpu") == "bf16"
    assert precision.choose_mixed_precision("no", "cpu") == "no"


def test_fp16_is_refused_on_cpu_and_the_launcher_choice_is_honoured(cpu_with_bf16, monkeypatch):
    messages = []
    assert precision.choose_mixed_precision("fp16", "cpu", log=messages.append) == "no"
    assert "fp16" in messages[0]
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    assert precision.choose_mixed_precision("auto", "cuda") == "fp16"


# ---- W&B -----------------------------------------------------------------------------------------

def test_wandb_mode_choice(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", "/nonexistent")  # no ~/.netrc
    assert choose_wandb_mode("auto")[0] == "offline"  # no key
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    mode, reason = choose_wandb_mode("auto")
    assert mode == "offline" and "unreachable" in reason
    monkeypatch.setenv("WANDB_MODE", "")  # an empty WANDB_MODE would crash wandb: it is removed
    assert choose_wandb_mode("disabled") == ("disabled", "--wandb_mode=disabled")
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert choose_wandb_mode("auto")[0] == "offline"


def _logger(tmp_path, mode="offline", resume_step=None):
    accelerator = Accelerator(cpu=True, log_with="wandb" if mode != "disabled" else None)
    return RunLogger(accelerator, tmp_path / "run", "tests", "run", {"lr": 0.1}, mode, "test",
                     resume_step=resume_step, log=lambda *_: None)


def test_offline_run_writes_local_files_and_a_wandb_run(tmp_path):
    logger = _logger(tmp_path)
    logger.log({"train/loss": 1.5, "per_class": [0.1, 0.2]}, step=1)
    logger.log({"train/loss": float("nan")}, step=2)
    logger.summary({"accuracy": 0.5})
    logger.finish()
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["train/loss"] == 1.5 and records[0]["per_class"] == [0.1, 0.2]
    assert records[1]["train/loss"] is None  # NaN is written as null: the file stays valid JSON
    assert json.loads((run / "summary.json").read_text()) == {"accuracy": 0.5}
    assert json.loads((run / "config.json").read_text()) == {"lr": 0.1}
    assert list((run / "wandb").glob("offline-run-*/run-*.wandb"))


def test_a_wandb_failure_mid_run_never_stops_logging(tmp_path):
    logger = _logger(tmp_path)

    def broken(*args, **kwargs):
        raise RuntimeError("wandb service crashed (test)")

    logger.wandb_run.log = broken
    logger.log({"train/loss": 1.0}, step=1)  # must not raise
    logger.log({"train/loss": 0.5}, step=2)
    assert logger.wandb_run is None
    logger.finish()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2


def test_wandb_that_cannot_start_falls_back_to_local_logs(tmp_path, monkeypatch):
    import wandb

    def refuse(*args, **kwargs):
        raise wandb.errors.CommError("invalid API key (test)")

    monkeypatch.setattr(wandb, "init", refuse)
    logger = _logger(tmp_path, mode="online")
    assert logger.wandb_run is None and logger.wandb_mode == "disabled"
    logger.log({"x": 1.0}, step=1)
    logger.finish()
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == 1


def test_a_missing_wandb_package_is_not_fatal(tmp_path, monkeypatch):
    """A machine without wandb installed (seen on a lent GPU) still trains and logs locally."""
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now raises ImportError
    messages = []
    logger = RunLogger(Accelerator(cpu=True), tmp_path / "run", "tests", "run", {"lr": 0.1}, "offline", "test",
                       log=messages.append)
    assert logger.wandb_run is None and logger.wandb_mode == "disabled"
    logger.log({"x": 1.0}, step=1)
    logger.finish()
    assert any("cannot import wandb" in m and "pip install wandb" in m for m in messages)
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == 1


def test_resume_truncates_metrics_after_the_checkpoint(tmp_path):
    logger = _logger(tmp_path, mode="disabled")
    for step in range(1, 6):
        logger.log({"loss": step}, step)
    logger.finish()
    (tmp_path / "run" / "metrics.jsonl").open("a").write('{"step": 6, "lo')  # a line cut by a kill
    resumed = _logger(tmp_path, mode="disabled", resume_step=3)
    assert resumed.wandb_floor == 5
    resumed.finish()
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


# ---- checkpoints -----------------------------------------------------------------------------------

def _prepared(seed=0):
    torch.manual_seed(seed)
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model, optimizer = accelerator.prepare(model, optimizer)
    return accelerator, model


def test_checkpoints_are_atomic_pruned_and_restorable(tmp_path):
    accelerator, model = _prepared()
    for step in (1, 2, 3):
        save_checkpoint(accelerator, tmp_path, step, {"step": step, "model": "Linear"}, keep=2)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-00000002", "step-00000003"]
    (tmp_path / "checkpoints" / ".partial-step-00000004").mkdir()  # a write killed half-way
    assert latest_checkpoint(tmp_path).name == "step-00000003"
    saved = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    state = load_checkpoint(accelerator, latest_checkpoint(tmp_path), {"model": "Linear"})
    assert state["step"] == 3 and torch.equal(model.weight, saved)


def test_a_checkpoint_from_another_model_is_refused(tmp_path):
    accelerator, _ = _prepared()
    save_checkpoint(accelerator, tmp_path, 1, {"model": "Linear", "classes": ["a", "b"]})
    with pytest.raises(CheckpointError, match="classes=\\['a', 'b'\\] but this run has classes"):
        load_checkpoint(accelerator, latest_checkpoint(tmp_path), {"model": "Linear", "classes": ["a", "c"]})


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    accelerator, _ = _prepared()
    save_checkpoint(accelerator, tmp_path, 1, {"model": "Linear"})

    def disk_full(output_dir, **kwargs):
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(accelerator, "save_state", disk_full)
    with pytest.raises(CheckpointError, match="previous checkpoint is intact"):
        save_checkpoint(accelerator, tmp_path, 2, {"model": "Linear"})
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000001"]


def test_a_recipe_can_keep_auto_at_fp32_on_cpus(cpu_with_bf16, monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert precision.choose_mixed_precision("auto", "cpu", cpu_bf16_pays=False) == "no"
    assert precision.choose_mixed_precision("bf16", "cpu", cpu_bf16_pays=False) == "bf16"  # asked for explicitly
