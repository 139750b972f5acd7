"""Recipes: TOML files in ``manifests/`` that fill the components' config dataclasses.

A recipe has one table per step (``[filter]``, ``[portraits]``, ``[shards]``, ...). Each component
owns a small dataclass and builds it with :func:`build_config` from its table; unknown keys are an
error (a typo must not be silently ignored). The CLI takes the recipe plus ``key=value`` overrides,
e.g. ``filter.threshold=9.0``, applied with :func:`apply_overrides`.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a TOML recipe and apply ``section.key=value`` overrides (values parsed as TOML)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"recipe not found: {path}")
    try:
        recipe = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"recipe {path} is not valid TOML: {err}") from err
    recipe = apply_overrides(recipe, overrides or [])
    recipe.setdefault("recipe_path", str(path))
    return recipe


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word: keep it as a string


def apply_overrides(recipe: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``recipe`` with ``a.b.c=value`` overrides applied."""
    recipe = json.loads(json.dumps(recipe))  # deep copy of plain data
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form section.key=value")
        dotted, text = item.split("=", 1)
        keys = dotted.strip().split(".")
        node = recipe
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {key} is not a table")
        node[keys[-1]] = _parse_value(text.strip())
    return recipe


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation) and isinstance(value, dict):
        return build_config(annotation, value, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where) if len(args) == 1 else value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    return value


def build_config(cls: type[T], table: dict[str, Any] | None, where: str = "") -> T:
    """Build the dataclass ``cls`` from a recipe table, rejecting unknown keys with a clear error."""
    table = dict(table or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - names)
    if unknown:
        raise ValueError(
            f"unknown key(s) {unknown} in recipe table [{where or cls.__name__}]; known: {sorted(names)}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in table.items()}
    return cls(**kwargs)


def load_step_config(
    cls: type[T], recipe_path: str | Path, section: str, overrides: list[str] | None = None
) -> tuple[T, str]:
    """The config of one step's table (``[section]``) and the run name: the recipe's ``run``, else its file name."""
    recipe = load_recipe(recipe_path, overrides)
    config = build_config(cls, recipe.get(section), section)
    return config, str(recipe.get("run", Path(recipe_path).stem))


def config_to_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as plain data (for writing the resolved recipe into a run folder)."""
    return dataclasses.asdict(config)
