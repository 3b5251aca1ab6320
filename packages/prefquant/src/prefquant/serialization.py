"""Saving quantizers as a folder of ``config.json`` + ``model.safetensors`` (never pickle).

:class:`QuantizerCheckpoint` is the base class of the quantizers: it gives them
``save_pretrained`` / ``from_pretrained`` and registers each under the class name a saved
config records, so that :func:`load_quantizer` rebuilds the right class without this module
importing :mod:`prefquant.quantizer` (which imports this one for the base class).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Self

import torch
from torch import nn

from ._version import __version__
from .safetensors_io import CheckpointError, atomic_write_bytes, load_safetensors, save_safetensors

__all__ = ["CONFIG_NAME", "FORMAT_VERSION", "WEIGHTS_NAME", "QuantizerCheckpoint", "load_quantizer", "save_quantizer"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "prefquant.quantizer"
# Bump when the meaning of saved tensors changes; loaders refuse versions they do not know.
FORMAT_VERSION = 1

_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


class QuantizerCheckpoint(nn.Module):
    """A quantizer that saves as ``config.json`` + ``model.safetensors``: ``VectorQuantizer``, ``ResidualQuantizer``.

    A subclass defines ``config()``, the keyword arguments that rebuild it. Only the direct
    subclasses are registered (by class name, as saved configs record it), so a subclass of
    one of them is not mistaken for it on load; saving one raises ``TypeError``.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if QuantizerCheckpoint in cls.__bases__:
            _CLASSES[cls.__name__] = cls

    def config(self) -> dict[str, Any]:
        """The constructor's keyword arguments, as JSON values."""
        raise NotImplementedError

    def save_pretrained(self, directory: str | os.PathLike[str]) -> None:
        """Write ``config.json`` and ``model.safetensors`` to ``directory`` (atomically, no pickle)."""
        save_quantizer(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Self:
        """Load a quantizer written by :meth:`save_pretrained`, validating config and tensors."""
        return load_quantizer(directory, expected_class=cls, map_location=map_location)  # type: ignore[return-value]


# Filled by QuantizerCheckpoint.__init_subclass__ when prefquant.quantizer defines its classes.
_CLASSES: dict[str, type[QuantizerCheckpoint]] = {}


def save_quantizer(quantizer: QuantizerCheckpoint, directory: str | os.PathLike[str]) -> None:
    """Write ``quantizer`` to ``directory``/config.json and ``directory``/model.safetensors.

    Each file is written atomically; the weights go first so that a config never
    describes weights that were not written.
    """
    name = type(quantizer).__name__
    if name not in _CLASSES:
        raise TypeError(f"can only save {' or '.join(_CLASSES)}, got {name}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = quantizer.state_dict()
    dtype = next(iter(t.dtype for t in state.values() if t.is_floating_point()))
    dtype_name = next(key for key, value in _DTYPES.items() if value == dtype)
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "class": name,
        "prefquant_version": __version__,
        "dtype": dtype_name,
        "config": quantizer.config(),
    }
    save_safetensors(state, directory / WEIGHTS_NAME, metadata={"format": FORMAT, "class": name})
    atomic_write_bytes(directory / CONFIG_NAME, (json.dumps(config, indent=2) + "\n").encode("utf-8"))


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such quantizer config")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a prefquant quantizer config (expected format {FORMAT!r})")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: unsupported format_version {version!r}; this prefquant ({__version__}) reads {FORMAT_VERSION}"
        )
    for key in ("class", "dtype", "config"):
        if key not in config:
            raise CheckpointError(f"{path}: missing field {key!r}")
    return config


def load_quantizer(
    directory: str | os.PathLike[str],
    expected_class: type[QuantizerCheckpoint] | None = None,
    map_location: str | torch.device = "cpu",
) -> QuantizerCheckpoint:
    """Rebuild a quantizer saved by :func:`save_quantizer` (a ``VectorQuantizer`` or ``ResidualQuantizer``).

    Validates the format version, the class, the constructor config, and that every
    tensor in the weights file exists with the shape and dtype the config implies.

    Raises:
        FileNotFoundError: a file is missing.
        CheckpointError: anything else is wrong; the message names the file and the problem.
    """
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    config = _read_config(config_path)
    class_name = config["class"]
    if class_name not in _CLASSES:
        raise CheckpointError(
            f"{config_path}: unknown quantizer class {class_name!r}; known: {sorted(_CLASSES)}"
        )
    cls = _CLASSES[class_name]
    if expected_class is not None and cls is not expected_class:
        raise CheckpointError(f"{config_path}: holds a {class_name}, not a {expected_class.__name__}")
    if config["dtype"] not in _DTYPES:
        raise CheckpointError(f"{config_path}: unsupported dtype {config['dtype']!r}")
    if not isinstance(config["config"], dict):
        raise CheckpointError(f"{config_path}: 'config' must be an object")
    try:
        module = cls(**config["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{config_path}: invalid {class_name} config: {exc}") from None
    module = module.to(_DTYPES[config["dtype"]])
    expected = module.state_dict()
    tensors = load_safetensors(weights_path)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{weights_path}: tensors do not match {config_path.name}: missing {missing}, unexpected {unexpected}"
        )
    for name, reference in expected.items():
        tensor = tensors[name]
        if tensor.shape != reference.shape:
            raise CheckpointError(
                f"{weights_path}: tensor {name!r} has shape {list(tensor.shape)}, config implies {list(reference.shape)}"
            )
        if tensor.dtype != reference.dtype:
            raise CheckpointError(
                f"{weights_path}: tensor {name!r} has dtype {tensor.dtype}, expected {reference.dtype}"
            )
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{weights_path}: tensor {name!r} holds NaN or infinite values")
    module.load_state_dict(tensors, strict=True)
    module.eval()
    return module.to(map_location)
