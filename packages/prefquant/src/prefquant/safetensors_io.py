"""Reading and writing the safetensors file format with torch alone.

The format (https://github.com/huggingface/safetensors) is: 8 bytes little-endian
unsigned header length ``n``, ``n`` bytes of UTF-8 JSON header, then the raw tensor
bytes. The header maps each tensor name to ``{"dtype", "shape", "data_offsets"}``
(offsets relative to the start of the byte buffer) and may hold a
``"__metadata__"`` object of string to string.

prefquant implements it here instead of depending on the ``safetensors`` package so
that it installs with torch only; files written here load with
``safetensors.torch.load_file`` and the other way round.
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

__all__ = [
    "CheckpointError",
    "atomic_write_bytes",
    "load_safetensors",
    "read_safetensors_metadata",
    "save_safetensors",
]

# The reference implementation refuses headers above 100 MB; a larger value means a corrupt length field.
_MAX_HEADER_BYTES = 100_000_000

_DTYPE_TO_NAME: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_NAME_TO_DTYPE: dict[str, torch.dtype] = {name: dtype for dtype, name in _DTYPE_TO_NAME.items()}


class CheckpointError(ValueError):
    """A saved file is missing, corrupt, truncated, or does not match what was expected."""


def _require_little_endian() -> None:
    # The format stores little-endian bytes and we copy memory as is.
    if sys.byteorder != "little":
        raise RuntimeError("prefquant's safetensors I/O supports little-endian hosts only")


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the complete new one.

    Writes a temporary file in the same directory, flushes it to disk, then renames it
    over ``path`` with :func:`os.replace` (atomic on POSIX and Windows).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise


def save_safetensors(
    tensors: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Save named tensors to ``path`` in safetensors format, atomically.

    Args:
        tensors: name -> tensor (any shape; dtypes F64/F32/F16/BF16/I64/I32/I16/I8/U8/BOOL).
            Tensors are copied to CPU; views and non-contiguous tensors are fine.
        path: destination file.
        metadata: optional string -> string pairs stored under ``"__metadata__"``.
    """
    _require_little_endian()
    header: dict[str, object] = {}
    if metadata:
        for key, value in metadata.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError("safetensors metadata must map str to str")
        header["__metadata__"] = dict(metadata)
    byte_views: list[torch.Tensor] = []
    offset = 0
    for name in sorted(tensors):
        tensor = tensors[name]
        if not isinstance(name, str) or name == "__metadata__":
            raise ValueError(f"invalid tensor name {name!r}")
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"tensor {name!r} is a {type(tensor).__name__}, not a torch.Tensor")
        if tensor.dtype not in _DTYPE_TO_NAME:
            raise TypeError(
                f"tensor {name!r} has dtype {tensor.dtype}, which safetensors I/O here does not support"
            )
        raw = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        header[name] = {
            "dtype": _DTYPE_TO_NAME[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + raw.numel()],
        }
        byte_views.append(raw)
        offset += raw.numel()
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    # Padding the header to 8 bytes keeps tensor data aligned, as the reference writer does.
    header_bytes += b" " * (-len(header_bytes) % 8)
    prefix = struct.pack("<Q", len(header_bytes)) + header_bytes
    blob = bytearray(len(prefix) + offset)
    blob[: len(prefix)] = prefix
    # Copy through a uint8 view of the output buffer: torch alone, no numpy (torch does not require it).
    cursor = len(prefix)
    for raw in byte_views:
        if raw.numel():
            torch.frombuffer(blob, dtype=torch.uint8, count=raw.numel(), offset=cursor).copy_(raw)
        cursor += raw.numel()
    atomic_write_bytes(path, bytes(blob))


def _parse_header(path: Path, blob: bytes) -> tuple[dict[str, dict[str, object]], dict[str, str], int]:
    """Validate the header of a safetensors blob; return (entries, metadata, data start)."""
    if len(blob) < 8:
        raise CheckpointError(
            f"{path}: file truncated: {len(blob)} bytes, shorter than the 8-byte header length"
        )
    (header_len,) = struct.unpack("<Q", blob[:8])
    if header_len > _MAX_HEADER_BYTES:
        raise CheckpointError(
            f"{path}: header length {header_len} is implausible (corrupt file or not safetensors)"
        )
    if 8 + header_len > len(blob):
        raise CheckpointError(
            f"{path}: file truncated: header says {header_len} header bytes, only {len(blob) - 8} present"
        )
    try:
        header = json.loads(blob[8 : 8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: header is not valid UTF-8 JSON ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: header must be a JSON object, got {type(header).__name__}")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise CheckpointError(f"{path}: __metadata__ must map strings to strings")
    data_start = 8 + header_len
    data_len = len(blob) - data_start
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointError(
                f"{path}: tensor {name!r}: entry must have exactly dtype, shape, data_offsets"
            )
        dtype_name, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype_name not in _NAME_TO_DTYPE:
            raise CheckpointError(f"{path}: tensor {name!r}: unsupported dtype {dtype_name!r}")
        if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
            raise CheckpointError(
                f"{path}: tensor {name!r}: shape must be a list of non-negative ints, got {shape!r}"
            )
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise CheckpointError(f"{path}: tensor {name!r}: bad data_offsets {offsets!r}")
        itemsize = torch.empty((), dtype=_NAME_TO_DTYPE[dtype_name]).element_size()
        expected = math.prod(shape) * itemsize
        if offsets[1] - offsets[0] != expected:
            raise CheckpointError(
                f"{path}: tensor {name!r}: data_offsets span {offsets[1] - offsets[0]} bytes, "
                f"but {dtype_name} {shape} needs {expected}"
            )
        spans.append((offsets[0], offsets[1], name))
    spans.sort()
    cursor = 0
    for begin, end, name in spans:
        if begin != cursor:
            raise CheckpointError(f"{path}: tensor {name!r}: data overlaps or leaves a gap at byte {cursor}")
        cursor = end
    if cursor > data_len:
        raise CheckpointError(
            f"{path}: file truncated: tensor data needs {cursor} bytes, only {data_len} present"
        )
    if cursor < data_len:
        raise CheckpointError(f"{path}: {data_len - cursor} unexpected trailing bytes after the tensor data")
    return header, metadata, data_start


def _read(path: str | os.PathLike[str]) -> tuple[Path, bytes]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such safetensors file")
    return path, path.read_bytes()


def load_safetensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load every tensor of a safetensors file onto the CPU.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: the file is truncated, has trailing bytes, an invalid header,
            unsupported dtypes, or offsets that do not match the shapes.
    """
    _require_little_endian()
    path, blob = _read(path)
    header, _, data_start = _parse_header(path, blob)
    # One writable copy of the data: frombuffer on immutable bytes warns, and clones below detach from it.
    buffer = bytearray(blob)
    out: dict[str, torch.Tensor] = {}
    for name, entry in header.items():
        dtype = _NAME_TO_DTYPE[entry["dtype"]]  # type: ignore[index]
        shape = entry["shape"]
        begin, end = entry["data_offsets"]  # type: ignore[misc]
        if end == begin:
            out[name] = torch.empty(shape, dtype=dtype)  # type: ignore[arg-type]
            continue
        raw = torch.frombuffer(buffer, dtype=torch.uint8, count=end - begin, offset=data_start + begin)
        out[name] = raw.clone().view(dtype).reshape(shape)  # type: ignore[arg-type]
    return out


def read_safetensors_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """Return the ``"__metadata__"`` pairs of a safetensors file (empty if none), validating the file."""
    path, blob = _read(path)
    return _parse_header(path, blob)[1]
