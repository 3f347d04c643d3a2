"""Recipes: the anchors' fine-tuning settings as data files (finetune/recipes/*.json), in the spirit of
nanoGPT's config files. `finetune-layers --recipe NAME` takes a recipe's settings as its defaults, and
any flag given on the command line overrides them.

A recipe file holds
    name, summary   what it is (listed by `finetune-layers --help`)
    source          the paper and the files of the authors' code its settings come from
    settings        finetune-layers options by their argument names (loss, weights, layers,
                    extras, lr, betas, eps, weight_decay, decay, warmup_steps, schedule,
                    batch_size, epochs or steps, precision, clip_grad_norm, second_loss, ...)
    notes           for each setting, where in the source it comes from
JSON, so that the standard library reads it on every supported Python (tomllib needs 3.11); the
provenance that a TOML file would keep in comments is the `notes` field. No torch is imported here.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probing.io import DuplicateKeyError, strict_json_loads

RECIPES_DIR = Path(__file__).with_name("recipes")
_REQUIRED = ("name", "summary", "source", "settings")


class RecipeError(ValueError):
    """A recipe that does not exist or cannot be read; the message names the file and the problem."""


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    source: str
    settings: dict[str, Any]
    notes: dict[str, str] = field(default_factory=dict)
    path: Path | None = None


def recipe_names() -> list[str]:
    """The recipes that ship with the package, by name."""
    return sorted(path.stem for path in RECIPES_DIR.glob("*.json"))


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A shipped recipe by name ("conclip"), or a recipe file of the same layout by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPES_DIR / f"{name_or_path}.json"
        if not path.is_file():
            raise RecipeError(f"unknown recipe {str(name_or_path)!r}; shipped recipes: {', '.join(recipe_names())} "
                              "(or give a recipe file's path)")
    if not path.is_file():
        raise RecipeError(f"recipe file {path} does not exist")

    try:
        data = strict_json_loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise RecipeError(f"recipe file {path} is not valid JSON: {error}") from None
    except DuplicateKeyError as error:
        raise RecipeError(f"recipe file {path}: {error}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"recipe file {path}: expected a JSON object, found {type(data).__name__}")
    missing = [key for key in _REQUIRED if key not in data]
    unknown = sorted(set(data) - set(_REQUIRED) - {"notes"})
    if missing or unknown:
        raise RecipeError(f"recipe file {path}: " + "; ".join(
            part for part in (f"missing {', '.join(missing)}" if missing else "",
                              f"unknown key(s) {', '.join(unknown)}" if unknown else "") if part))
    if not isinstance(data["settings"], dict) or not isinstance(data.get("notes", {}), dict):
        raise RecipeError(f"recipe file {path}: 'settings' and 'notes' must be JSON objects")
    return Recipe(str(data["name"]), str(data["summary"]), str(data["source"]), dict(data["settings"]),
                  dict(data.get("notes", {})), path)


def recipes_help() -> str:
    """One line per shipped recipe, for --help."""
    recipes = [load_recipe(name) for name in recipe_names()]
    width = max(len(recipe.name) for recipe in recipes)
    return "\n".join(f"  {recipe.name:<{width}}  {recipe.summary}" for recipe in recipes)
