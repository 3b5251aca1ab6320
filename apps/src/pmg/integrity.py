"""Checksums recorded when an artefact is written and checked before it is trusted.

A file cut short by a full disk or a copy that stopped, or bytes changed on the way, loads
into nonsense or fails far from its cause. What a stage, a cache entry or a checkpoint writes
is recorded (size and SHA-256 per file, ``file_record``) beside it when it completes; readers
check the record (``find_damage``) and name each damaged file. (A single safetensors cache
file carries the digest of its tensors in its own metadata instead: ``pmg.features``.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path

__all__ = ["file_digest", "file_record", "find_damage"]

_CHUNK = 1 << 20


def file_digest(path: Path) -> str:
    """The SHA-256 of a file's bytes (hex), read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_record(folder: Path, *, skip: Callable[[Path], bool] = lambda relative: False) -> dict[str, list]:
    """``{relative path: [size, sha256]}`` of every file under ``folder``, less those ``skip``
    (given the relative path) leaves out and hidden ones (atomic writes' temporary files)."""
    record: dict[str, list] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or skip(relative):
            continue
        record[relative.as_posix()] = [path.stat().st_size, file_digest(path)]
    return record


def find_damage(folder: Path, record: Mapping[str, list], writer: str, *, sizes_only: bool = False) -> str | None:
    """What is wrong with the files of ``record`` (from ``file_record``) under ``folder``: each one
    missing, of another size or, unless ``sizes_only``, of other bytes, said of ``writer`` (who
    recorded it: "stage 'quantize'"), e.g. ``"<path> is missing (stage 'quantize' wrote it)"``;
    None if every file is intact."""
    problems: list[str] = []
    for relative, (size, digest) in record.items():
        path = folder / relative
        if not path.is_file():
            missing = path
            for parent in Path(relative).parents[:-1]:  # nearest first; a missing folder is named once, not file by file
                if (folder / parent).exists():
                    break
                missing = folder / parent
            message = f"{missing} is missing ({writer} wrote it)"
            if message not in problems:
                problems.append(message)
        elif (actual := path.stat().st_size) != size:
            problems.append(f"{path} is damaged ({actual} bytes where {writer} wrote {size})")
        elif not sizes_only and file_digest(path) != digest:
            problems.append(f"{path} is damaged (its SHA-256 differs from the one {writer} recorded)")
    return "; ".join(problems) or None
