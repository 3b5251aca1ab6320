"""Run directories: one folder per run, one sub-folder per stage, each stage's completion
recorded with a fingerprint of its inputs so unchanged stages are reused, not redone.

One process writes to a run at a time: every command that writes takes ``RunDirectory.lock``
(``<run>/.lock``, holding the owner's pid, host, start time and command line). A stage's record
lists the size and SHA-256 of every file it wrote; a damaged file is named with the command
that rebuilds it (``require``), and ``pmg pipeline`` redoes that stage rather than trust it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pmg import __version__
from pmg.atomic import atomic_file
from pmg.config import config_to_dict
from pmg.integrity import file_record, find_damage

__all__ = ["RunError", "RunBusy", "RunWarning", "RunDirectory", "LOCK_FILE", "fingerprint", "stage_fingerprint",
           "config_inputs", "NON_INPUT_KEYS"]

_RUN_FORMAT = 1
# How a stage runs on its own where that is not `pmg <stage> fit --run DIR` ("": only within `pmg pipeline`).
_STAGE_COMMANDS = {"data": "", "evaluate": "pmg evaluate --run {root}", "report": "pmg report --run {root}"}


class RunError(RuntimeError):
    """A run directory that lacks a stage, comes from an incompatible version, or is damaged."""


class RunBusy(RunError):
    """Another process is writing to the run directory (it holds the run's lock)."""


class RunWarning(UserWarning):
    """Something in a run was repaired rather than trusted: a stale lock taken over, a damaged
    cache entry or checkpoint rebuilt, rows of the input set aside."""


LOCK_FILE = ".lock"
# Set in the processes a multi-process strategy starts (Lightning's DDP launcher re-runs the
# command line in each, SLURM and torchrun start one per rank): only rank 0, the process the
# user started, takes the lock, and it holds it for all of them.
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
# Locks this process holds, by resolved run root: a writer calling another writer (the pipeline
# running a stage that trains the rating head) must not lock itself out.
_HELD: set[Path] = set()


def _secondary_rank() -> bool:
    return any(os.environ.get(name, "0") not in ("", "0") for name in _RANK_VARIABLES)


def _describe_owner(owner: dict[str, Any]) -> str:
    if not owner:
        return "a process that is just starting (its lock is still empty)"
    return (f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')} since {owner.get('started', '?')} "
            f"(`{owner.get('command', '?')}`)")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _read_lock(fd: int) -> dict[str, Any]:
    raw = os.pread(fd, 65536, 0)
    try:
        owner = json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        owner = {"pid": "?", "host": "?", "command": f"unreadable lock content {raw[:60]!r}"}
    return owner if isinstance(owner, dict) else {}


def _acquire_lock(root: Path, command: str) -> int:
    """The open, flock-ed descriptor of ``root/.lock`` with this process recorded in it.

    ``flock`` is what excludes: the kernel drops it when its holder dies, however it dies, so a
    lock file whose content names another process but that nobody holds is stale. The content
    only says who the owner is (and, across hosts, where ``flock`` may not reach, refuses).
    """
    path = root / LOCK_FILE
    host = socket.gethostname()
    for _ in range(5):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_lock(fd)
            os.close(fd)
            raise RunBusy(f"{root} is being written by {_describe_owner(owner)}; wait for it to end, or use another --run") from None
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = -1
        if current != os.fstat(fd).st_ino:
            # The owner released (unlinked) the file between our open and flock: try the new one.
            os.close(fd)
            continue
        previous = _read_lock(fd)
        if previous:
            if previous.get("host") != host:
                os.close(fd)
                raise RunBusy(f"{path} names {_describe_owner(previous)}, another host whose process this one cannot "
                              f"see; if that run has ended, delete {path}")
            pid = previous.get("pid")
            state = "is no longer running" if isinstance(pid, int) and not _pid_alive(pid) else "does not hold it (its pid was reused)"
            warnings.warn(f"{root}: taking over the stale lock of {_describe_owner(previous)}, which ended without "
                          f"releasing it (the process {state}); its stage resumes or restarts", RunWarning, stacklevel=4)
        record = {"pid": os.getpid(), "host": host, "started": datetime.now(UTC).isoformat(timespec="seconds"),
                  "command": command}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)
        return fd
    raise RunBusy(f"{path} keeps changing hands; another pmg is starting and stopping on {root}")


def _release_lock(root: Path, fd: int) -> None:
    path = root / LOCK_FILE
    try:
        if os.stat(path).st_ino == os.fstat(fd).st_ino:
            path.unlink()
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)  # closing drops the flock


