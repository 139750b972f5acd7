"""Recipes: TOML files in ``manifests/`` that fill the components' config dataclasses.

A recipe has one table per step (``[filter]``, ``[portraits]``, ``[shards]``, ...). Each component
owns a small dataclass and builds it with :func:`build_config` from its table, which checks every value
against its field's type: unknown keys and values of the wrong type are errors (a typo or ``lr = "1e-4"``
must not pass silently and fail deep in a run), all reported at once as one :class:`RecipeError`. The CLI takes the recipe plus ``key=value`` overrides,
e.g. ``filter.threshold=9.0``, applied with :func:`apply_overrides`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tomllib
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

T = TypeVar("T")


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a TOML recipe and apply ``section.key=value`` overrides (values parsed as TOML)."""
    path = Path(path)
    if not path.exists():
        raise MissingInput(f"recipe not found: {path}")
    try:
        recipe = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"recipe {path} is not valid TOML: {err}") from err
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
            raise UserError(f"override {item!r} is not of the form section.key=value")
        dotted, text = item.split("=", 1)
        keys = dotted.strip().split(".")
        node = recipe
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise UserError(f"override {item!r}: {key} is not a table")
        node[keys[-1]] = _parse_value(text.strip())
    return recipe


class UserError(ValueError):
    """An error in what the user gave: a recipe value, an override, a path, an input file or URL. The CLIs
    print it in one line and exit 2; its message names the file, row or key and says what to do. Every
    other exception is a bug or an environment failure: traceback and exit 1."""


class MissingInput(UserError, FileNotFoundError):
    """A path or URL the user gave (a recipe, a CSV folder, a shard set) that does not exist."""


class RecipeError(UserError):
    """Every invalid value of a recipe, found at once; ``str()`` is one line naming the file and each key."""

    def __init__(self, errors: list[str], recipe_path: str = ""):
        super().__init__(errors)
        self.errors = errors
        self.recipe_path = recipe_path
        """The recipe file; a CLI that knows it fills it in when the builder did not."""

    def __str__(self) -> str:
        where = f"recipe {self.recipe_path}" if self.recipe_path else "recipe"
        count = len(self.errors)
        return f"{where}: {count} invalid value{'s' if count > 1 else ''}: " + "; ".join(self.errors)


_INVALID = object()  # what a check returns for a value it rejected (the error is recorded)


