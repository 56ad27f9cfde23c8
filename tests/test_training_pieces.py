"""Mixed precision choice, W&B modes and failures, atomic checkpoints."""

from __future__ import annotations

import dataclasses
import errno
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from toolkit.errors import CheckpointError, UserError
from toolkit.train import precision
from toolkit.train.checkpoint import complete_checkpoints, latest_checkpoint, load_checkpoint, save_checkpoint
from toolkit.train.state import TrainerState
from toolkit.train.tracking import RunLogger, choose_wandb_mode

# ---- mixed precision -------------------------------------------------------------------------------

@pytest.fixture
def cpu_without_bf16(monkeypatch):
    monkeypatch.setenv("SCENE_TOOLKIT_CPU_BF16", "0")


@pytest.fixture
def cpu_with_bf16(monkeypatch):
    monkeypatch.setenv("SCENE_TOOLKIT_CPU_BF16", "1")


def test_auto_never_picks_emulated_bf16_on_a_cpu(cpu_without_bf16):
    assert precision.choose_mixed_precision("auto", "cpu") == "no"


def test_auto_uses_bf16_where_the_cpu_has_it_unless_the_recipe_prefers_fp32(cpu_with_bf16):
    assert precision.choose_mixed_precision("auto", "cpu") == "bf16"
    assert precision.choose_mixed_precision("auto", "cpu", prefer_bf16_on_cpu=False) == "no"
    assert precision.choose_mixed_precision("bf16", "cpu", prefer_bf16_on_cpu=False) == "bf16"  # asked explicitly


def test_an_explicit_choice_is_obeyed_with_a_warning_when_it_is_slow(cpu_without_bf16):
    messages = []
    assert precision.choose_mixed_precision("bf16", "cpu", log=messages.append) == "bf16"
    assert "10x slower" in messages[0]
    assert precision.choose_mixed_precision("no", "cpu") == "no"
    assert precision.choose_mixed_precision("fp16", "cpu", log=messages.append) == "no"  # no fp16 autocast on CPUs
    assert "fp16" in messages[-1]


def test_the_launchers_explicit_choice_wins_over_auto(cpu_with_bf16):
    assert precision.choose_mixed_precision("auto", "cpu", launcher="no") == "no"  # `accelerate launch --mp no`
    assert precision.choose_mixed_precision("auto", "cuda", launcher="fp16") == "fp16"
    assert precision.choose_mixed_precision("bf16", "cpu", launcher="no") == "bf16"  # the recipe's own flag wins


