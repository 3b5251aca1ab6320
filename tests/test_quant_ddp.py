"""prefquant under torch.distributed: two gloo processes keep identical codebooks."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from prefquant import ResidualQuantizer, load_safetensors, save_safetensors

WORLD_SIZE = 2


def _train_ema(rank: int, sync: bool) -> tuple[torch.Tensor, int]:
    # Different seeds per rank: module init, batch sizes and data all differ, so only syncing can agree.
    torch.manual_seed(100 + rank)
    rq = ResidualQuantizer(6, num_levels=2, codebook_size=8, dead_code_patience=1, sync_distributed=sync)
    rq.train()
    restarted = 0
    for _ in range(4):
        out = rq(torch.randn(24 + 8 * rank, 6) + 2.0 * rank)
        restarted += int(out.stats.restarted_codes.sum())
    return rq.codebooks, restarted


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    # A timeout turns a mismatched collective into an error instead of a hung test.
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=timedelta(seconds=60),
    )
    try:
        synced, restarted = _train_ema(rank, sync=True)
        unsynced, _ = _train_ema(rank, sync=False)

        torch.manual_seed(200 + rank)
        learned = ResidualQuantizer(
            6, num_levels=2, codebook_size=8, codebook_mode="learned", dead_code_patience=1
        )
        # What DDP does for parameters: same start (broadcast) and averaged gradients. DDP itself
        # imports dynamo on construction (seconds), so the real wrapper is exercised in the slow test.
        for param in learned.parameters():
            dist.broadcast(param.data, src=0)
        for _ in range(3):
            out = learned(torch.randn(16, 6) + rank)
            learned.zero_grad()
            out.loss.backward()
            with torch.no_grad():
                for param in learned.parameters():
                    dist.all_reduce(param.grad)
                    param -= 0.1 * param.grad / WORLD_SIZE
        save_safetensors(
            {
                "ema_synced": synced,
                "ema_unsynced": unsynced,
                "learned": learned.codebooks,
                "restarted": torch.tensor(restarted),
            },
            Path(out_dir) / f"rank{rank}.safetensors",
        )
    finally:
        dist.destroy_process_group()


def test_codebooks_identical_across_two_gloo_ranks(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    ranks = [load_safetensors(tmp_path / f"rank{r}.safetensors") for r in range(WORLD_SIZE)]
    # The dead-code path (rank-0 broadcast of replacement vectors) must actually have run.
    assert int(ranks[0]["restarted"]) > 0
    assert int(ranks[0]["restarted"]) == int(ranks[1]["restarted"])
    assert torch.equal(ranks[0]["ema_synced"], ranks[1]["ema_synced"])
    assert torch.equal(ranks[0]["learned"], ranks[1]["learned"])
    # Control: without syncing, the same training leaves the ranks with different codebooks.
    assert not torch.allclose(ranks[0]["ema_unsynced"], ranks[1]["ema_unsynced"])


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=timedelta(seconds=120),
    )
    try:
        torch.manual_seed(300 + rank)
        learned = ResidualQuantizer(
            6, num_levels=2, codebook_size=8, codebook_mode="learned", dead_code_patience=1
        )
        model = DistributedDataParallel(learned)
        for _ in range(3):
            out = model(torch.randn(16, 6) + rank)
            learned.zero_grad()
            out.loss.backward()
            with torch.no_grad():
                for param in learned.parameters():
                    param -= 0.1 * param.grad
        save_safetensors({"learned": learned.codebooks}, Path(out_dir) / f"ddp{rank}.safetensors")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_learned_codebooks_identical_under_ddp_wrapper(tmp_path):
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    books = [load_safetensors(tmp_path / f"ddp{r}.safetensors")["learned"] for r in range(WORLD_SIZE)]
    assert torch.equal(books[0], books[1])
