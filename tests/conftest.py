"""Shared fixtures: tiny synthetic datasets, an isolated cache, offline W&B, recipe loading."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
SHARED_DATA = ROOT.parent / "shared" / "data"


def _share_cores_between_workers() -> None:
    """Under pytest-xdist each worker gets its share of the cores, and so do the processes its tests start."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        threads = max(1, (os.cpu_count() or 1) // workers)
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


_share_cores_between_workers()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One .beton cache for the whole session, so tests share what earlier tests wrote."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def isolated_environment(cache_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("SCENE_TOOLKIT_CACHE", str(cache_dir))
    monkeypatch.setenv("WANDB_MODE", "disabled")  # tests that check W&B ask for offline themselves
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)  # runs/ folders land in the test's own directory
    yield
    _reset_accelerate()


def _reset_accelerate() -> None:
    """Accelerate keeps process-wide singletons; each in-process recipe run starts clean."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()


@pytest.fixture(scope="session")
def tiny_intel(tmp_path_factory) -> Path:
    """A small synthetic dataset in the Intel layout: 6 classes x 16 train, x 6 test, 12 unlabeled."""
    from toolkit.data.synthetic import write_synthetic_scenes

    return write_synthetic_scenes(tmp_path_factory.mktemp("tiny-intel"), train_per_class=16, test_per_class=6,
                                  pred_images=12, size=64)


def load_recipe(name: str):
    """recipes/<name>.py as a module, imported the way the toolkit's studies import it."""
    from toolkit.recipes import recipe_module

    return recipe_module(name)


def run_script(args: list[str], env: dict | None = None, timeout: int = 600, cwd: Path | None = None):
    """Run a command with this interpreter's environment; returns CompletedProcess (text)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd)


def run_toolkit_without_heavy_imports(args: list[str]):
    """`toolkit ARGS` in a fresh process, as a user runs it, failing if the command imported FFCV (whose import
    costs seconds of numba compiling that inference has no use for) or torchvision (2 s: it imports
    torch._dynamo; give it models that are not torchvision's); returns CompletedProcess (text)."""
    import sys

    command = ("import sys; from toolkit.cli import main; code = main(sys.argv[1:]); "
               "assert 'ffcv' not in sys.modules, f'toolkit {sys.argv[1]} imported FFCV'; "
               "assert 'torchvision' not in sys.modules, f'toolkit {sys.argv[1]} imported torchvision'; "
               "sys.exit(code)")
    return run_script([sys.executable, "-c", command, *args])


def logged_steps(run_dir: Path) -> list[int]:
    """The step of every complete line of a run's metrics.jsonl so far ([] before it exists): what tests that
    kill a running run watch (the line being written when they look is skipped)."""
    from toolkit.runs import read_metrics

    return [record["step"] for record in read_metrics(run_dir) if "step" in record]


# no figures (half a tiny run's time): test_cnn_recipe_writes_a_complete_run draws and checks them
TINY_CLASSIFIER = ["--epochs=2", "--image_size=32", "--batch_size=16", "--eval_batch_size=32", "--eval_every=4",
                   "--checkpoint_every=3", "--num_workers=1", "--log_every=1", "--figures=false"]


def run_command_line(recipe: str, args: list[str], capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `python recipes/<recipe>.py ARGS`, run in this process (no interpreter
    start-up): run_recipe parses, runs and turns errors into one line exactly as the script does."""
    from toolkit.run import run_recipe

    module = load_recipe(recipe)
    capsys.readouterr()
    try:
        run_recipe(module.main, module.Config, args)
        status = 0
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return status, out, err
