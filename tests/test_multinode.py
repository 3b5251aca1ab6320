"""A stage on 2 nodes × 1 process, launched as a cluster launcher would (one `pmg` command per node,
Lightning's multi-node environment variables, rendezvous on 127.0.0.1): it learns what 1 process
learns, rank 0 alone writes the run, and a job killed on both nodes resumes to the result of one
that was never interrupted, byte for byte."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pmg.cli import main
from pmg.data.dataset_stage import load_prepared
from pmg.runs import RunDirectory
from prefgraph import InteractionGraph, sample_negatives

TESTS = Path(__file__).resolve().parent
TINY_CONFIG = TESTS / "tiny.yaml"
EPOCHS = 3
# As in test_preference_ddp: 2 ranks each summing half of a batch's gradients, all-reduced, differ
# from 1 process summing all of them in float32 rounding only; a rank that skipped the averaging
# is off by about one Adam step (lr 5e-3) in many weights, far beyond this.
TOLERANCE = 1e-5
MOVED = 1e-3

# One node: `pmg <args>` in this process, as `torchrun --no-python pmg ...` or `srun pmg ...` start it.
# PIN_NEGATIVES (a file of negatives [epochs, users, items]) pins each example's negative item and
# records each rank's weights (test_preference_ddp's callback): without it every process draws its
# own negatives and 1 process cannot be compared with 2 weight for weight. KILL_AFTER_BATCH SIGKILLs
# the node after that training batch, its checkpoint written.
NODE = textwrap.dedent("""
    import os, signal, sys
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.callbacks import Callback
    from safetensors.torch import load_file
    from pmg.cli import main

    torch.set_num_threads(1)
    kill_after, pin = int(os.environ.get("KILL_AFTER_BATCH", "0")), os.environ.get("PIN_NEGATIVES")
    callbacks = []
    if pin:
        sys.path.insert(0, sys.argv[1])
        from test_preference_ddp import _PinNegativesAndRecord
        callbacks.append(_PinNegativesAndRecord(os.path.dirname(pin), load_file(pin)["negatives"]))

    class KillAfterBatch(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.fit_loop.total_batch_idx + 1 == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)

    if kill_after:
        callbacks.append(KillAfterBatch())  # after the checkpoint callbacks: a batch due for one is saved
    fit = pl.Trainer.fit

    def fit_with(self, *args, **kwargs):
        self.callbacks.extend(callbacks)
        return fit(self, *args, **kwargs)

    pl.Trainer.fit = fit_with
    raise SystemExit(main(sys.argv[2:]))