def fingerprint(*parts: Any) -> str:
    """A short, stable hash of JSON-serialisable parts (configs, upstream fingerprints)."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# Config keys that say where a cache lives, how progress and logs show, how many threads run, how
# often a fit saves a checkpoint to resume from or whether to rebuild anyway: not what a stage
# computes, so changing them redoes nothing.
# ``on_bad_rows`` neither, when no row is bad; the data stage does not reuse a result that set
# rows aside once it is back to ``error``.
NON_INPUT_KEYS = frozenset({"cache_dir", "enable_progress_bar", "log_every_n_steps", "num_threads", "retrain", "on_bad_rows", "on_bad_images",
                            "checkpoint_every_n_steps"})


def config_inputs(config: Any) -> Any:
    """A config dict (``pmg.config.config_to_dict``) less ``NON_INPUT_KEYS`` at any depth: what a
    stage's fingerprint and the zoo's cache key hash."""
    if isinstance(config, dict):
        return {k: config_inputs(v) for k, v in config.items() if k not in NON_INPUT_KEYS}
    if isinstance(config, list):
        return [config_inputs(v) for v in config]
    return config


# Left out of a stage's file record: logs and resume checkpoints (written while it runs, never
# read as its result), samples for people to look at (no stage or command reads them; copies of
# runs leave them out, as benchmarks/reward.py does) and what `pmg generate` adds to a finished run.
_UNRECORDED = frozenset({"tb", "checkpoints", "samples", "generated"})


def _unrecorded(relative: Path) -> bool:
    return relative.as_posix() == "stage.json" or any(part in _UNRECORDED for part in relative.parts)


def stage_fingerprint(stage: str, config: Any, upstream: str) -> str:
    """What a stage's completion is recorded with: its name, its config dataclass (less
    ``NON_INPUT_KEYS``) and the fingerprint of the stages before it."""
    return fingerprint(stage, config_inputs(config_to_dict(config)), upstream)


class RunDirectory:
    """A run's folder. ``stage_dir(name)`` holds a stage's artifacts; ``<stage>/stage.json``
    marks the stage complete with the fingerprint of the inputs it was computed from."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        # Stages whose files were checked (or written) by this object, with the fingerprint then.
        self._intact: dict[str, str] = {}
        meta = self.root / "run.json"
        if meta.is_file():
            try:
                info = json.loads(meta.read_text())
            except json.JSONDecodeError as err:
                raise RunError(f"{meta} is damaged ({err.msg}); delete the run directory or use another --run") from err
            if info.get("format") != _RUN_FORMAT:
                raise RunError(
                    f"{self.root} was written by pmg {info.get('pmg_version', '?')} in run format "
                    f"{info.get('format')!r}; this pmg ({__version__}) reads format {_RUN_FORMAT}. "
                    "Start a new run directory (--run) or rerun with --force all."
                )
        else:
            with atomic_file(meta) as tmp:
                tmp.write_text(json.dumps({"format": _RUN_FORMAT, "pmg_version": __version__}, indent=2))

    @contextmanager
    def lock(self, command: str) -> Iterator[None]:
        """Hold the run's lock while writing to it; ``RunBusy`` at once, naming the owner (pid, host,
        start, command), when another process holds it. A lock left by a process that died
        (killed, out of memory) is taken over with a ``RunWarning``. Released on exit, exceptions
        included; re-entrant within a process; taken only by rank 0 of a multi-process launch."""
        if _secondary_rank():
            yield
            return
        key = self.root.resolve()
        if key in _HELD:
            yield
            return
        fd = _acquire_lock(self.root, command)
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
            _release_lock(self.root, fd)

    def stage_dir(self, stage: str) -> Path:
        path = self.root / stage
        path.mkdir(parents=True, exist_ok=True)
        return path

    def record(self, stage: str) -> dict[str, Any] | None:
        """The completion record of ``stage``, or None if it has not completed."""
        path = self.root / stage / "stage.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return None

    def is_current(self, stage: str, stage_fingerprint: str) -> bool:
        """Whether ``stage`` completed with ``stage_fingerprint`` and its files are as it wrote them;
        a damaged file makes it not current (it is redone), with a ``RunWarning`` naming the file."""
        record = self.record(stage)
        if record is None or record.get("fingerprint") != stage_fingerprint:
            return False
        damage = self._damage(stage, record)
        if damage is not None:
            warnings.warn(f"{damage}; stage {stage!r} is redone", RunWarning, stacklevel=2)
            return False
        return True

    def mark_complete(self, stage: str, stage_fingerprint: str, summary: dict[str, Any]) -> None:
        """Record ``stage`` complete: its fingerprint, ``summary`` and the size and SHA-256 of every
        file in its folder (less logs, checkpoints, samples and ``pmg generate``'s outputs)."""
        folder = self.stage_dir(stage)
        files = file_record(folder, skip=_unrecorded)
        with atomic_file(folder / "stage.json") as tmp:
            tmp.write_text(json.dumps({"fingerprint": stage_fingerprint, "pmg_version": __version__, **summary, "files": files},
                                      indent=2, default=str))
        self._intact[stage] = stage_fingerprint

    def _damage(self, stage: str, record: dict[str, Any]) -> str | None:
        """What is wrong with the files of ``stage`` (None: all intact, or a record from before
        files were recorded). Checked once per object and fingerprint."""
        fingerprint = str(record.get("fingerprint"))
        if self._intact.get(stage) == fingerprint:
            return None
        damage = find_damage(self.root / stage, record.get("files") or {}, f"stage {stage!r}")
        if damage is None:
            self._intact[stage] = fingerprint
        return damage

    def invalidate(self, stage: str, *, keep_checkpoints: bool = False) -> None:
        """Mark ``stage`` incomplete before recomputing it, and drop its training checkpoints
        unless ``keep_checkpoints`` (a stage that resumes a killed fit keeps them: its
        ``pmg.training.Resumable`` resumes only a checkpoint of the same inputs)."""
        (self.root / stage / "stage.json").unlink(missing_ok=True)
        self._intact.pop(stage, None)
        if not keep_checkpoints:
            shutil.rmtree(self.root / stage / "checkpoints", ignore_errors=True)

    def require(self, stage: str) -> dict[str, Any]:
        """The completion record of ``stage``; ``RunError`` that says what to run if it is missing
        or one of its files is damaged (named, with the command that rebuilds it)."""
        record = self.record(stage)
        alone = _STAGE_COMMANDS.get(stage, f"pmg {stage} fit --run {{root}}")
        alternative = f" (or `{alone.format(root=self.root)}`)" if alone else ""
        if record is None:
            raise RunError(f"stage {stage!r} has not completed in {self.root}; run `pmg pipeline --run {self.root}`{alternative} first")
        damage = self._damage(stage, record)
        if damage is not None:
            raise RunError(f"{damage}; rebuild the stage with `pmg pipeline --run {self.root} --force {stage}`{alternative}")
        return record
