from dataclasses import dataclass
from typing import Literal

import pytest

from toolkit.config import check_fraction, check_positive, config_help, derive_config, field_comments, parse_config
from toolkit.errors import ConfigError


@dataclass
class Base:
    seed: int = 0  # the seed


@dataclass
class Example(Base):
    lr: float = 1e-3  # learning rate
    epochs: int = 3  # passes
    name: str = "run"  # a name
    flip: bool = True  # flip images
    mode: Literal["a", "b"] = "a"  # a choice


def test_defaults_and_overrides():
    cfg = parse_config(Example, ["--lr=0.5", "--epochs", "7", "--name=x", "--flip=false", "--mode=b", "--seed=3"])
    assert (cfg.lr, cfg.epochs, cfg.name, cfg.flip, cfg.mode, cfg.seed) == (0.5, 7, "x", False, "b", 3)
    assert parse_config(Example, []) == Example()
    assert parse_config(Example, ["--flip"]).flip is True
    assert parse_config(Example, ["--epochs=1", "--epochs=2"]).epochs == 2  # the last one wins


def test_unknown_key_names_valid_keys_and_suggests():
    with pytest.raises(ConfigError) as error:
        parse_config(Example, ["--epoch=3"])
    message = str(error.value)
    assert "--epoch" in message and "Did you mean --epochs?" in message and "lr, epochs" in message


@pytest.mark.parametrize("argument, expected", [
    ("--epochs=1.5", "whole number"), ("--lr=fast", "expects a number"), ("--flip=maybe", "true or false"),
    ("--mode=c", "not one of a, b"), ("--epochs", "needs a value"), ("stray", "unexpected argument"),
])
def test_wrong_values_are_explained(argument, expected):
    with pytest.raises(ConfigError, match=expected):
        parse_config(Example, [argument])


def test_help_lists_every_key_with_default_and_comment(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(Example, ["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for line in ("--lr", "0.001", "learning rate", "--seed", "the seed", "'a' | 'b'"):
        assert line in text
    assert field_comments(Example) == {"seed": "the seed", "lr": "learning rate", "epochs": "passes",
                                       "name": "a name", "flip": "flip images", "mode": "a choice"}
    assert "usage: train.py" in config_help(Example, "train.py")


def test_range_checks():
    check_positive(Example(), "lr", "epochs")
    with pytest.raises(ConfigError, match="--lr must be greater than 0, got -1"):
        check_positive(Example(lr=-1), "lr")
    with pytest.raises(ConfigError, match="--epochs must be greater than 0"):
        check_positive(Example(epochs=0), "epochs")
    with pytest.raises(ConfigError, match="below 1"):
        check_fraction(Example(lr=1.0), "lr")


def test_loader_threads_default_to_this_machines_cores_shared_by_its_processes(monkeypatch):
    import os

    from toolkit.run import default_num_workers

    cores = len(os.sched_getaffinity(0))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_num_workers() == cores
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores * 4))  # more processes than cores: still one thread each
    assert default_num_workers() == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert default_num_workers() == max(1, cores // 2)


def test_more_loader_threads_than_numba_allows_are_refused_with_the_limit(monkeypatch):
    """FFCV decodes on numba's threads, at most NUMBA_NUM_THREADS (the machine's cores by default): more was a numba
    traceback from inside the first loader, after the run folder was made."""
    import os

    from toolkit.run import RunSettings

    monkeypatch.delenv("NUMBA_NUM_THREADS", raising=False)
    cores = os.cpu_count()
    RunSettings(num_workers=cores).check_run_settings()
    with pytest.raises(ConfigError, match=f"--num_workers={cores + 1}: FFCV decodes with at most {cores} threads"):
        RunSettings(num_workers=cores + 1).check_run_settings()
    monkeypatch.setenv("NUMBA_NUM_THREADS", str(cores + 2))
    RunSettings(num_workers=cores + 1).check_run_settings()


@dataclass
class Parent(Base):
    eval_every: int = 25  # validation interval
    batch: int = 8  # images per batch


@dataclass
class Child(Base):
    eval_every: int = 0  # validation interval (another default than the parent's)
    batch: int = 8  # images per batch
    lr: float = 0.1  # learning rate


def test_sub_recipes_keep_their_own_defaults_unless_the_parent_chose_a_value():
    parent = parse_config(Parent, ["--seed=3"])
    child = derive_config(Child, parent, {"seed", "eval_every", "batch"})
    assert (child.seed, child.eval_every, child.batch) == (3, 0, 8)  # eval_every: the child's own default
    parent = parse_config(Parent, ["--eval_every=25"])  # given explicitly, though equal to the parent's default
    assert derive_config(Child, parent, {"eval_every"}).eval_every == 25
    built_in_code = Parent(batch=4)  # changed from its default without the parser
    assert derive_config(Child, built_in_code, {"batch", "eval_every"}, "--lr=0.5", seed=7) == Child(
        seed=7, eval_every=0, batch=4, lr=0.5)
    # what the study sets for each sub-run (its seed, its folder) cannot come in a recipe's options as well: it
    # would be overruled without a word
    with pytest.raises(ConfigError, match=r"--seed cannot be given among a recipe's options \('--lr=0.5 --seed=2'\)"
                                          r": the study sets it for each of its runs \(--seed=7\)"):
        derive_config(Child, built_in_code, {"batch"}, "--lr=0.5 --seed=2", seed=7)


def test_every_recipe_key_has_help_text():
    import dataclasses

    from toolkit.recipes import available_recipes, recipe_module

    for name in available_recipes():
        config_class = recipe_module(name).Config
        comments = field_comments(config_class)
        undocumented = [field.name for field in dataclasses.fields(config_class) if not comments.get(field.name)]
        assert not undocumented, f"recipes/{name}.py: --help has no meaning for {undocumented}"
