"""Adapter files whose bytes depend on their content only, not on the process that wrote them.

Two writers that prefgen calls put a per-process order into their files: safetensors writes a
file's ``__metadata__`` keys in the order of a Rust ``HashMap`` (randomly seeded per process),
and peft writes a LoRA's ``target_modules`` in the order of a Python ``set`` (string hashes are
salted per process). So the same adapter saved by two processes, or by a fit resumed after a kill
and the one never interrupted, differed in bytes while holding equal tensors and settings. These
functions rewrite such a file in one canonical order; readers see the same content.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

__all__ = ["sort_peft_config_lists", "sort_safetensors_metadata"]

_HEADER_LENGTH = struct.Struct("<Q")  # safetensors: an 8-byte little-endian header size, the JSON header, the data
_HEADER_ALIGNMENT = 8


def sort_safetensors_metadata(path: str | Path) -> None:
    """Rewrite the safetensors file ``path`` with its ``__metadata__`` keys sorted; tensors,
    their entries and the data bytes are kept as they are. Written to a temporary file beside it
    and renamed over it, so ``path`` is the old file or the new one, never a part."""
    path = Path(path)
    raw = path.read_bytes()
    if len(raw) < _HEADER_LENGTH.size:
        raise ValueError(f"{path} is not a safetensors file: {len(raw)} bytes")
    (length,) = _HEADER_LENGTH.unpack_from(raw)
    end = _HEADER_LENGTH.size + length
    if end > len(raw):
        raise ValueError(f"{path} is not a safetensors file: its header claims {length} bytes of {len(raw)}")
    header = json.loads(raw[_HEADER_LENGTH.size : end].decode("utf-8"))
    metadata = header.pop("__metadata__", None)
    ordered = ({"__metadata__": dict(sorted(metadata.items()))} if metadata is not None else {}) | header
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    # Data offsets count from the header's end; the header is padded with spaces to keep the data aligned.
    text += b" " * (-len(text) % _HEADER_ALIGNMENT)
    _replace(path, _HEADER_LENGTH.pack(len(text)) + text + raw[end:])


def sort_peft_config_lists(path: str | Path, keys: tuple[str, ...] = ("target_modules", "exclude_modules",
                                                                       "modules_to_save")) -> None:
    """Rewrite peft's ``adapter_config.json`` at ``path`` with the lists under ``keys`` sorted (peft
    keeps them as sets), in peft's own layout (``indent=2, sort_keys=True``)."""
    path = Path(path)
    config = json.loads(path.read_text(encoding="utf-8"))
    for key in keys:
        if isinstance(config.get(key), list) and all(isinstance(v, str) for v in config[key]):
            config[key] = sorted(config[key])
    _replace(path, json.dumps(config, indent=2, sort_keys=True).encode("utf-8"))


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
