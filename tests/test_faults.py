"""Faults, injected for real: two writers on one run directory, a writer killed while holding it,
bad input rows (in a run and in `pmg data convert`), damaged artefacts, a write that fails, a
training stage killed mid-fit (preference, quantize, the zoo's models, the reward stage's fits).

docs/faults.md has the table of what survives what, with the test of each row.
"""

from __future__ import annotations

import csv
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from pmg.cli import build_parser, main
from pmg.config import load_config
from pmg.data.dataset_stage import DATA_STAGE, DatasetConfig
from pmg.data.format import read_dataset
from pmg.data.records import DatasetError
from pmg.features import FeatureEncoderSpec, encode_items
from pmg.pipeline import PipelineConfig, run_pipeline
from pmg.preference.stage import PREFERENCE_STAGE
from pmg.quantize.stage import QUANTIZE_STAGE, load_user_tokens
from pmg.runs import LOCK_FILE, RunBusy, RunDirectory, RunError, RunWarning
from pmg.training import RESUME_RECORD, TrainableOnlyCheckpoint

pytestmark = pytest.mark.usefixtures("single_thread")

TINY_CONFIG = Path(__file__).resolve().parent / "tiny.yaml"
STAGES = (DATA_STAGE, PREFERENCE_STAGE, QUANTIZE_STAGE)

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


# ---------------------------------------------------------------- bad rows


def _movielens_with_bad_rows(source: Path, folder: Path) -> tuple[Path, int]:
    """A MovieLens folder: the first 1500 ratings of latest-small, then four bad rows; its good row count."""
    folder.mkdir()
    shutil.copy(source / "movies.csv", folder)
    lines = (source / "ratings.csv").read_text().splitlines()[:1501]
    bad = ["1,99999999,4.0,964982703",  # unknown item id
           "2,1,x,964982703",  # rating not a number
           "3,1,4.0",  # a field missing
           lines[10]]  # a duplicate of line 11
    (folder / "ratings.csv").write_text("\n".join([*lines, *bad]) + "\n")
    return folder, len(lines) - 1


