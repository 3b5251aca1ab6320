"""``pmg generate --users all|FILE`` on one tiny run: every user once in tar shards with a manifest,
PNGs that decode and texts that are not empty; a file of ids; unknown and repeated ids named; a rerun
after a removed shard or a killed loop redoes only what is missing and ends byte-identical; two
DDP processes write the one process's bytes."""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from pmg.cli import main
from pmg.runs import RunDirectory
from pmg.tasks.batch import MANIFEST, BatchGenerationModule, generate_batch, shard_name

TINY_CONFIG = Path(__file__).resolve().parent / "tiny.yaml"
SHARD_SIZE = 16  # the tiny catalog's 60 users: 4 shards, the last one of 12

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("batch") / "run"
    assert main(["pipeline", "--config", str(TINY_CONFIG), "--run", str(run), f"zoo.cache_dir={run.parent / 'zoo-cache'}",
                 "--until", "generator"]) == 0
    return run


@pytest.fixture(scope="module")
def all_users(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every user generated once, uninterrupted, outside the run (read-only for tests)."""
    out = tmp_path_factory.mktemp("all") / "batch"
    assert main(["generate", "--run", str(tiny_run), "--users", "all", "--out", str(out), "--shard-size", str(SHARD_SIZE),
                 "--batch-size", "8"]) == 0
    return out


def _files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def _summary(capsys: pytest.CaptureFixture[str]) -> re.Match[str]:
    found = re.search(r"generated (\d+) users in (\d+) shards \((\d+) of (\d+) kept.*: ([\d.]+) users/s", capsys.readouterr().out)
    assert found, "no summary line"
    return found


def test_all_users_once_in_shards_with_manifest(tiny_run: Path, all_users: Path) -> None:
    manifest = json.loads((all_users / MANIFEST).read_text())
    user_ids = [json.loads(line)["user_id"] for line in (tiny_run / "quantize" / "user_tokens.jsonl").read_text().splitlines()]
    assert [entry["file"] for entry in manifest["shards"]] == [shard_name(k) for k in range(4)]
    assert sorted(user for entry in manifest["shards"] for user in entry["users"]) == sorted(user_ids)
    assert manifest["config"]["adapters"] == "generator" and manifest["config"]["shard_size"] == SHARD_SIZE
    assert sorted(path.name for path in all_users.iterdir()) == [MANIFEST, *(shard_name(k) for k in range(4))]  # no journal left
    seen = []
    for entry in manifest["shards"]:
        path = all_users / entry["file"]
        assert entry["size"] == path.stat().st_size and entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        with tarfile.open(path) as tar:
            members = tar.getmembers()
            assert all((m.mtime, m.uid, m.gid, m.uname) == (0, 0, 0, "") for m in members)
            assert [m.name for m in members] == [f"{u}.{ext}" for u in entry["users"] for ext in ("json", "png")]
            for user in entry["users"]:
                record = json.loads(tar.extractfile(f"{user}.json").read())
                assert record["user_id"] == user and record["tokens"].startswith("<p")
                assert record["texts"] and all(text.strip() for text in record["texts"].values()), record
                image = Image.open(io.BytesIO(tar.extractfile(f"{user}.png").read()))
                assert image.format == "PNG" and image.size[0] > 0
                seen.append(user)
    assert sorted(seen) == sorted(user_ids) and len(seen) == len(set(seen))


def test_file_of_ids_in_file_order(tiny_run: Path, all_users: Path, tmp_path: Path) -> None:
    wanted = ["u00031", "u00002", "u00017"]
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(wanted[:2]) + "\n\n" + wanted[2] + "\n")
    out = tmp_path / "some"
    assert main(["generate", "--run", str(tiny_run), "--users", str(ids), "--out", str(out), "--shard-size", "2"]) == 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert [entry["users"] for entry in manifest["shards"]] == [wanted[:2], wanted[2:]]
    # Each user's sample is the one the all-users run wrote: nothing depends on who else is generated.
    with tarfile.open(out / shard_name(1)) as some, tarfile.open(all_users / shard_name(1)) as every:
        assert some.extractfile("u00017.png").read() == every.extractfile("u00017.png").read()


def test_unknown_repeated_and_exclusive_users_are_named(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("u00001\nnobody\n")
    assert main(["generate", "--run", str(tiny_run), "--users", str(ids), "--out", str(tmp_path / "x")]) == 2
    error = capsys.readouterr().err
    assert "'nobody'" in error and f"{ids}:2" in error and "user_tokens.jsonl" in error
    ids.write_text("u00001\nu00002\nu00001\n")
    assert main(["generate", "--run", str(tiny_run), "--users", str(ids), "--out", str(tmp_path / "x")]) == 2
    assert f"{ids}:3" in capsys.readouterr().err
    assert main(["generate", "--run", str(tiny_run), "--users", "all", "--category", "dress", "--out", str(tmp_path / "x")]) == 2
    assert "--category" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate", "--run", str(tiny_run), "--users", "all", "--user", "u00001"])
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_rerun_redoes_a_removed_shard_only(tiny_run: Path, all_users: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "batch"
    shutil.copytree(all_users, out)
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["shards"] = [entry for entry in manifest["shards"] if entry["file"] != shard_name(2)]
    (out / MANIFEST).write_text(json.dumps(manifest))
    (out / shard_name(2)).unlink()
    (out / shard_name(1)).write_bytes((out / shard_name(1)).read_bytes()[:1000])  # listed, but truncated
    capsys.readouterr()
    assert main(["generate", "--run", str(tiny_run), "--users", "all", "--out", str(out), "--shard-size", str(SHARD_SIZE),
                 "--batch-size", "8"]) == 0
    found = _summary(capsys)
    assert found.group(1, 2, 3, 4) == (str(2 * SHARD_SIZE), "2", "2", "4") and float(found.group(5)) > 0
    assert _files(out) == _files(all_users)
    assert main(["generate", "--run", str(tiny_run), "--users", "all", "--out", str(out), "--shard-size", str(SHARD_SIZE),
                 "--batch-size", "8"]) == 0
    assert _summary(capsys).group(1, 2, 3, 4) == ("0", "0", "4", "4")  # nothing left to do
    assert _files(out) == _files(all_users)


def test_killed_loop_resumes_to_the_same_bytes(tiny_run: Path, all_users: Path, tmp_path: Path) -> None:
    out = tmp_path / "batch"

    def die_after_first_shard(module: BatchGenerationModule) -> None:
        step = module.predict_step

        def predict_step(shard: int, batch_idx: int) -> None:
            if module.generated:
                raise RuntimeError("killed")  # as a kill between two shards: the first is written and journaled
            step(shard, batch_idx)

        module.predict_step = predict_step  # type: ignore[method-assign]

    with pytest.raises(RuntimeError, match="killed"):
        generate_batch(RunDirectory(tiny_run), out, "all", shard_size=SHARD_SIZE, batch_size=8, module_hook=die_after_first_shard)
    assert not (out / MANIFEST).exists() and (out / shard_name(0)).is_file() and not (out / shard_name(1)).exists()
    summary = generate_batch(RunDirectory(tiny_run), out, "all", shard_size=SHARD_SIZE, batch_size=8)
    assert (summary.generated_shards, summary.shards, summary.generated_users) == (3, 4, 60 - SHARD_SIZE)
    assert _files(out) == _files(all_users)


def test_two_ddp_processes_write_the_one_process_bytes(tiny_run: Path, all_users: Path, tmp_path: Path) -> None:
    out = tmp_path / "batch"
    # A command of its own: Lightning's ddp launcher starts rank 1 by running the same command line again.
    result = subprocess.run([sys.executable, "-m", "pmg.cli", "generate", "--run", str(tiny_run), "--users", "all", "--out", str(out),
                             "--shard-size", str(SHARD_SIZE), "--batch-size", "8", "--devices", "2", "--strategy", "ddp"],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    # One summary (rank 0's), with both ranks' users.
    assert re.findall(r"generated (\d+) users in (\d+) shards", result.stdout) == [("60", "4")], result.stdout
    assert _files(out) == _files(all_users)


def test_spawning_strategies_are_refused(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "--run", str(tiny_run), "--users", "all", "--out", str(tmp_path / "x"), "--strategy", "ddp_spawn"]) == 2
    assert "'ddp'" in capsys.readouterr().err


def test_writing_into_the_run_takes_its_lock(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Another open file description flock-ed: what a second pmg process holding the run's lock looks like.
    holder = os.open(tiny_run / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        assert main(["generate", "--run", str(tiny_run), "--users", "all"]) == 2  # the default --out is in the run
        assert "lock" in capsys.readouterr().err
        assert not (tiny_run / "generator" / "generated" / "batch").exists()
        ids = tmp_path / "ids.txt"
        ids.write_text("u00005\n")
        assert main(["generate", "--run", str(tiny_run), "--users", str(ids), "--out", str(tmp_path / "elsewhere")]) == 0
    finally:
        os.close(holder)
