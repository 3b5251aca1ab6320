"""Typed configuration: dataclass defaults, YAML files, command-line overrides.

Every stage declares its hyperparameters as a dataclass. ``load_config`` merges, in order,
the dataclass defaults, a YAML file and ``key=value`` overrides (dotted keys, OmegaConf
syntax), and validates the result against the dataclass: a misspelt key or a value of the
wrong type is an error that names the key and the file, never silently ignored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

__all__ = ["ConfigError", "load_config", "config_to_yaml", "config_to_dict"]

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or override that does not fit the stage's schema."""


def load_config(schema: type[T], path: str | Path | Sequence[str | Path] | None = None, overrides: Sequence[str] = ()) -> T:
    """Build a validated ``schema`` instance from defaults, optional YAML files and overrides.

    Args:
        schema: a dataclass type whose fields (possibly nested dataclasses) are the config.
        path: a YAML file, or several merged in order (a later file's keys win); their keys must
            exist in ``schema``.
        overrides: ``"a.b=value"`` strings applied last.

    Raises:
        ConfigError: the file is missing or not YAML, a key is unknown, a value has the wrong type.
    """
    if not dataclasses.is_dataclass(schema):
        raise TypeError(f"{schema!r} is not a dataclass")
    merged = OmegaConf.structured(schema)
    paths = [] if path is None else [Path(path)] if isinstance(path, str | Path) else [Path(p) for p in path]
    for file in paths:
        if not file.is_file():
            raise ConfigError(f"config file {file} does not exist")
        try:
            loaded = OmegaConf.load(file)
        except Exception as err:  # yaml errors come in several types
            raise ConfigError(f"config file {file} is not valid YAML: {err}") from err
        if loaded is None:
            loaded = OmegaConf.create({})
        try:
            merged = OmegaConf.merge(merged, loaded)
        except OmegaConfBaseException as err:
            raise ConfigError(f"config file {file}: {_describe(err)}") from err
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as err:
            raise ConfigError(f"override {item!r}: {_describe(err)}") from err
    try:
        missing = sorted(OmegaConf.missing_keys(merged))
        if missing:
            raise ConfigError(f"required config keys are not set: {', '.join(missing)}")
        result = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(_describe(err)) from err
    validate = getattr(result, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as err:
            where = f"config file {', '.join(map(str, paths))}: " if paths else ""
            raise ConfigError(f"{where}{err}") from err
    return result  # type: ignore[return-value]


def config_to_dict(config: Any) -> dict[str, Any]:
    """A plain, JSON-serialisable dict of a config dataclass (paths become strings)."""
    return OmegaConf.to_container(OmegaConf.structured(config), resolve=True)  # type: ignore[return-value]


def config_to_yaml(config: Any) -> str:
    """The YAML text that ``load_config`` reads back to an equal config."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def _describe(err: OmegaConfBaseException) -> str:
    # OmegaConf's messages carry a multi-line "full_key/object_type" trailer; keep the
    # first line and name the key explicitly so the user sees which one is wrong.
    message = str(err).splitlines()[0]
    key = getattr(err, "full_key", None)
    if key and str(key) not in message:
        return f"{message} (key: {key})"
    return message