def test_bad_rows_stop_the_load_by_default_and_are_set_aside_and_counted_with_skip(
    ml_latest_small: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, good = _movielens_with_bad_rows(ml_latest_small, tmp_path / "ml")
    source = ["data.kind=movielens", f"data.path={folder}"]
    assert main(["pipeline", "--config", str(TINY_CONFIG), "--run", str(tmp_path / "strict"), *source]) == 2
    assert "ratings.csv, line 1502: unknown item id '99999999'" in capsys.readouterr().err
    assert main(["pipeline", "--run", str(tmp_path / "typo"), *source, "data.on_bad_rows=sometimes"]) == 2
    assert "expected one of [error, skip] (key: data.on_bad_rows)" in capsys.readouterr().err

    run = RunDirectory(tmp_path / "run")
    config = load_config(DatasetConfig, None, [o.removeprefix("data.") for o in source] + ["on_bad_rows=skip"])
    with pytest.warns(RunWarning, match="4 interaction rows .* set aside"):
        result = DATA_STAGE.run(config, run, "", False)
    assert f"{good} interactions (4 rows rejected: {run.root / 'data' / 'rejected.csv'})" in result.summary
    with open(run.root / "data" / "rejected.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(Path(r["file"]).name, r["line"]) for r in rows] == [("ratings.csv", str(n)) for n in (1502, 1503, 1504, 1505)]
    assert [r["reason"] for r in rows] == [
        "unknown item id '99999999' (not in the item file)", "column 'rating': 'x' is not a number",
        "expected 4 fields, found 3", "duplicate interaction (same user, item and timestamp as line 11); "
        "remove it or load with duplicates='drop'"]
    assert "4 rows rejected" in (run.root / "data" / "load_report.txt").read_text()
    assert run.record("data")["interactions"] == good and run.record("data")["rejected_rows"] == 4
    # Reused while the setting stays; back on `error`, the load must stop again rather than reuse.
    assert DATA_STAGE.run(config, run, "", False).reused
    strict = load_config(DatasetConfig, None, [o.removeprefix("data.") for o in source])
    with pytest.raises(DatasetError, match="line 1502: unknown item id"):
        DATA_STAGE.run(strict, run, "", False)


def test_bad_rows_of_a_pmg_dataset_and_a_jsonl_table_are_set_aside_too(tmp_path: Path) -> None:
    from pmg.data import CatalogConfig, read_dataset, write_catalog
    from pmg.data.sources import load_table

    folder = write_catalog(tmp_path / "catalog", CatalogConfig(seed=3, num_users=8, num_items=16, interactions_per_user=6))
    interactions = folder / "interactions.csv"
    good = read_dataset(folder).num_interactions
    with open(interactions, "a") as f:
        f.write("u_new,no_such_item,5,1,\nu_new,i00001,yesterday,,\n")
    with pytest.raises(DatasetError, match=rf"line {good + 2}, column 'item_id': unknown item_id 'no_such_item'"):
        read_dataset(folder)
    data = read_dataset(folder, on_bad_rows="skip")
    assert data.num_interactions == good and "u_new" not in data.user_ids  # a user with only bad rows is not invented
    assert [(r.line, r.reason) for r in data.report.rejected] == [
        (good + 2, "column 'item_id': unknown item_id 'no_such_item' (not in items.jsonl)"),
        (good + 3, "column 'timestamp': 'yesterday' is not an integer")]

    table = tmp_path / "log.jsonl"
    table.write_text('{"user_id": "a", "item_id": "x", "timestamp": 1}\n{"user_id": "a", "item_id": \n'
                     '{"user_id": "b", "item_id": "y"}\n{"user_id": "b", "item_id": "y", "timestamp": 2}\n')
    with pytest.raises(DatasetError, match="line 2: not valid JSON"):
        load_table(table)
    loaded = load_table(table, on_bad_rows="skip")
    assert loaded.num_interactions == 2
    assert [(r.line, r.reason) for r in loaded.report.rejected] == [
        (2, "not valid JSON: Expecting value"), (3, "column 'timestamp': missing required field")]
    assert "2 rows rejected" in loaded.report.summary()


# ---------------------------------------------------------------- damaged artefacts


def _tiny_config(run: Path) -> PipelineConfig:
    return load_config(PipelineConfig, TINY_CONFIG, [f"preference.features.cache_dir={run.parent / 'features'}"])


def _run_stages(config: PipelineConfig, run: RunDirectory, force: bool = False) -> dict[str, str]:
    """Data, preference and quantize as `pmg pipeline` runs them (the zoo left out: these features
    are model-free); each stage's fingerprint."""
    fingerprints, upstream = {}, ""
    for stage in STAGES:
        upstream = fingerprints[stage.name] = stage.run(getattr(config, stage.config_field), run, upstream, force).fingerprint
    return fingerprints


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory whose data, preference and quantize stages completed (read-only: copy it)."""
    root = tmp_path_factory.mktemp("trained") / "run"
    _run_stages(_tiny_config(root), RunDirectory(root))
    return root


def _flip_byte(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_a_damaged_stage_file_is_named_with_the_command_that_rebuilds_it_and_the_pipeline_redoes_it(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = Path(shutil.copytree(trained_run, tmp_path / "run"))
    quantizer = root / "quantize" / "visual" / "model.safetensors"
    _flip_byte(quantizer, quantizer.stat().st_size - 5)  # same size, other bytes
    with pytest.raises(RunError, match=rf"{re.escape(str(quantizer))} is damaged \(its SHA-256 differs from the one stage 'quantize' recorded\); "
                                       rf"rebuild the stage with `pmg pipeline --run {re.escape(str(root))} --force quantize`"):
        load_user_tokens(RunDirectory(root))
    model = root / "preference" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:-100])  # cut short, as by a full disk or a copy that stopped
    user = json.loads((root / "quantize" / "user_tokens.jsonl").read_text().splitlines()[0])["user_id"]
    assert main(["recommend", "--run", str(root), "--user", user]) == 2
    err = capsys.readouterr().err
    assert f"{model} is damaged (" in err and "bytes where stage 'preference' wrote" in err and "--force preference" in err

    # `pmg pipeline` redoes a stage whose files are damaged, and gets the same files back.
    config = _tiny_config(root)
    with pytest.warns(RunWarning, match=r"model\.safetensors is damaged .* stage 'preference' is redone"):
        _run_stages(config, RunDirectory(root))
    for path in (model, quantizer):
        assert path.read_bytes() == (trained_run / path.relative_to(root)).read_bytes()
    load_user_tokens(RunDirectory(root))


def test_a_damaged_feature_cache_entry_is_recomputed_not_trusted(trained_run: Path, tmp_path: Path) -> None:
    data = read_dataset(trained_run / "data" / "dataset")
    spec = FeatureEncoderSpec("textual", "words")
    fresh = encode_items(data, spec, tmp_path)
    (entry,) = tmp_path.glob("textual-*.safetensors")
    written = entry.read_bytes()
    _flip_byte(entry, len(written) - 3)  # a byte of the tensors: the file still loads
    with pytest.warns(RunWarning, match=rf"feature cache entry {re.escape(str(entry))} is damaged \(the SHA-256 of its tensors differs"):
        again = encode_items(data, spec, tmp_path)
    assert torch.equal(again.values, fresh.values) and entry.read_bytes() == written
    entry.write_bytes(written[: len(written) // 2])
    with pytest.warns(RunWarning, match="is damaged \\(does not load"):
        again = encode_items(data, spec, tmp_path)
    assert torch.equal(again.values, fresh.values) and entry.read_bytes() == written


# tests/tiny.yaml's quantize section as `pmg quantize fit` overrides.
_TINY_QUANTIZE = ("num_levels=2", "codebook_size=8", "batch_size=32", "trainer.max_epochs=5", "trainer.enable_progress_bar=false")


def _file_too_large_beyond(limit: int) -> None:
    """In the child: every write past ``limit`` bytes of a file fails with EFBIG, as writes to a
    full disk fail with ENOSPC (SIGXFSZ ignored, so the write returns the error)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_write_that_fails_leaves_the_previous_outputs_and_a_clear_error(trained_run: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(trained_run, tmp_path / "run"))
    def results() -> list[Path]:  # the stage's files, less its logs and the checkpoints it resumes from
        return [p for p in (root / "quantize").rglob("*") if p.is_file() and not {"tb", "checkpoints"} & set(p.parts)]

    before = {p: p.read_bytes() for p in results()}
    fit = ["quantize", "fit", "--run", str(root), *_TINY_QUANTIZE]
    failed = subprocess.run([sys.executable, "-m", "pmg.cli", *fit],
                            capture_output=True, text=True, preexec_fn=lambda: _file_too_large_beyond(2048), timeout=600)
    assert failed.returncode == 2, failed.stderr[-2000:]
    assert re.search(rf"pmg: error: \[Errno 27\] File too large.*: '{re.escape(str(root / 'quantize'))}.*'", failed.stderr)
    assert "atomic writes kept the previous version" in failed.stderr
    assert not (root / LOCK_FILE).exists() and not (root / "quantize" / "stage.json").exists()
    after = set(results())
    assert not [p for p in (root / "quantize").rglob(".*") if p.is_file()]  # no temporary file left behind
    for path in after:  # each file is its previous version or the rewrite of it (the same bytes), never a part
        assert path in before and path.read_bytes() == before[path], path
    RunDirectory(root).require("preference")  # what the failed stage read is intact
    assert main(fit) == 0
    assert {p: p.read_bytes() for p in before} == before


# ---------------------------------------------------------------- a training stage killed mid-fit

# Preference: 8 batches an epoch, 4 epochs; quantize: 3 batches an epoch, 5 epochs; each checkpoints
# every 3 (preference) or 4 (quantize) batches and at every epoch end.
_RESUME_OVERRIDES = ("preference.batch_size=64", "preference.trainer.max_epochs=4", "preference.trainer.checkpoint_every_n_steps=3",
                     "quantize.batch_size=16", "quantize.trainer.checkpoint_every_n_steps=4")

# `pmg pipeline` (data, preference, quantize) in a process of its own that stops itself (SIGSTOP)
# right after training batch argv[3] of stage argv[2], for the test to see it hold the run, then SIGKILL it.
_KILLED = textwrap.dedent("""
    import importlib, os, signal, sys
    import torch
    from lightning.pytorch.callbacks import Callback
    import pmg.pipeline
    from pmg.config import load_config
    from pmg.data.dataset_stage import DATA_STAGE
    from pmg.preference.stage import PREFERENCE_STAGE
    from pmg.quantize.stage import QUANTIZE_STAGE

    run, stage, batches, tiny, overrides = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5:]
    torch.set_num_threads(1)

    class StopAfterBatch(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.fit_loop.total_batch_idx + 1 == batches:
                os.kill(os.getpid(), signal.SIGSTOP)

    module = importlib.import_module(f"pmg.{stage}.stage")
    build_trainer = module.build_trainer

    def build_with_stop(*args, **kwargs):
        trainer = build_trainer(*args, **kwargs)
        trainer.callbacks.append(StopAfterBatch())  # after the checkpoint callbacks: a batch due for one is saved
        return trainer

    module.build_trainer = build_with_stop
    pmg.pipeline.STAGES = (DATA_STAGE, PREFERENCE_STAGE, QUANTIZE_STAGE)
    config = load_config(pmg.pipeline.PipelineConfig, tiny, [f"run_dir={run}", *overrides])
    pmg.pipeline.run_pipeline(config, command=f"pmg pipeline --run {run} (stops after {stage} batch {batches})")
""")


def _pipeline_to_quantize(run: Path, monkeypatch: pytest.MonkeyPatch, overrides: tuple[str, ...] = _RESUME_OVERRIDES) -> None:
    """`pmg pipeline` on ``run`` with the data, preference and quantize stages (the zoo left out:
    these features are model-free)."""
    monkeypatch.setattr("pmg.pipeline.STAGES", STAGES)
    config = load_config(PipelineConfig, TINY_CONFIG, [f"run_dir={run}", f"preference.features.cache_dir={run.parent / 'features'}",
                                                       *overrides])
    run_pipeline(config, log=lambda line: None)


def _kill_after_batch(run: Path, stage: str, batches: int) -> int:
    """Start the pipeline on ``run`` in a process of its own, wait until it stops after batch
    ``batches`` of ``stage``, check that it holds the run, SIGKILL it; its pid."""
    process = subprocess.Popen([sys.executable, "-c", _KILLED, str(run), stage, str(batches), str(TINY_CONFIG),
                                f"preference.features.cache_dir={run.parent / 'features'}", *_RESUME_OVERRIDES],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status = os.waitpid(process.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), f"the pipeline ended (status {status}) before {stage} batch {batches}"
    try:
        with pytest.raises(RunBusy, match=f"pid {process.pid} .*stops after {stage} batch {batches}"):
            with RunDirectory(run).lock("a second pmg pipeline"):
                pass
    finally:
        process.kill()
        process.wait()
    return process.pid


_RESULTS = ("preference/model.safetensors", "preference/user_preferences.safetensors", "preference/item_embeddings.safetensors",
            "preference/metrics.json", "quantize/user_codes.safetensors", "quantize/visual/model.safetensors", "quantize/metrics.json")


def test_a_killed_training_stage_resumes_from_its_last_checkpoint_to_the_uninterrupted_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = tmp_path / "reference"
    _pipeline_to_quantize(reference, monkeypatch)
    expected = {name: (reference / name).read_bytes() for name in _RESULTS}
    # Checkpointing within epochs changes nothing in an uninterrupted run.
    epoch_ends_only = tmp_path / "epoch-ends-only"
    _pipeline_to_quantize(epoch_ends_only, monkeypatch, tuple(o for o in _RESUME_OVERRIDES if "checkpoint_every" not in o))
    assert {name: (epoch_ends_only / name).read_bytes() for name in _RESULTS} == expected
    # Preference batch 13 is within epoch 1 (batches 9-16): the fit resumes from batch 12's checkpoint,
    # mid-epoch. Quantize batch 10 opens epoch 3 (batches 10-12): it resumes from the end of epoch 2.
    for stage, batches, checkpoint in (("preference", 13, "resume-e1-b12.ckpt"), ("quantize", 10, "resume-e2-b9-end.ckpt")):
        run = tmp_path / f"{stage}-killed-after-{batches}"
        pid = _kill_after_batch(run, stage, batches)
        committed = json.loads((run / stage / "checkpoints" / RESUME_RECORD).read_text())
        assert committed["checkpoint"] == checkpoint and not (run / stage / "stage.json").exists()
        # A checkpoint cut short while being written (the kill came during the next save) is not committed.
        (run / stage / "checkpoints" / "resume-e9-b99.ckpt").write_bytes(b"PK\x03\x04 cut short")
        with pytest.warns(RunWarning, match=f"stale lock of pid {pid}"):
            _pipeline_to_quantize(run, monkeypatch)
        for name in _RESULTS:  # the same bytes as the fits that were never interrupted
            assert (run / name).read_bytes() == expected[name], (stage, name)
        assert (run / stage / "tb" / "version_1").is_dir()  # the second attempt did run, resumed


def test_a_damaged_checkpoint_is_reported_and_the_fit_starts_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    _pipeline_to_quantize(run, monkeypatch)
    expected = {name: (run / name).read_bytes() for name in _RESULTS}
    (run / "preference" / "stage.json").unlink()  # as if killed after the fit's last checkpoint
    checkpoints = run / "preference" / "checkpoints"
    committed = checkpoints / json.loads((checkpoints / RESUME_RECORD).read_text())["checkpoint"]
    _flip_byte(committed, committed.stat().st_size // 2)
    with pytest.warns(RunWarning, match=rf"checkpoint {re.escape(str(committed))} is damaged \(its SHA-256 differs .*\); the fit starts over"):
        _pipeline_to_quantize(run, monkeypatch)
    for name in _RESULTS:
        assert (run / name).read_bytes() == expected[name], name


# ---------------------------------------------------------------- the zoo and the reward stage killed mid-fit

# `pmg pipeline` in a process of its own with the stages of argv[2] (comma-separated) that kills itself
# (SIGKILL) right after training batch argv[4] of a fit of the LightningModule class argv[3].
_KILLED_IN_FIT = textwrap.dedent("""
    import os, signal, sys
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.callbacks import Callback
    import pmg.pipeline
    from pmg.config import load_config

    run, stages, module_class, batches, tiny, overrides = (sys.argv[1], sys.argv[2].split(","), sys.argv[3], int(sys.argv[4]),
                                                           sys.argv[5], sys.argv[6:])
    torch.set_num_threads(1)

    class KillAfterBatch(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if type(module).__name__ == module_class and trainer.fit_loop.total_batch_idx + 1 == batches:
                os.kill(os.getpid(), signal.SIGKILL)

    fit = pl.Trainer.fit

    def fit_and_kill(self, *args, **kwargs):
        self.callbacks.append(KillAfterBatch())  # after the checkpoint callbacks: a batch due for one is saved
        return fit(self, *args, **kwargs)

    pl.Trainer.fit = fit_and_kill
    pmg.pipeline.STAGES = tuple(s for s in pmg.pipeline.STAGES if s.name in stages)
    config = load_config(pmg.pipeline.PipelineConfig, tiny, [f"run_dir={run}", *overrides])
    pmg.pipeline.run_pipeline(config, log=lambda line: None)
""")


def _generation_overrides(root: Path) -> list[str]:
    return [f"zoo.cache_dir={root / 'zoo-cache'}", f"preference.features.cache_dir={root / 'features'}"]


def _stages_through(last: str) -> tuple:
    """`pmg pipeline`'s stages up to ``last``."""
    from pmg.pipeline import STAGES as ALL_STAGES

    names = [stage.name for stage in ALL_STAGES]
    return ALL_STAGES[: names.index(last) + 1]


def _pipeline_through(run: Path, last: str, overrides: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`pmg pipeline` on ``run``, in this process, with the stages up to ``last``."""
    monkeypatch.setattr("pmg.pipeline.STAGES", _stages_through(last))
    run_pipeline(load_config(PipelineConfig, TINY_CONFIG, [f"run_dir={run}", *overrides]), log=lambda line: None)


class _Stopped(Exception):
    """Raised by a test hook to end a fit at a given batch."""


def _stopped_in_fit(run: Path, last: str, module_class: str, batches: int, overrides: list[str],
                    monkeypatch: pytest.MonkeyPatch) -> None:
    """As ``_killed_in_fit``, in this process: a hook raises right after that batch (and its checkpoint)."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback

    class StopAfterBatch(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
            if type(module).__name__ == module_class and trainer.fit_loop.total_batch_idx + 1 == batches:
                raise _Stopped

    fit = pl.Trainer.fit

    def fit_and_stop(self: pl.Trainer, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        self.callbacks.append(StopAfterBatch())
        fit(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(pl.Trainer, "fit", fit_and_stop)
        with pytest.raises(_Stopped):
            _pipeline_through(run, last, overrides, patch)


def _killed_in_fit(run: Path, last: str, module_class: str, batches: int, overrides: list[str]) -> None:
    """The pipeline with the stages up to ``last`` on ``run`` in a process of its own, killed
    (SIGKILL) right after training batch ``batches`` of its ``module_class`` fit."""
    names = ",".join(stage.name for stage in _stages_through(last))
    killed = subprocess.run([sys.executable, "-c", _KILLED_IN_FIT, str(run), names, module_class, str(batches), str(TINY_CONFIG),
                             *overrides], capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, f"not killed in {module_class} (status {killed.returncode}): {killed.stderr[-3000:]}"


@pytest.fixture(scope="module")
def generator_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run whose stages up to the generator completed, its zoo in ``<root>/zoo-cache`` (read-only: copy it)."""
    root = tmp_path_factory.mktemp("generation")
    with pytest.MonkeyPatch.context() as monkeypatch:
        _pipeline_through(root / "run", "generator", _generation_overrides(root), monkeypatch)
    return root / "run"


def _files(folder: Path) -> list[Path]:
    return sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())


def test_a_killed_zoo_build_keeps_its_finished_models_and_resumes_its_fit_to_the_same_entry(
    generator_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run, cache = tmp_path / "run", tmp_path / "zoo-cache"
    shutil.copytree(generator_run / "data", run / "data")
    shutil.copy(generator_run / "run.json", run)
    (reference,) = [p for p in (generator_run.parent / "zoo-cache").iterdir() if not p.name.startswith(".")]
    # Checkpoints every step of the UNet fit (NON_INPUT_KEYS: the same cache entry); killed after its first.
    overrides = [f"zoo.cache_dir={cache}", "zoo.sdxl.unet.trainer.checkpoint_every_n_steps=1"]
    _killed_in_fit(run, "zoo", "UNetDiffusionModule", 1, overrides)
    partial = cache / f".{reference.name}.partial"
    assert not (cache / reference.name).exists() and partial.is_dir()
    assert sorted(p.name for p in (partial / ".progress").glob("*.json")) == ["clip.json", "judge.json"]  # finished before the kill
    committed = json.loads((partial / ".progress" / "checkpoints" / "sdxl" / "unet" / RESUME_RECORD).read_text())
    assert committed["checkpoint"] == "resume-e0-b1.ckpt"

    _pipeline_through(run, "zoo", overrides, monkeypatch)
    out = capsys.readouterr().out
    assert f"[zoo] clip: kept from the interrupted build ({partial})" in out and "[zoo] judge: kept" in out
    assert [p.name for p in (run / "zoo" / "clip" / "tb").iterdir()] == ["version_0"]  # not trained again
    assert sorted(p.name for p in (run / "zoo" / "sdxl" / "unet" / "tb").iterdir()) == ["version_0", "version_1"]  # resumed
    entry = cache / reference.name
    assert not partial.exists() and _files(entry) == _files(reference)
    for name in _files(reference):  # the same bytes as the build that was never interrupted
        if name.name == "zoo.json":  # less its timings and the config as given (another cache_dir)
            built, expected = (json.loads((root / name).read_text()) for root in (entry, reference))
            for key in ("seconds", "timings", "config"):
                built.pop(key), expected.pop(key)
            assert built == expected
        else:
            assert (entry / name).read_bytes() == (reference / name).read_bytes(), name


def test_a_killed_reward_stage_resumes_each_fit_from_its_last_checkpoint_to_the_uninterrupted_result(
    generator_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every step checkpointed (tiny.yaml: 2 steps per fit); not an input, so the stages before are reused.
    overrides = [*_generation_overrides(generator_run.parent), "reward.trainer.checkpoint_every_n_steps=1"]
    reference = Path(shutil.copytree(generator_run, tmp_path / "reference"))
    _pipeline_through(reference, "reward", overrides, monkeypatch)
    run = Path(shutil.copytree(generator_run, tmp_path / "run"))
    checkpoints = run / "reward" / "checkpoints"

    _stopped_in_fit(run, "reward", "TextRewardModule", 1, overrides, monkeypatch)  # within the text fit, by a hook
    assert json.loads((checkpoints / "text" / RESUME_RECORD).read_text())["checkpoint"] == "resume-e0-b1.ckpt"
    _killed_in_fit(run, "reward", "ImageRewardModule", 1, overrides)  # the text fit resumed and ended; within the image fit, SIGKILL
    assert json.loads((checkpoints / "text" / RESUME_RECORD).read_text())["checkpoint"] == "resume-e0-b2-end.ckpt"
    committed = checkpoints / "image" / json.loads((checkpoints / "image" / RESUME_RECORD).read_text())["checkpoint"]
    assert committed.name == "resume-e0-b1.ckpt" and not (run / "reward" / "stage.json").exists()
    # The checkpoint holds what trains, not the frozen pipeline: of each text encoder's embedding matrix, the token rows.
    saved = torch.load(committed, map_location="cpu", weights_only=True)
    tokens = len(json.loads((run / "generator" / "image_adapter" / "prefgen_image_adapter.json").read_text())["token_ids"])
    embeddings = [v for k, v in saved["trainable"].items() if k.endswith("token_embedding.weight")]
    assert saved["state_dict"] == {} and len(embeddings) == 2
    assert all(e["values"].shape[0] == tokens < e["shape"][0] for e in embeddings)

    _pipeline_through(run, "reward", overrides, monkeypatch)
    # One TensorBoard run each: text, text resumed, image, image resumed.
    assert sorted(p.name for p in (run / "reward" / "tb").iterdir()) == [f"version_{n}" for n in range(4)]
    results = [name for name in _files(reference / "reward") if name.parts[0] in ("text_adapter", "image_adapter", "samples")
               or name.name == "metrics.json"]
    assert results == [name for name in _files(run / "reward") if name in results] and len(results) > 10
    for name in results:  # the result of the fits that were never interrupted
        assert (run / "reward" / name).read_bytes() == (reference / "reward" / name).read_bytes(), name


def test_a_killed_generator_stage_resumes_each_fit_from_its_last_checkpoint_to_the_uninterrupted_result(
    generator_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # generator_run's stage is the uninterrupted result (checkpoints at epoch ends only, tiny.yaml: 3 steps per fit);
    # here every step is checkpointed (not an input: the stages before are reused).
    overrides = [*_generation_overrides(generator_run.parent), "generator.trainer.checkpoint_every_n_steps=1"]
    reference = generator_run / "generator"
    run = Path(shutil.copytree(generator_run, tmp_path / "run"))
    shutil.rmtree(run / "generator")
    checkpoints = run / "generator" / "checkpoints"

    _stopped_in_fit(run, "generator", "TextGeneratorModule", 2, overrides, monkeypatch)  # within the text fit, by a hook
    assert json.loads((checkpoints / "text" / RESUME_RECORD).read_text())["checkpoint"] == "resume-e0-b2.ckpt"
    _killed_in_fit(run, "generator", "ImageGeneratorModule", 2, overrides)  # the text fit resumed and ended; within the image fit, SIGKILL
    assert json.loads((checkpoints / "text" / RESUME_RECORD).read_text())["checkpoint"] == "resume-e0-b3-end.ckpt"
    committed = checkpoints / "image" / json.loads((checkpoints / "image" / RESUME_RECORD).read_text())["checkpoint"]
    assert committed.name == "resume-e0-b2.ckpt" and not (run / "generator" / "stage.json").exists()
    # What trains, not the frozen models: of each text encoder's embedding matrix the token rows, with the
    # UNet LoRA (tiny.yaml), the losses and the random generators the module draws from itself.
    saved = torch.load(committed, map_location="cpu", weights_only=True)
    tokens = len(json.loads((reference / "image_adapter" / "prefgen_image_adapter.json").read_text())["token_ids"])
    embeddings = [v for k, v in saved["trainable"].items() if k.endswith("token_embedding.weight")]
    assert saved["state_dict"] == {} and len(embeddings) == 2 and all(e["values"].shape[0] == tokens < e["shape"][0] for e in embeddings)
    assert all("lora_" in k for k in saved["trainable"] if not k.endswith("token_embedding.weight"))
    assert saved["generator"]["losses"].shape == (2,) and saved["generator"]["words_rng"] is not None

    # The text fit is read back from its end, the image fit resumes, the soft-prompt baseline's two fits run.
    _pipeline_through(run, "generator", overrides, monkeypatch)
    assert sorted(p.relative_to(checkpoints).as_posix() for p in checkpoints.rglob(RESUME_RECORD)) == [
        f"{fit}/{RESUME_RECORD}" for fit in ("image", "soft_prompt/image", "soft_prompt/text", "text")]
    results = [name for name in _files(reference) if name.parts[0] in ("text_adapter", "image_adapter", "soft_prompt", "samples")
               or name.name == "metrics.json"]
    assert results == [name for name in _files(run / "generator") if name in results] and len(results) > 20
    for name in results:  # the result of the fits that were never interrupted
        assert (run / "generator" / name).read_bytes() == (reference / name).read_bytes(), name


def test_data_convert_stops_at_a_bad_row_or_sets_it_aside_with_on_bad_rows_skip(
    ml_latest_small: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, good = _movielens_with_bad_rows(ml_latest_small, tmp_path / "ml")
    convert = ["data", "convert", "movielens", "--src", str(folder), "--out"]
    assert main([*convert, str(tmp_path / "strict")]) == 2
    assert "ratings.csv, line 1502: unknown item id '99999999'" in capsys.readouterr().err
    assert not (tmp_path / "strict").exists()
    out = tmp_path / "skipped"
    assert main([*convert, str(out), "--on-bad-rows", "skip"]) == 0
    printed = capsys.readouterr().out
    assert f"{good} interactions" in printed and "4 rows rejected" in printed and str(out / "rejected.csv") in printed
    with open(out / "rejected.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(Path(r["file"]).name, int(r["line"])) for r in rows] == [("ratings.csv", n) for n in (1502, 1503, 1504, 1505)]
    assert rows[0]["reason"] == "unknown item id '99999999' (not in the item file)"
    assert read_dataset(out).num_interactions == good
    with pytest.raises(SystemExit):
        main([*convert, str(tmp_path / "typo"), "--on-bad-rows", "sometimes"])
    assert re.search(r"--on-bad-rows: invalid choice: 'sometimes' \(choose from '?error'?, '?skip'?\)", capsys.readouterr().err)


class _RowModule(TrainableOnlyCheckpoint, L.LightningModule):
    """An embedding matrix [10, 4] of which rows 1 and 2 train (the others' gradient masked), and a bias."""

    ROWS = torch.tensor([1, 2])

    def __init__(self, optimizer: str) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(10, 4)
        self.bias = torch.nn.Parameter(torch.zeros(4))
        self.optimizer = optimizer
        mask = torch.zeros(10, 1)
        mask[self.ROWS] = 1
        self.embedding.weight.register_hook(lambda grad: grad * mask)

    def checkpointed_parameters(self) -> dict[str, tuple[torch.nn.Parameter, torch.Tensor | None]]:
        return {"embedding.weight": (self.embedding.weight, self.ROWS), "bias": (self.bias, None)}

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return (self.embedding(batch) + self.bias + torch.randn(4)).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [self.embedding.weight, self.bias]  # the embedding's state is the optimizer's first
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=0.1)
        return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.1)  # decay moves every row's momentum


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_a_trainable_only_checkpoint_keeps_the_training_rows_and_resumes_to_the_uninterrupted_weights(
    optimizer: str, tmp_path: Path
) -> None:
    from lightning.pytorch.callbacks import Callback

    from pmg.training import ResumableLoader, TrainerConfig, build_trainer, resume_point

    class StopAfterBatch(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
            if trainer.global_step == 2:
                raise _Stopped

    def fit(folder: Path, stop: bool) -> torch.Tensor:
        L.seed_everything(0, verbose=False)
        module = _RowModule(optimizer)
        frozen = module.embedding.weight.detach().clone()
        resumable, start = resume_point(folder / "checkpoints", "key", 1, "test")
        trainer = build_trainer(TrainerConfig(max_epochs=1, accelerator="cpu", enable_progress_bar=False), folder,
                                checkpointing=False, resumable=resumable, callbacks=[StopAfterBatch()] if stop else [])
        trainer.fit(module, train_dataloaders=ResumableLoader(torch.tensor([1, 2, 1, 2, 2, 1]), batch_size=2, shuffle=True),
                    ckpt_path=start, weights_only=True)
        others = torch.ones(10, dtype=torch.bool)
        others[_RowModule.ROWS] = False
        # The masked rows never move under Adam; SGD's weight decay moves them (the same in every run).
        assert torch.equal(module.embedding.weight[others], frozen[others]) == (optimizer == "adam")
        return torch.cat([module.embedding.weight.detach().flatten(), module.bias.detach()])

    expected = fit(tmp_path / "uninterrupted", stop=False)
    with pytest.raises(_Stopped):
        fit(tmp_path / "run", stop=True)
    checkpoints = tmp_path / "run" / "checkpoints"
    saved = torch.load(checkpoints / json.loads((checkpoints / RESUME_RECORD).read_text())["checkpoint"], weights_only=True)
    moments = saved["optimizer_states"][0]["state"][0]  # the embedding's
    assert saved["state_dict"] == {}
    if optimizer == "adam":  # the other rows as built, their moments zero: the rows alone
        assert saved["trainable"]["embedding.weight"]["values"].shape == (2, 4)
        assert all(isinstance(moments[k], dict) and moments[k]["values"].shape == (2, 4) for k in ("exp_avg", "exp_avg_sq"))
    else:  # weight decay moved the other rows and their momentum: kept whole
        assert saved["trainable"]["embedding.weight"].shape == moments["momentum_buffer"].shape == (10, 4)
    assert torch.equal(fit(tmp_path / "run", stop=False), expected)