def test_cpu_bf16_detection_honours_the_avx2_caps(monkeypatch):
    for name in ("SCENE_TOOLKIT_CPU_BF16", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY"):  # the suite may run capped
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(precision, "_cpuinfo_flags", lambda: frozenset({"avx2", "amx_bf16", "avx512_bf16"}))
    assert precision.cpu_has_native_bf16()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert not precision.cpu_has_native_bf16()
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert not precision.cpu_has_native_bf16()
    monkeypatch.setenv("SCENE_TOOLKIT_CPU_BF16", "1")  # the explicit override wins over everything
    assert precision.cpu_has_native_bf16()


@pytest.mark.parametrize("vendor, flags, faster", [
    ("GenuineIntel", {"avx2", "avx512_bf16", "amx_bf16", "amx_tile"}, True),  # AMX Xeon: ~2x fp32, measured
    ("AuthenticAMD", {"avx2", "avx512_bf16"}, True),  # Zen 4 EPYC: 2.0x fp32 on the denoiser's step, measured
    ("GenuineIntel", {"avx2", "avx512_bf16", "avx512_fp16"}, False),  # Xeon without AMX: 0.6x fp32, measured
    ("AuthenticAMD", {"avx2"}, False),  # AVX2 only: emulated, ~10x slower
])
def test_auto_picks_bf16_only_where_the_cpu_computes_it_faster_than_fp32(monkeypatch, vendor, flags, faster):
    for name in ("SCENE_TOOLKIT_CPU_BF16", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(precision, "_cpuinfo_flags", lambda: frozenset(flags))
    monkeypatch.setattr(precision, "_cpu_vendor", lambda: vendor)
    assert precision.cpu_has_native_bf16() == ("avx512_bf16" in flags)
    assert precision.cpu_bf16_is_faster() == faster
    assert precision.choose_mixed_precision("auto", "cpu") == ("bf16" if faster else "no")
    said = []
    assert precision.choose_mixed_precision("bf16", "cpu", log=said.append) == "bf16"  # asked for: obeyed
    native_but_slow = "avx512_bf16" in flags and not faster
    assert bool(said) == (not faster) and any("no faster than fp32" in line for line in said) == native_but_slow
    assert ("auto keeps fp32" in precision.describe_cpu()) == native_but_slow
    assert precision.runs_fast("bf16", "cpu") == faster and precision.runs_fast("no", "cpu")  # predict's default
    assert not precision.runs_fast("fp16", "cpu") and not precision.runs_fast("bf16", "mps")
    monkeypatch.setenv("SCENE_TOOLKIT_CPU_BF16", "1")  # the override declares fast native bf16
    assert precision.cpu_bf16_is_faster() and precision.choose_mixed_precision("auto", "cpu") == "bf16"


@pytest.mark.parametrize("capability, work, expected", [
    ((9, 0), 100.0, "no"),  # H200, a recipe-sized step: launch-bound, fp32 with TF32 measured fastest
    ((9, 0), 5000.0, "bf16"),  # a large step: bf16 in hardware
    ((7, 0), 100.0, "no"),  # V100, small step
    ((7, 0), 5000.0, "fp16"),  # V100 has no bf16 hardware: fp16, never emulated bf16
    ((7, 5), precision.BF16_MIN_FORWARD_GFLOP_PER_STEP, "fp16"),  # T4, at the threshold
])
def test_auto_on_cuda_follows_the_step_size_and_the_hardware(monkeypatch, capability, work, expected):
    def is_bf16_supported(including_emulation=True):
        return including_emulation or capability >= (8, 0)  # what torch answers on such a GPU

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert precision.choose_mixed_precision("auto", "cuda", forward_gflop_per_step=work) == expected
    assert precision.choose_mixed_precision("auto", "cuda", forward_gflop_per_step=lambda: work) == expected
    assert precision.cuda_bf16_in_hardware() == (capability >= (8, 0))
    assert precision.runs_fast("bf16", "cuda") == (capability >= (8, 0)) and precision.runs_fast("fp16", "cuda")


def test_launcher_precision_tells_an_explicit_no_from_an_unset_one(tmp_path):
    environ = {"ACCELERATE_MIXED_PRECISION": "no"}  # what accelerate launch exports in both cases
    assert precision.launcher_precision(environ, ["--mixed_precision", "no", "recipes/cnn.py"]) == "no"
    assert precision.launcher_precision(environ, ["--mixed-precision=no", "recipes/cnn.py"]) == "no"
    unset_config = tmp_path / "unset.yaml"
    unset_config.write_text("num_processes: 1\n# mixed_precision: 'no'   (commented out: the recipe chooses)\n")
    assert precision.launcher_precision(environ, ["--config_file", str(unset_config), "recipes/cnn.py"]) is None
    set_config = tmp_path / "set.yaml"
    set_config.write_text("num_processes: 1\nmixed_precision: 'no'\n")
    assert precision.launcher_precision(environ, ["--config_file", str(set_config), "recipes/cnn.py"]) == "no"
    assert precision.launcher_precision({"ACCELERATE_MIXED_PRECISION": "bf16"}, []) == "bf16"
    assert precision.launcher_precision({}, None) is None  # not launched by accelerate


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
    return RunLogger(True, tmp_path / "run", "tests", "run", {"lr": 0.1}, mode, "test",
                     resume_step=resume_step, log=lambda *_: None, group="a-study", job_type="cnn", tags=["seed-0"])


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


def test_a_run_after_one_whose_wandb_logging_failed_gets_a_wandb_run_of_its_own(tmp_path):
    """A study trains its sub-runs in one process: a W&B run dropped after a failure is not handed to the next
    logger (wandb.init returns an unfinished run unless told otherwise), so the next run logs into its own."""
    first = _logger(tmp_path / "first")
    broken_run = first.wandb_run

    def broken(*args, **kwargs):
        raise RuntimeError("wandb service crashed (test)")

    broken_run.log = broken
    first.log({"train/loss": 1.0}, step=1)
    assert first.wandb_run is None
    first.finish()
    second = _logger(tmp_path / "second")
    assert second.wandb_run is not None and second.wandb_run is not broken_run
    assert second.wandb_run.id != broken_run.id
    second.log({"train/loss": 0.5}, step=1)
    assert second.wandb_run is not None  # its logging works
    second.finish()
    assert list((tmp_path / "second" / "run" / "wandb").glob("offline-run-*/run-*.wandb"))


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
    logger = RunLogger(True, tmp_path / "run", "tests", "run", {"lr": 0.1}, "offline", "test",
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

def _state(step=0, model="SceneCNN", classes=None):
    return TrainerState("test", {"name": model, "kwargs": {}}, {"image_size": 8}, classes=classes, step=step)


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
        save_checkpoint(accelerator, tmp_path, step, _state(step), keep=2)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-00000002", "step-00000003"]
    (tmp_path / "checkpoints" / ".partial-step-00000004").mkdir()  # a write killed half-way
    assert latest_checkpoint(tmp_path).name == "step-00000003"
    saved = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    state = load_checkpoint(accelerator, latest_checkpoint(tmp_path), _state())
    assert state.step == 3 and torch.equal(model.weight, saved)


def test_a_damaged_checkpoint_names_the_one_to_fall_back_to(tmp_path):
    """A checkpoint whose weights were cut short (a copy that stopped, a disk that failed): resuming, predicting
    or denoising says it is damaged and names the run's checkpoint before it, or says there is none."""
    from toolkit.inference import load_trained_model

    accelerator, _ = _prepared()
    for step in (1, 2):
        save_checkpoint(accelerator, tmp_path, step, _state(step))
    weights = tmp_path / "checkpoints" / "step-00000002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="could not restore .*step-00000002 .*; delete that folder to resume "
                                              "from step-00000001"):
        load_checkpoint(accelerator, latest_checkpoint(tmp_path), _state())
    with pytest.raises(CheckpointError, match="model.safetensors cannot be read .*: the checkpoint is damaged; pass "
                                              "the one before it, .*step-00000001"):
        load_trained_model(tmp_path)
    shutil.rmtree(tmp_path / "checkpoints" / "step-00000001")
    with pytest.raises(CheckpointError, match="it is the run's only checkpoint: start a new --run_dir"):
        load_checkpoint(accelerator, latest_checkpoint(tmp_path), _state())


def test_a_checkpoint_from_another_model_is_refused(tmp_path):
    accelerator, _ = _prepared()
    save_checkpoint(accelerator, tmp_path, 1, _state(1, classes=["a", "b"]))
    with pytest.raises(CheckpointError, match="classes=\\['a', 'b'\\] but this run has classes"):
        load_checkpoint(accelerator, latest_checkpoint(tmp_path), _state(classes=["a", "c"]))
    with pytest.raises(CheckpointError, match="model='SceneCNN' but this run has model='FastResNet'"):
        load_checkpoint(accelerator, latest_checkpoint(tmp_path), _state(model="FastResNet", classes=["a", "b"]))
    with pytest.raises(CheckpointError, match="written by 1 process"):
        load_checkpoint(accelerator, latest_checkpoint(tmp_path), dataclasses.replace(
            _state(classes=["a", "b"]), num_processes=2))


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    accelerator, _ = _prepared()
    save_checkpoint(accelerator, tmp_path, 1, _state(1))

    def disk_full(output_dir, **kwargs):
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(accelerator, "save_state", disk_full)
    with pytest.raises(CheckpointError, match="previous checkpoint is intact"):
        save_checkpoint(accelerator, tmp_path, 2, _state(2))
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000001"]


def test_run_files_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """config.json, summary.json, metrics.jsonl, tables and every JSON the toolkit writes go through one writer: a
    write that fails half-way (a full disk) leaves the old file as it was and no temporary file beside it."""
    from toolkit.runs import write_json, write_text_whole

    target = tmp_path / "run" / "summary.json"
    write_json(target, {"loss": float("inf"), "steps": 3})
    assert json.loads(target.read_text()) == {"loss": None, "steps": 3}  # standard JSON: no Infinity
    write_json(tmp_path / "numpy.json", {"accuracy": np.float32(0.5), "right": [np.int64(3), np.float64("nan")]})
    assert json.loads((tmp_path / "numpy.json").read_text()) == {"accuracy": 0.5, "right": [3, None]}
    original = Path.write_text

    def half_then_full(self, text, *args, **kwargs):
        original(self, text[: len(text) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_full)
    with pytest.raises(OSError, match="No space left"):
        write_text_whole(target, json.dumps({"loss": 0.5, "steps": 4}))
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"loss": None, "steps": 3}
    assert [p.name for p in target.parent.iterdir()] == ["summary.json"]




# ---- SLURM ------------------------------------------------------------------------------------------

def test_the_slurm_launch_command_comes_from_slurms_variables():
    from toolkit.slurm import accelerate_launch_command, first_host

    environ = {"SLURM_NNODES": "2", "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]",
               "SLURM_GPUS_ON_NODE": "4", "SLURM_JOB_ID": "123456"}
    command = accelerate_launch_command(environ, ["recipes/fast_cnn.py", "--resume", "--run_dir=/shared/r"])
    assert command == ["accelerate", "launch", "--multi_gpu", "--num_machines", "2", "--num_processes", "8",
                       "--machine_rank", "1", "--main_process_ip", "gpu07", "--main_process_port", "29956",
                       "--rdzv_backend", "static", "--same_network", "recipes/fast_cnn.py", "--resume",
                       "--run_dir=/shared/r"]
    assert first_host("node12,node13") == "node12" and first_host("a[003-009,011]") == "a003"
    single = accelerate_launch_command({"SLURM_NNODES": "1", "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "box",
                                        "SLURM_GPUS_PER_NODE": "a100:1", "MAIN_PROCESS_PORT": "4000"},
                                       ["recipes/cnn.py"])
    assert "--multi_gpu" not in single and single[single.index("--num_processes") + 1] == "1"
    assert single[single.index("--main_process_port") + 1] == "4000"
    with pytest.raises(UserError, match="not inside a SLURM job"):
        accelerate_launch_command({}, ["recipes/cnn.py"])


def test_the_batch_script_runs_the_launcher_through_srun(tmp_path):
    import subprocess

    from conftest import ROOT

    script = (ROOT / "scripts" / "slurm.sbatch").read_text()
    assert "#SBATCH --nodes=" in script and "srun" in script and "-m toolkit.slurm" in script
    fake = {"SLURM_NNODES": "2", "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_GPUS_ON_NODE": "2",
            "SLURM_JOB_ID": "7", "PATH": __import__("os").environ["PATH"]}
    shown = subprocess.run([sys.executable, "-m", "toolkit.slurm", "--print", "recipes/cnn.py", "--epochs=1"],
                           capture_output=True, text=True, env=fake, cwd=ROOT)
    assert shown.returncode == 0 and "--num_processes 4 --machine_rank 0 --main_process_ip n1" in shown.stdout


def test_training_processes_import_matplotlib_only_for_their_first_figure(tmp_path):
    """Every training process imports the plots; matplotlib (0.25-0.8 s of each process's start) waits for the
    first figure, which is still written, on the Agg backend."""
    import subprocess

    from conftest import ROOT

    script = ("import sys; import toolkit.train.denoiser, toolkit.train.classifier, toolkit.latent; "
              "import toolkit.comparison; "
              "assert 'matplotlib' not in sys.modules, 'a training module imported matplotlib'; "
              "from toolkit.plots import plot_lines; "
              "plot_lines({'a': [(0, 1.0), (1, 2.0)]}, sys.argv[1], 'x', 'y'); "
              "import matplotlib; assert matplotlib.get_backend().lower() == 'agg'")
    figure = tmp_path / "lines.png"
    done = subprocess.run([sys.executable, "-c", script, str(figure)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
