"""Faults, injected for real: two writers on one run directory, a writer killed while holding it,
bad input rows, damaged artefacts, a write that fails, a training stage killed mid-fit.

docs/faults.md has the table of what survives what, with the test of each row.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pmg.cli import build_parser, main
from pmg.runs import LOCK_FILE, RunBusy, RunDirectory, RunWarning

TINY_CONFIG = Path(__file__).resolve().parent / "tiny.yaml"

# A process that takes a run's lock the way every writing `pmg` command does, says so, and waits.
_HOLDER = textwrap.dedent("""
    import sys, time
    from pmg.runs import RunDirectory
    with RunDirectory(sys.argv[1]).lock("pmg pipeline --run " + sys.argv[1]):
        print("held", flush=True)
        time.sleep(120)
""")


def _hold_lock(run: Path) -> subprocess.Popen[str]:
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def _owner(run: Path) -> dict:
    return json.loads((run / LOCK_FILE).read_text())


# ---------------------------------------------------------------- one writer per run directory


def test_a_second_writer_fails_at_once_naming_the_owner_and_a_dead_owners_lock_is_taken_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    build_parser()  # imports every stage's modules, so that the timing below is of the refusal alone
    holder = _hold_lock(run)
    try:
        assert _owner(run)["pid"] == holder.pid
        for command in (["pipeline", "--config", str(TINY_CONFIG), "--run", str(run)], ["quantize", "fit", "--run", str(run)],
                        ["evaluate", "--run", str(run)]):
            started = time.perf_counter()
            assert main(command) == 2
            assert time.perf_counter() - started < 5  # at once, not after waiting or working
            err = capsys.readouterr().err
            assert f"pid {holder.pid} on host {socket.gethostname()}" in err and f"`pmg pipeline --run {run}`" in err
        assert not (run / "data").exists()  # the refused pipeline wrote nothing
    finally:
        holder.kill()  # SIGKILL: no chance to release
        holder.wait()
    assert _owner(run)["pid"] == holder.pid  # left behind by the killed owner
    with pytest.warns(RunWarning, match=rf"stale lock of pid {holder.pid} .* no longer running"):
        with RunDirectory(run).lock("pmg pipeline (second)"):
            assert _owner(run)["pid"] == os.getpid() and _owner(run)["command"] == "pmg pipeline (second)"
    assert not (run / LOCK_FILE).exists()


def test_the_lock_is_released_when_a_command_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["pipeline", "--config", str(TINY_CONFIG), "--run", str(run), "data.kind=movielens",
                 f"data.path={tmp_path / 'nowhere'}"]) == 2
    assert "not a MovieLens folder" in capsys.readouterr().err
    assert not (run / LOCK_FILE).exists()
    with RunDirectory(run).lock("next"):  # no warning: nothing stale was left
        pass


def test_the_lock_is_reentrant_and_left_to_rank_zero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = RunDirectory(tmp_path / "run")
    with run.lock("outer"):
        with run.lock("inner (the pipeline training the rating head)"):
            pass
        assert _owner(run.root)["command"] == "outer"
    holder = _hold_lock(run.root)
    try:
        # Lightning's DDP launcher re-runs the command line in every rank; rank 0 holds the lock for them.
        monkeypatch.setenv("LOCAL_RANK", "1")
        with run.lock("rank 1"):
            pass
        monkeypatch.delenv("LOCAL_RANK")
        with pytest.raises(RunBusy, match=f"pid {holder.pid}"):
            with run.lock("rank 0 of another launch"):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_from_another_host_is_not_taken_over(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path / "run")
    (run.root / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "2024-01-01T00:00:00+00:00",
                                                  "command": "pmg pipeline"}))
    with pytest.raises(RunBusy, match=r"pid 1 on host elsewhere .* if that run has ended, delete .*\.lock"):
        with run.lock("here"):
            pass
    assert _owner(run.root)["host"] == "elsewhere"