""")

PREFERENCE = textwrap.dedent("""
    features: {textual: words, visual: pixels}
    model: {embedding_dim: 16, modality_dropout: 0.0}
    trainer: {enable_progress_bar: false, accelerator: cpu}
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fit(run: Path, config: Path, *overrides: str, nodes: int = 1, env: dict[str, str] | None = None,
         expect: int = 0) -> list[str]:
    """`pmg preference fit` on ``run`` as ``nodes`` node processes (1: a plain command); their outputs."""
    args = [sys.executable, "-c", NODE, str(TESTS), "preference", "fit", "--run", str(run), "--config", str(config), *overrides]
    base = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    for name in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "NODE_RANK", "LOCAL_RANK", "RANK"):
        base.pop(name, None)
    if nodes == 1:
        envs = [base]
    else:
        port = str(_free_port())
        args += ["trainer.strategy=ddp", f"trainer.num_nodes={nodes}", "trainer.devices=1"]
        # What a cluster launcher sets on each node: where rank 0 listens, how many in all, which node this is.
        envs = [{**base, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": str(nodes), "NODE_RANK": str(rank),
                 "LOCAL_RANK": "0"} for rank in range(nodes)]
    processes = [subprocess.Popen(args, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for e in envs]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    for rank, (process, output) in enumerate(zip(processes, outputs, strict=True)):
        assert process.returncode == expect, f"node {rank} exited {process.returncode}: {output[-3000:]}"
    return outputs


@pytest.fixture(scope="module")
def zoo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run whose data and zoo stages completed (`pmg pipeline --until zoo`; read-only: copy it)."""
    root = tmp_path_factory.mktemp("multinode")
    # 62 users: 486 training rows, an even number (DistributedSampler would repeat a row to balance 2 ranks).
    assert main(["pipeline", "--config", str(TINY_CONFIG), "--run", str(root / "run"), "--until", "zoo",
                 f"zoo.cache_dir={root / 'zoo-cache'}", "data.catalog.num_users=62"]) == 0
    assert sorted(p.name for p in (root / "run").iterdir() if p.is_dir()) == ["data", "zoo"]
    return root / "run"


def _config(zoo_run: Path, tmp_path: Path) -> Path:
    config = tmp_path / "preference.yaml"
    config.write_text(PREFERENCE.replace("{textual: words, visual: pixels}",
                                         f"{{textual: words, visual: pixels, cache_dir: {zoo_run.parent / 'features'}}}"))
    return config


def _copy(zoo_run: Path, to: Path) -> Path:
    return Path(shutil.copytree(zoo_run, to))


def test_two_nodes_over_loopback_learn_what_one_process_learns(zoo_run: Path, tmp_path: Path) -> None:
    config = _config(zoo_run, tmp_path)
    data, split = load_prepared(RunDirectory(zoo_run))
    train = split.train
    assert len(train) % 2 == 0, "the training rows split evenly over 2 ranks"
    graph = InteractionGraph(torch.from_numpy(data.user[train]), torch.from_numpy(data.item[train]), data.num_users, data.num_items)
    every_pair = torch.arange(data.num_users).repeat_interleave(data.num_items)
    generator = torch.Generator().manual_seed(0)
    negatives = torch.stack([sample_negatives(graph, every_pair, generator=generator).view(data.num_users, data.num_items)
                             for _ in range(EPOCHS)])
    # One batch per epoch holds every training row on 1 process and each node's half on 2: every
    # optimizer step averages the same per-example gradients, whatever order the samplers put rows in.
    common = ["batch_size=4096", f"trainer.max_epochs={EPOCHS}", "trainer.early_stopping_patience=0"]
    results = {}
    for name, nodes in (("one", 1), ("two", 2)):
        folder = tmp_path / name
        folder.mkdir()
        save_file({"negatives": negatives.contiguous()}, str(folder / "negatives.safetensors"))
        run = _copy(zoo_run, tmp_path / f"run-{name}")
        outputs = _fit(run, config, *common, nodes=nodes, env={"PIN_NEGATIVES": str(folder / "negatives.safetensors")})
        summaries = [line for output in outputs for line in output.splitlines() if line.startswith("[preference] test recall")]
        assert len(summaries) == nodes and len(set(summaries)) == 1, summaries  # every node ends with the same model
        results[name] = (run, [load_file(folder / f"rank{r}.safetensors") for r in range(nodes)])

    (one_run, (one,)), (two_run, ranks) = results["one"], results["two"]
    assert int(one["world_size"]) == 1 and [int(r["world_size"]) for r in ranks] == [2, 2]
    assert int(one["steps"]) == EPOCHS and all(int(r["steps"]) == EPOCHS for r in ranks)
    assert all(len(r["pairs"]) == len(train) // 2 for r in ranks)  # each node trained on its own half
    assert torch.equal(torch.cat([r["pairs"] for r in ranks]).unique(dim=0), one["pairs"].unique(dim=0))
    names = [k for k in one if k.startswith("weight.")]
    assert names and all(torch.equal(ranks[0][k], ranks[1][k]) for k in names)
    moved = max(float((one[k] - one[f"initial.{k[7:]}"]).abs().max()) for k in names)
    assert moved > MOVED, moved
    gaps = {k[7:]: float((ranks[0][k] - one[k]).abs().max()) for k in names}
    assert max(gaps.values()) <= TOLERANCE, gaps
    # Rank 0 wrote the stage, and its model is the one process's; the lock was rank 0's alone and is released.
    saved, single = (load_file(run / "preference" / "model.safetensors") for run in (two_run, one_run))
    assert max(float((v - single[k]).abs().max()) for k, v in saved.items()) <= TOLERANCE
    assert (two_run / "preference" / "stage.json").is_file() and (two_run / "preference" / "user_preferences.safetensors").is_file()
    assert not (two_run / ".lock").exists()


def test_a_job_killed_on_both_nodes_resumes_to_the_uninterrupted_result(zoo_run: Path, tmp_path: Path) -> None:
    config = _config(zoo_run, tmp_path)
    # Several batches an epoch, a checkpoint after each; negatives drawn as the stage draws them (nothing pinned),
    # so the resumed fit must restore every node's random state and loader position to match.
    common = ["batch_size=64", "trainer.max_epochs=2", "trainer.checkpoint_every_n_steps=1"]
    reference = _copy(zoo_run, tmp_path / "reference")
    _fit(reference, config, *common, nodes=2)
    run = _copy(zoo_run, tmp_path / "run")
    _fit(run, config, *common, nodes=2, env={"KILL_AFTER_BATCH": "5"}, expect=-signal.SIGKILL)
    committed = json.loads((run / "preference" / "checkpoints" / "resume.json").read_text())["checkpoint"]
    assert committed.endswith("-b5.ckpt") and not (run / "preference" / "stage.json").exists()
    _fit(run, config, *common, nodes=2)
    assert sorted(p.name for p in (run / "preference" / "tb").iterdir()) == ["version_0", "version_1"]  # resumed, not redone
    for name in ("model.safetensors", "user_preferences.safetensors", "item_embeddings.safetensors", "metrics.json"):
        assert (run / "preference" / name).read_bytes() == (reference / "preference" / name).read_bytes(), name
