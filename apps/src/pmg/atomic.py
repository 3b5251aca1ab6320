"""Atomic writes: a reader never sees a half-written file or run directory.

Everything the app persists (datasets, checkpoints, reports) goes through these two
context managers, so an interrupted or failing run leaves either the previous complete
artifact or nothing, never a partial one that looks complete.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_file", "atomic_directory"]


@contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    The temporary file lives in the same directory so that ``os.replace`` is atomic.
    On an exception the temporary file is removed and ``path`` is left untouched; an
    ``OSError`` that names no file (safetensors on a full disk) is raised naming ``path``.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    # mkstemp makes it 0600; the file it becomes gets what open() would give (0666 less the umask),
    # so that other accounts reading a shared run or a multi-node job's output can.
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.filename is not None:
            raise
        raise _naming(err, target) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_directory(path: str | os.PathLike[str], *, resumable: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``path``; on success it becomes ``path``.

    If ``path`` already exists it is swapped out only after the new directory is
    complete, and deleted only after the swap succeeded, so a crash at any point keeps one
    complete copy (the old one is left as ``.<name>.old-*`` if the final delete is cut). An
    ``OSError`` that names no file is raised naming ``path``, as in ``atomic_file``.

    With ``resumable`` the directory is ``.<name>.partial`` beside ``path`` and outlives a body
    that fails or a process that dies: the next ``atomic_directory(path, resumable=True)`` yields
    it again with what was written in it, for a long build to go on from its finished parts
    (which the body must tell from unfinished ones). One process writes it at a time (an
    exclusive ``flock`` on ``.<name>.partial.lock``, which the kernel drops when its holder
    dies); another one meanwhile gets a fresh temporary directory of its own.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = _partial_lock(target) if resumable else None
    if lock is not None:
        tmp = target.parent / f".{target.name}.partial"
        tmp.mkdir(exist_ok=True)
    else:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700; as mkdir() would, as for files above
    try:
        try:
            yield tmp
        except OSError as err:
            if lock is None:
                shutil.rmtree(tmp, ignore_errors=True)
            if err.filename is not None:
                raise
            raise _naming(err, target) from err
        except BaseException:
            if lock is None:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        old: Path | None = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            old.rmdir()
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if lock is not None:
            os.close(lock)  # closing drops the flock; the file stays (unlinking it would race a new holder)


def _umask() -> int:
    """The process's umask (reading it means setting it: set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _partial_lock(target: Path) -> int | None:
    """The flock-ed descriptor of ``.<name>.partial.lock`` beside ``target``; None while another process holds it."""
    fd = os.open(target.parent / f".{target.name}.partial.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _naming(err: OSError, target: Path) -> OSError:
    """``err`` naming ``target``: some writers (safetensors) report a full disk without the path."""
    return OSError(err.errno, f"{err.strerror or err} while writing", str(target))
