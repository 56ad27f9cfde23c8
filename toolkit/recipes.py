"""The recipes as modules: for the comparison, the latent study, the benchmark and the GPU check.

Recipes are scripts (`accelerate launch recipes/X.py`), not a package; this is the one place that
imports them, by path, so that their `Config` defaults stay the single source of truth for every
batch size, image size and hyper-parameter that other tools need.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from toolkit.errors import ConfigError

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"


def available_recipes() -> list[str]:
    return sorted(path.stem for path in RECIPES_DIR.glob("*.py") if not path.stem.startswith("_"))


def recipe_module(name: str) -> ModuleType:
    """recipes/<name>.py, imported once (as scene_toolkit_recipes.<name>)."""
    key = f"scene_toolkit_recipes.{name}"
    if key in sys.modules:
        return sys.modules[key]
    path = RECIPES_DIR / f"{name}.py"
    if not path.is_file():
        raise ConfigError(f"no recipe {name!r}: choose from {', '.join(available_recipes())} (in {RECIPES_DIR})")
    spec = importlib.util.spec_from_file_location(key, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module


def recipe_defaults(name: str):
    """The recipe's Config with its own defaults."""
    return recipe_module(name).Config()


def classifier_recipes() -> list[str]:
    """Every recipe that trains one classifier (its Config takes the classification data keys and it is not a study)."""
    from toolkit.data.settings import ClassificationDataSettings

    found = []
    for name in available_recipes():
        config = getattr(recipe_module(name), "Config", None)
        if config is not None and issubclass(config, ClassificationDataSettings) and "models" not in \
                config.__dataclass_fields__:
            found.append(name)
    return found