def _describe(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("nothing" if a is type(None) else _describe(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_plural(args[0])}"
        return f"a list of {len(args)} values ({', '.join(_describe(a) for a in args)})"
    if origin is list:
        return f"a list of {_plural(args[0])}" if args else "a list"
    if origin is dict or dataclasses.is_dataclass(annotation):
        return "a table"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", Path: "a path"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _plural(annotation: Any) -> str:
    described = _describe(annotation)
    for article in ("an ", "a "):
        if described.startswith(article):
            return described[len(article) :] + "s"
    return described


def _bad(errors: list[str], key: str, annotation: Any, value: Any) -> object:
    shown = json.dumps(value, default=str)
    errors.append(f"{key} = {shown}: expected {_describe(annotation)}")
    return _INVALID


def _check(value: Any, annotation: Any, key: str, errors: list[str]) -> Any:
    """``value`` converted to ``annotation`` (int -> float, list -> tuple, str -> Path), or ``_INVALID``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            return _bad(errors, key, annotation, value)
        return _build(annotation, value, key, errors)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options:
            found: list[str] = []
            out = _check(value, option, key, found)
            if not found:
                return out
        if len(options) == 1:
            errors.extend(found)
            return _INVALID
        return _bad(errors, key, annotation, value)
    if origin is typing.Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        return _bad(errors, key, annotation, value)
    if annotation is bool or annotation is str:
        return value if isinstance(value, annotation) else _bad(errors, key, annotation, value)
    if annotation is int:
        return (
            value if isinstance(value, int) and not isinstance(value, bool) else _bad(errors, key, int, value)
        )
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        return _bad(errors, key, float, value)
    if annotation is Path:
        return Path(value) if isinstance(value, (str, Path)) else _bad(errors, key, Path, value)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return _bad(errors, key, annotation, value)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                return _bad(errors, key, annotation, value)
            kinds = args
        else:
            kinds = [args[0] if args else Any] * len(value)
        before = len(errors)
        items = [
            _check(v, kind, f"{key}[{i}]", errors)
            for i, (v, kind) in enumerate(zip(value, kinds, strict=True))
        ]
        if len(errors) > before:
            return _INVALID
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            return _bad(errors, key, annotation, value)
        before = len(errors)
        kind = args[1] if args else Any
        out = {k: _check(v, kind, f"{key}.{k}", errors) for k, v in value.items()}
        return out if len(errors) == before else _INVALID
    return value  # Any, object, and types a recipe does not fill


def _build(cls: type[T], table: dict[str, Any], where: str, errors: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    before = len(errors)
    unknown = sorted(set(table) - set(names))
    if unknown:
        errors.append(f"unknown key(s) {unknown} in [{where or cls.__name__}]; known: {sorted(names)}")
    kwargs = {}
    for key, value in table.items():
        if key in names:
            out = _check(value, hints[key], f"{where}.{key}" if where else key, errors)
            if out is not _INVALID:
                kwargs[key] = out
    try:  # the valid values (defaults for the others): the dataclass's own checks may find more
        config = cls(**kwargs)
    except (ValueError, TypeError) as err:
        errors.append(f"[{where or cls.__name__}] {err}")
        return _INVALID
    return config if len(errors) == before else _INVALID


def build_config(cls: type[T], table: dict[str, Any] | None, where: str = "", recipe_path: str = "") -> T:
    """Build the dataclass ``cls`` from a recipe table, checking every value against its field's type.

    Unknown keys, values of the wrong type (int, float (an int is accepted), bool, str, paths, optional
    values, tuples of fixed length or of any length, lists, ``Literal`` choices, nested tables) and the
    dataclasses' own checks are all collected and raised together as one :class:`RecipeError`, naming
    each key (``where`` is the table's dotted name) and the recipe file, before any work starts.
    """
    errors: list[str] = []
    config = _build(cls, dict(table or {}), where, errors)
    if errors:
        raise RecipeError(errors, recipe_path)
    return config


def check_placement(placement: dict[str, dict[str, float]], stages: tuple[str, ...], where: str) -> None:
    """Check a recipe's ``placement`` table (stage name -> custom Ray resources per task or actor) against
    the job's stage names; ``where`` names the table in the error."""
    unknown = sorted(set(placement) - set(stages))
    if unknown:
        raise UserError(f"{where} names no stage of this job: {unknown}; its stages are {list(stages)}")
    for name, resources in placement.items():
        if not resources or any(amount <= 0 for amount in resources.values()):
            raise UserError(f"{where}.{name} = {dict(resources)}: give each custom resource an amount > 0")


@dataclasses.dataclass(frozen=True)
class StageResources:
    """The one shape of a job's ``[<step>.resources]`` recipe table: per stage ``<stage>_actors``,
    ``<stage>_cpus``, ``<stage>_gpus`` (declared by each job's subclass, for the stages that have them),
    and these fields shared by every job. :meth:`stage` turns them into a stage's resource arguments, each
    named by its recipe key."""

    TABLE: ClassVar[str] = ""
    """The recipe table, e.g. ``shards.resources``."""
    STAGES: ClassVar[tuple[str, ...]] = ()
    """The job's stage names (the keys ``placement`` may use)."""

    num_cpus: int = 0
    """CPUs of the local Ray instance (0: all of the machine's); ignored when joining a cluster."""
    wait_for_resources_s: float = 600.0
    """How long a job waits, before any stage starts, for an autoscaler to add a node that can run a stage
    the cluster cannot run now (a local Ray instance or a cluster without an autoscaler stops at once)."""
    placement: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    """Custom Ray resources per stage, pinning it to the nodes started with them (``ray start --resources``),
    e.g. ``{vae = {gpu_node = 1}}``; the stages are the subclass's ``STAGES``. Empty: Ray places every stage."""

    def __post_init__(self) -> None:
        check_placement(self.placement, self.STAGES, f"{self.TABLE}.placement")

    def stage(self, name: str) -> dict[str, Any]:
        """The resource arguments of stage ``name`` (``actors``, ``cpus``, ``gpus``, ``resources``,
        ``recipe_keys``): the fields ``<name>_actors``, ``<name>_cpus``, ``<name>_gpus`` the table has."""
        assert name in self.STAGES, f"{name} is not a stage of {self.TABLE}"
        out: dict[str, Any] = {"resources": self.placement.get(name, {})}
        keys = {"placement": f"{self.TABLE}.placement.{name}"}
        for arg, resource in (("actors", None), ("cpus", "CPU"), ("gpus", "GPU")):
            field_name = f"{name}_{arg}"
            if hasattr(self, field_name):
                out[arg] = getattr(self, field_name)
                if resource:
                    keys[resource] = f"{self.TABLE}.{field_name}"
        out["recipe_keys"] = keys
        return out


def load_step_config(
    cls: type[T], recipe_path: str | Path, section: str, overrides: list[str] | None = None
) -> tuple[T, str]:
    """The config of one step's table (``[section]``) and the run name: the recipe's ``run``, else its file name."""
    recipe = load_recipe(recipe_path, overrides)
    config = build_config(cls, recipe.get(section), section, str(recipe_path))
    return config, str(recipe.get("run", Path(recipe_path).stem))


def run_cli(app: Callable[[], Any]) -> None:
    """Run a command-line app (``dataengine``, ``trainer``): a :class:`UserError` (a bad recipe value or
    override, a missing path, a malformed input: the message names the file and what to do) is one line on
    stderr and exit code 2; anything else is a bug or an environment failure and keeps its traceback (exit
    code 1). ``MIVE_TRACEBACK=1`` shows the traceback of a user error too."""
    try:
        app()
    except UserError as err:
        if os.environ.get("MIVE_TRACEBACK"):
            raise
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        raise SystemExit(2) from None


def config_to_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as plain data (for writing the resolved recipe into a run folder)."""
    return dataclasses.asdict(config)
