"""prefquant under torch.distributed: two gloo processes keep identical codebooks."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

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


# float32 rounding only: a batch's statistics and gradients summed in one process, or as two half sums
# all-reduced, differ in the last bits (~1e-7 relative) and a few steps keep that small. A rank that
# skipped the sync, or a fit on one rank's half of the rows, moves the codebooks by far more (a step
# moves them by ~1e-1 here, which the test checks).
TOLERANCE = 1e-5
STEPS, BATCH, DIM = 4, 32, 6


def _train_equivalence(part: int, parts: int, ddp: bool) -> dict[str, torch.Tensor]:
    """Codebooks after ``STEPS`` steps on the same global batches, of which this process takes rows
    ``part::parts``; with ``ddp``, the learned ones through ``DistributedDataParallel``.

    The same seed everywhere: the same data and the same initial codebooks. k-means initialisation and
    dead-code restarts are off because they draw from rank 0's rows alone (by design, so the ranks agree),
    which one process with every row cannot reproduce; ``test_codebooks_identical_across_two_gloo_ranks`` covers them.
    """
    from torch.nn.parallel import DistributedDataParallel

    data = torch.randn(STEPS, BATCH, DIM, generator=torch.Generator().manual_seed(7)) * 2.0
    books = {}
    for mode in ("learned", "ema"):
        torch.manual_seed(300)
        quantizer = ResidualQuantizer(DIM, num_levels=2, codebook_size=8, codebook_mode=mode, kmeans_init=False,
                                      dead_code_patience=None, decay=0.8)
        quantizer.train()
        books[f"{mode}_initial"] = quantizer.codebooks.clone()
        # The learned codebooks go through DDP's wrapper (gradient averaging); EMA statistics sync themselves.
        model = DistributedDataParallel(quantizer) if mode == "learned" and ddp else quantizer
        optimizer = torch.optim.Adam(quantizer.parameters(), lr=0.05) if mode == "learned" else None
        for step in range(STEPS):
            out = model(data[step, part::parts])
            if optimizer is not None:
                optimizer.zero_grad()
                out.loss.backward()
                optimizer.step()
        books[mode] = quantizer.codebooks.detach().clone()
    return books


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=timedelta(seconds=120),
    )
    try:
        save_safetensors(_train_equivalence(rank, WORLD_SIZE, ddp=True), Path(out_dir) / f"ddp{rank}.safetensors")
    finally:
        dist.destroy_process_group()


def test_two_ranks_with_half_batches_train_the_codebooks_of_one_process_with_whole_batches(tmp_path):
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    ranks = [load_safetensors(tmp_path / f"ddp{r}.safetensors") for r in range(WORLD_SIZE)]
    one = _train_equivalence(0, 1, ddp=False)
    for mode in ("learned", "ema"):
        assert torch.equal(ranks[0][mode], ranks[1][mode])
        assert torch.equal(ranks[0][f"{mode}_initial"], one[f"{mode}_initial"])
        moved = float((one[mode] - one[f"{mode}_initial"]).abs().max())
        gap = float((ranks[0][mode] - one[mode]).abs().max())
        assert moved > 1e-2 and gap <= TOLERANCE, (mode, moved, gap)
    # Control: one process on rank 0's half of each batch alone ends far from both.
    half = _train_equivalence(0, 2, ddp=False)
    assert all(float((half[m] - one[m]).abs().max()) > 100 * TOLERANCE for m in ("learned", "ema"))
