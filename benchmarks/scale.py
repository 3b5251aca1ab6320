"""Scale benchmark of the preference stage: epoch time, peak memory and quantization time at about
10^4, 10^5 and 10^6 users, side by side with PyG's LightGCN on the same graph and batches.

Usage:
    uv run --frozen python benchmarks/scale.py                  # 10^4, 10^5, 10^6 users (the largest: up to ~40 min)
    uv run --frozen python benchmarks/scale.py --quick          # 2k, 5k, 10k users, for a smoke check (~2 min)
    uv run --frozen python benchmarks/scale.py --sizes 10000,100000   # any sizes
    uv run --frozen python benchmarks/scale.py --check          # then compare with TARGETS, exit 1 on a miss
    uv run --frozen python benchmarks/scale.py --check-file saved.log # compare a saved output only
    uv run --frozen python benchmarks/scale.py --size 10000 --json-out one.json   # one size in this process
    uv run --frozen python benchmarks/scale.py --quick --generation-run runs/default   # generation throughput on that run

Data: a graph-only variant of the catalog generator (``pmg.data.catalog``), which renders an image and
writes a review per interaction and so cannot reach 10^6 users. Its statistics are the catalog's
default profile: items with uniform colour / pattern / material / style and lognormal(0, 1)
popularity; users with uniform tastes; Poisson(``--interactions-per-user`` - 5) + 5 interactions
each (25 on average: the issue's 20-30), drawn without replacement from the softmax over taste
affinity (the catalog's weights 2 / 1.5 / 2 / 1.5) + 0.5 x log popularity. Unlike the catalog it
leaves out the per-(user, item) N(0, 1) logit noise, which is what makes the catalog's draw O(U x I):
a draw here is a taste-cell then an item within it, O(1) per interaction. Items grow as
2000 x sqrt(U / 1000) (the catalog's 2000 items at 1000 users; 63,246 at 10^6), since real catalogs
grow slower than their audience. Content features: ``visual`` [I, 160] and ``textual`` [I, 384], the
widths of the stage's default ``pixels`` and ``minilm`` encoders, each a fixed random projection of
the item's one-hot visual (category, colour, pattern) or textual (material, style, brand) attributes
plus N(0, 0.5^2) noise, L2-normalised: no image or text is encoded. Split: leave-last-out
(``pmg.data.split.temporal_split``, the default pipeline's), interactions timed in draw order.

Each size runs in its own subprocess (``--size N --json-out FILE``), so that its peak memory is its own.
Measured per size, with the stage's ``configs/preference.yaml`` defaults (its ``PreferenceConfig``)
except the batch size, on one torch thread (the stage's ``num_threads``):

- ``epoch_seconds``: one training epoch of ours, timed from the first step (no warm-up): the stage's
  model (``build_model``) forward over the whole graph, ``loss_terms`` and its AdamW step per batch.
  Batches are ``BPRDataModule``'s (the stage's sampler), drawn before the clock starts; drawing
  them is ``sampling_seconds``, shared by both models and in neither's epoch time;
- ``phase_seconds``: ``epoch_seconds`` split into ``forward`` (the propagation, and on the first
  step building the graph's adjacency tiles), ``loss`` (the batch's rows, scores and L2 term),
  ``backward`` and ``optimizer`` (AdamW's step), summed over the epoch;
- ``lightgcn_epoch_seconds``: PyG's ``LightGCN`` (``pmg.preference.baselines``: 3 layers, the stage's
  embedding size and optimizer, its CSR adjacency and ``lightgcn_bpr_loss``) over the same batches.
  With ``--lightgcn-steps S`` (the default run sets 4 on its largest size) it is timed over the
  first S steps and scaled to the epoch's step count; ``lightgcn_timed_steps`` says so per size
  (null: the whole epoch was timed);
- the batch size: every full-graph model propagates the whole graph once per step, so an epoch of
  batches of fixed size costs O(E^2 / B) and no batch size of 2048 can train 10^6 users in 30
  minutes (about 12,000 steps of ~40 s). Each size instead runs ``--steps-per-epoch`` steps
  (default 32; ``batch_size`` = ceil(training interactions / steps)), for ours and LightGCN alike,
  which makes an epoch linear in the interactions for both;
- ``peak_gb``: the subprocess's peak RSS (``ru_maxrss``) read after our epoch, evaluation and
  quantization and before LightGCN is built: data, graph, features, ours and its optimizer state;
  ``peak_gb_with_lightgcn`` is read at the end of the subprocess;
- ``recall20`` and ``recall20_ci``: test Recall@20 after the epoch of ours on ``--eval-users``
  sampled users (default 5000; every user if fewer), the stage's protocol
  (``pmg.preference.baselines.held_out_ranking``: all items ranked, train + validation masked).
  With one test item per user Recall@20 is the share of users whose item is in their top 20, so
  its 95% interval is the Wilson score interval of that share; ``eval_seconds`` is its time;
- ``quantize_seconds``: ``pmg.quantize.stage.train_quantizers`` on the users' preference vectors
  (``id``, ``visual``, ``textual``: the stage's ``QuantizeConfig``, its EMA codebooks, k-means
  initialisation and batch size, for ceil(``--quantize-steps`` (default 200) x 256 / U) epochs, at
  least 1 and at most the stage's 40: 26 epochs at 2000 users, 1 from 10^5 on, where the stage's 40
  would be 156,000 steps at 10^6), then every user encoded; ``quantize_epochs`` per size;
  ``quantize_encode_seconds`` is the encoding of every user alone (the part that grows with U).

Across sizes: ``slope_ours`` and ``slope_lightgcn`` are the least-squares slopes of log epoch
seconds against log training interactions; ``epoch_ratio_largest`` is ours over LightGCN's epoch
time on the largest size; ``largest_minutes`` its epoch plus evaluation, in minutes.
``generation_users_per_second`` is batch generation's throughput (``pmg generate --users``,
``pmg.tasks.batch.generate_batch``: Lightning's predict loop on one CPU process, one torch thread,
shards of 256 users, 16 users per generator call) over ``generation_users`` users (default 200:
``--generation-users``) of a run after the generator stage: ``--generation-run DIR``, or by default
one the benchmark builds with the ``--quick`` profile (the zoo's default architectures with few
training steps, its zoo cached in ``.cache/pmg/zoo`` like ``pmg pipeline --quick``'s;
``generation_setup_seconds`` is that build, not in the throughput). Each user gets every text of
``generator.text.targets`` and one image at the run's ``generator.sample`` settings;
``generation_note`` names them. ``--skip-generation`` leaves it null.

Targets (``TARGETS``, for the full run; on this 2-core machine, shared): ``largest_minutes`` ≤ 30 and
``largest_peak_gb`` ≤ 16 (the 10^6-user graph trains one epoch and evaluates Recall@20 on a sample of
users in 30 minutes and 16 GB), ``slope_ours`` ≤ 1.1, ``epoch_ratio_largest`` ≤ 1.

Progress goes to stdout; the LAST line is one JSON object (numbers and lists, one entry per size).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch_geometric.nn.models import LightGCN

from pmg.benchmark_targets import Targets, at_most, parse_args_with_check, print_result, rounded
from pmg.config import load_config
from pmg.data.catalog import BRANDS, CATEGORIES, COLOURS, MATERIALS, PATTERNS, STYLES
from pmg.data.format import InteractionData, Item
from pmg.data.modules import BPRDataModule
from pmg.data.split import Split, temporal_split
from pmg.generator.config import GeneratorConfig
from pmg.pipeline import PipelineConfig, quick_profile, run_pipeline
from pmg.preference.baselines import held_out_ranking, lightgcn_adjacency, lightgcn_bpr_loss
from pmg.preference.stage import PreferenceConfig, build_model, interaction_pairs
from pmg.quantize.stage import QuantizeConfig, load_user_tokens, train_quantizers
from pmg.runs import RunDirectory
from pmg.tasks.batch import generate_batch
from pmg.training import TrainerConfig, build_optimizer
from prefgraph import InteractionGraph

REPO = Path(__file__).resolve().parents[1]
FULL_SIZES = (10_000, 100_000, 1_000_000)
QUICK_SIZES = (2_000, 5_000, 10_000)
TARGETS: Targets = {
    "largest_minutes": at_most(30.0),
    "largest_peak_gb": at_most(16.0),
    "slope_ours": at_most(1.1),
    "epoch_ratio_largest": at_most(1.0),
}
# The catalog's default taste weights (CatalogConfig: colour, pattern, material, style) and popularity weight.
TASTE_WEIGHTS = np.array([2.0, 1.5, 2.0, 1.5])
POPULARITY_WEIGHT = 0.5
MIN_INTERACTIONS = 5
FEATURE_DIMS = {"visual": 160, "textual": 384}  # the pixels and minilm encoders' widths
FEATURE_NOISE = 0.5
K = 20
PHASES = ("forward", "loss", "backward", "optimizer")
Z975 = 1.959964


# ---------------------------------------------------------------------------------------- data
def items_for(users: int) -> int:
    """The item count for ``users`` users: the catalog's 2000 at 1000 users, growing as sqrt(U)."""
    return int(round(2000 * math.sqrt(users / 1000)))


def scale_catalog(num_users: int, *, interactions_per_user: float = 25.0, seed: int = 0
                  ) -> tuple[InteractionData, dict[str, torch.Tensor]]:
    """The graph-only catalog (see the module docstring) and its content features
    ``{"visual": float32 [I, 160], "textual": float32 [I, 384]}``; interactions are ordered by user,
    then in time."""
    rng = np.random.default_rng(seed)
    num_items = items_for(num_users)
    taste_sizes = (len(COLOURS), len(PATTERNS), len(MATERIALS), len(STYLES))
    item_taste = np.stack([rng.integers(0, s, num_items) for s in taste_sizes], axis=1)  # [I, 4]
    other = {"category": rng.integers(0, len(CATEGORIES), num_items), "brand": rng.integers(0, len(BRANDS), num_items)}
    popularity = rng.lognormal(0.0, 1.0, num_items)
    user_taste = np.stack([rng.integers(0, s, num_users) for s in taste_sizes], axis=1)  # [U, 4]

    # A cell is one (colour, pattern, material, style) combination; the affinity of a user for an item
    # depends only on the user's cell and the item's, so the softmax over items factorises into one
    # over cells (weighted by the popularity mass of their items) and one within the cell.
    num_cells = int(np.prod(taste_sizes))
    item_cell = np.ravel_multi_index(item_taste.T, taste_sizes)
    user_cell = np.ravel_multi_index(user_taste.T, taste_sizes)
    cells = np.stack(np.unravel_index(np.arange(num_cells), taste_sizes), axis=1)  # [C, 4]
    affinity = ((cells[:, None, :] == cells[None, :, :]) * TASTE_WEIGHTS).sum(-1)  # [C user, C item]
    item_weight = popularity ** POPULARITY_WEIGHT
    cell_weight = np.bincount(item_cell, weights=item_weight, minlength=num_cells)
    cell_cdf = np.cumsum(np.exp(affinity) * cell_weight[None, :], axis=1)
    cell_cdf /= cell_cdf[:, -1:]
    flat_cdf = (cell_cdf + np.arange(num_cells)[:, None]).ravel()  # row r spans (r, r + 1]
    by_cell = np.argsort(item_cell, kind="stable")
    cumulative = np.cumsum(item_weight[by_cell])
    first = np.searchsorted(item_cell[by_cell], np.arange(num_cells))
    last = np.r_[first[1:], num_items] - 1
    before = np.r_[0.0, cumulative][first]

    def draw(users: np.ndarray) -> np.ndarray:
        rows = user_cell[users]
        cell = np.clip(np.searchsorted(flat_cdf, rows + rng.random(len(users))) - rows * num_cells, 0, num_cells - 1)
        position = np.searchsorted(cumulative, before[cell] + rng.random(len(users)) * cell_weight[cell], side="right")
        return by_cell[np.clip(position, first[cell], last[cell])]

    counts = np.minimum(rng.poisson(interactions_per_user - MIN_INTERACTIONS, num_users) + MIN_INTERACTIONS, num_items)
    user = np.repeat(np.arange(num_users), counts)
    item = draw(user)
    for _ in range(20):  # without replacement: a repeated (user, item) is drawn again
        _, kept = np.unique(user * num_items + item, return_index=True)
        repeated = np.ones(len(user), dtype=bool)
        repeated[kept] = False
        if not repeated.any():
            break
        item[repeated] = draw(user[repeated])
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    timestamp = np.arange(len(user)) - np.repeat(starts, counts)  # draw order within each user

    items = [Item(item_id=f"i{i:07d}") for i in range(num_items)]
    data = InteractionData(
        name=f"scale-{num_users}", user_ids=[f"u{u:07d}" for u in range(num_users)], items=items, user=user, item=item,
        timestamp=timestamp, rating=np.full(len(user), np.nan, dtype=np.float32), review=[""] * len(user),
        source=f"benchmarks/scale.py graph-only catalog, seed {seed}",
    )
    onehots = {
        "visual": [other["category"], item_taste[:, 0], item_taste[:, 1]],
        "textual": [item_taste[:, 2], item_taste[:, 3], other["brand"]],
    }
    vocab = {"visual": (len(CATEGORIES), len(COLOURS), len(PATTERNS)), "textual": (len(MATERIALS), len(STYLES), len(BRANDS))}
    generator = torch.Generator().manual_seed(seed)
    features = {}
    for modality, dim in FEATURE_DIMS.items():
        projected = torch.zeros(num_items, dim)
        for values, size in zip(onehots[modality], vocab[modality], strict=True):
            projected += torch.randn(size, dim, generator=generator)[torch.from_numpy(values)]
        projected += FEATURE_NOISE * torch.randn(num_items, dim, generator=generator)
        features[modality] = torch.nn.functional.normalize(projected, dim=1)
    return data, features


# ---------------------------------------------------------------------------------------- one size
def wilson_interval(share: float, n: int) -> tuple[float, float]:
    """The 95% Wilson score interval of a share ``share`` of ``n`` trials."""
    centre = (share + Z975**2 / (2 * n)) / (1 + Z975**2 / n)
    half = Z975 * math.sqrt(share * (1 - share) / n + Z975**2 / (4 * n * n)) / (1 + Z975**2 / n)
    return centre - half, centre + half


def peak_gb() -> float:
    """This process's peak resident memory so far (``ru_maxrss``, KiB on Linux), in GiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def measure_size(num_users: int, args: argparse.Namespace, log) -> dict[str, Any]:
    """Every per-size figure of the module docstring for ``num_users`` users."""
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    config = PreferenceConfig()
    start = time.perf_counter()
    data, features = scale_catalog(num_users, interactions_per_user=args.interactions_per_user, seed=args.seed)
    split: Split = temporal_split(data, "leave_last_out")
    data_seconds = time.perf_counter() - start
    train = len(split.train)
    batch_size = math.ceil(train / args.steps_per_epoch)
    log(f"[{num_users} users] {data.num_items} items, {data.num_interactions} interactions (train {train}); "
        f"batch {batch_size} x {args.steps_per_epoch} steps; data in {data_seconds:.0f}s")

    start = time.perf_counter()
    datamodule = BPRDataModule(data, split, batch_size=batch_size, num_negatives=config.num_negatives)
    batches = list(datamodule.train_dataloader())
    sampling_seconds = time.perf_counter() - start

    masks = {m: torch.ones(data.num_items, dtype=torch.bool) for m in features}
    graph = InteractionGraph(*interaction_pairs(data, split.train), data.num_users, data.num_items, features, masks)
    model = build_model(config.model, data.num_users, data.num_items, FEATURE_DIMS)
    optimizer = build_optimizer(model.parameters(), config.optimizer)
    model.train()
    phase_seconds = dict.fromkeys(PHASES, 0.0)
    start = time.perf_counter()
    for batch in batches:
        marks = [time.perf_counter()]
        emb = model(graph)
        marks.append(time.perf_counter())
        loss = model.loss_terms(emb, batch["users"], batch["positives"], batch["negatives"]).total
        marks.append(time.perf_counter())
        optimizer.zero_grad()
        loss.backward()
        marks.append(time.perf_counter())
        optimizer.step()
        marks.append(time.perf_counter())
        for phase, (begin, end) in zip(PHASES, itertools.pairwise(marks), strict=True):
            phase_seconds[phase] += end - begin
    epoch_seconds = time.perf_counter() - start
    last_loss = float(loss.detach())
    del emb, loss
    log(f"  ours: epoch {epoch_seconds:.1f}s ({epoch_seconds / len(batches):.2f}s/step), last batch loss {last_loss:.4f}")

    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        emb = model(graph)
        val_pairs = interaction_pairs(data, split.val)
        prefs = model.user_preferences(graph, emb, cold_start_history=val_pairs)
        generator = np.random.default_rng(args.seed)
        users = np.sort(generator.choice(data.num_users, min(args.eval_users, data.num_users), replace=False))
        metrics = held_out_ranking(model.scorer(graph, emb, cold_start_history=val_pairs), data, split, [K], users=users)
    eval_seconds = time.perf_counter() - start
    evaluated = int(metrics["num_users"])
    assert len(split.test[np.isin(data.user[split.test], users)]) == evaluated, "one test item per evaluated user"
    recall = metrics[f"recall@{K}"]
    low, high = wilson_interval(recall, evaluated)
    log(f"  ours: recall@{K} {recall:.4f} [{low:.4f}, {high:.4f}] on {evaluated} users ({eval_seconds:.1f}s)")

    embeddings = {m: prefs[m].contiguous() for m in model.modalities}
    # Epochs, not trainer.max_steps: EMA codebooks step no optimizer, so Lightning's step count stays 0.
    epochs = max(1, min(40, math.ceil(args.quantize_steps * QuantizeConfig().batch_size / data.num_users)))
    quantize = QuantizeConfig(trainer=TrainerConfig(max_epochs=epochs, enable_progress_bar=False, log_every_n_steps=50))
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        module, _ = train_quantizers(quantize, embeddings, Path(scratch))
        quantize_seconds = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        for modality, quantizer in module.quantizers.items():
            quantizer.encode(embeddings[modality])
    encode_seconds = time.perf_counter() - start
    log(f"  quantize: {quantize_seconds:.1f}s ({epochs} epochs + every user encoded; encoding alone {encode_seconds:.1f}s)")
    ours_peak = peak_gb()
    del emb, prefs, embeddings, module, model, optimizer, graph

    lightgcn_graph = InteractionGraph(*interaction_pairs(data, split.train), data.num_users, data.num_items)
    lightgcn = LightGCN(lightgcn_graph.num_nodes, config.model.embedding_dim, 3)
    lightgcn_optimizer = build_optimizer(lightgcn.parameters(), config.optimizer)
    adjacency = lightgcn_adjacency(lightgcn_graph)
    timed = batches if args.lightgcn_steps <= 0 else batches[:args.lightgcn_steps]
    start = time.perf_counter()
    for batch in timed:
        loss = lightgcn_bpr_loss(lightgcn, adjacency, batch, lightgcn_graph.num_users, config.model.l2_weight)
        lightgcn_optimizer.zero_grad()
        loss.backward()
        lightgcn_optimizer.step()
    lightgcn_seconds = (time.perf_counter() - start) * len(batches) / len(timed)
    scaled = "" if len(timed) == len(batches) else f" (timed over {len(timed)} of {len(batches)} steps, scaled)"
    log(f"  lightgcn: epoch {lightgcn_seconds:.1f}s{scaled}; ours / lightgcn {epoch_seconds / lightgcn_seconds:.2f}; "
        f"peak {ours_peak:.2f} GB (ours), {peak_gb():.2f} GB (with lightgcn)")
    return {
        "users": num_users, "items": data.num_items, "interactions": train, "batch_size": batch_size,
        "steps": len(batches), "last_batch_loss": last_loss, "data_seconds": data_seconds, "sampling_seconds": sampling_seconds,
        "epoch_seconds": epoch_seconds, "phase_seconds": phase_seconds, "lightgcn_epoch_seconds": lightgcn_seconds,
        "lightgcn_timed_steps": None if len(timed) == len(batches) else len(timed),
        "peak_gb": ours_peak, "peak_gb_with_lightgcn": peak_gb(),
        "recall20": recall, "recall20_ci": [low, high], "eval_users": evaluated, "eval_seconds": eval_seconds,
        "quantize_seconds": quantize_seconds, "quantize_epochs": epochs, "quantize_encode_seconds": encode_seconds,
    }


# ---------------------------------------------------------------------------------------- across sizes
def slope(x: list[float], y: list[float]) -> float:
    """The least-squares slope of log ``y`` against log ``x`` (NaN with fewer than two points)."""
    if len(x) < 2:
        return float("nan")
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def run_size_subprocess(num_users: int, args: argparse.Namespace, lightgcn_steps: int, folder: Path) -> dict[str, Any]:
    """``measure_size`` in a fresh interpreter (its own peak memory); progress passes through."""
    out = folder / f"{num_users}.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--size", str(num_users), "--json-out", str(out),
               "--steps-per-epoch", str(args.steps_per_epoch), "--eval-users", str(args.eval_users),
               "--quantize-steps", str(args.quantize_steps), "--lightgcn-steps", str(lightgcn_steps),
               "--interactions-per-user", str(args.interactions_per_user), "--seed", str(args.seed)]
    subprocess.run(command, check=True)
    return json.loads(out.read_text())


def measure_generation(run_dir: Path | None, num_users: int, folder: Path, log) -> dict[str, Any]:
    """Batch generation's users per second on the first ``num_users`` users of ``run_dir`` (None: a
    ``--quick`` profile run built in ``folder`` up to the generator stage), into shards in ``folder``."""
    torch.set_num_threads(1)
    started = time.perf_counter()
    if run_dir is None:
        run_dir = folder / "quick-run"
        log(f"generation: building a --quick run up to the generator stage in {run_dir}")
        run_pipeline(load_config(PipelineConfig, quick_profile(), [f"run_dir={run_dir}"]), until="generator", log=log)
    setup = time.perf_counter() - started
    run = RunDirectory(run_dir)
    ids = folder / "generation-users.txt"
    ids.write_text("\n".join(load_user_tokens(run).user_ids[:num_users]) + "\n")
    summary = generate_batch(run, folder / "generated", str(ids), trainer={"accelerator": "cpu", "devices": "1", "strategy": "auto"})
    log(f"generation: {summary.line()}")
    sample = load_config(GeneratorConfig, run.stage_dir("generator") / "config.yaml").sample
    return {"generation_users_per_second": summary.users_per_second, "generation_users": summary.generated_users,
            "generation_seconds": summary.seconds, "generation_setup_seconds": setup,
            "generation_note": f"pmg generate --users on {run_dir}: 1 CPU process, 1 torch thread, {sample.num_inference_steps} "
                               f"denoising steps, up to {sample.max_new_tokens} new tokens per text"}


def summarise(per_size: list[dict[str, Any]], generation: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON line: per-size lists, slopes and the largest size's figures; ``generation``
    (:func:`measure_generation`; None: not measured) adds batch generation's figures."""
    lists = {key: [size[key] for size in per_size] for key in per_size[0]}
    largest = per_size[-1]
    result: dict[str, Any] = {
        "sizes": lists.pop("users"),
        **lists,
        "steps_per_epoch": largest["steps"],
        "epoch_ratio": [a / b for a, b in zip(lists["epoch_seconds"], lists["lightgcn_epoch_seconds"], strict=True)],
        "slope_ours": slope(lists["interactions"], lists["epoch_seconds"]),
        "slope_lightgcn": slope(lists["interactions"], lists["lightgcn_epoch_seconds"]),
        "epoch_ratio_largest": largest["epoch_seconds"] / largest["lightgcn_epoch_seconds"],
        "largest_users": largest["users"],
        "largest_minutes": (largest["epoch_seconds"] + largest["eval_seconds"]) / 60,
        "largest_peak_gb": largest["peak_gb"],
        "largest_recall20": largest["recall20"],
        "largest_recall20_ci": largest["recall20_ci"],
        **(generation or {"generation_users_per_second": None, "generation_note": "not measured (--skip-generation)"}),
    }
    del result["steps"]
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES} (smoke check)")
    parser.add_argument("--sizes", help=f"comma-separated user counts (default {','.join(map(str, FULL_SIZES))})")
    parser.add_argument("--steps-per-epoch", type=int, default=32, help="steps per epoch at every size (default 32)")
    parser.add_argument("--eval-users", type=int, default=5000, help="users whose Recall@20 is measured (default 5000)")
    parser.add_argument("--quantize-steps", type=int, default=200, help="quantizer training steps (default 200)")
    parser.add_argument("--lightgcn-steps", type=int, default=-1,
                        help="time LightGCN over this many steps, scaled to the epoch (default: 4 on a size of "
                             ">= 10^6 users, the whole epoch otherwise; 0: always the whole epoch)")
    parser.add_argument("--interactions-per-user", type=float, default=25.0, help="mean interactions per user (default 25)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, help="measure this one size in this process (with --json-out)")
    parser.add_argument("--json-out", type=Path, help="where --size writes its figures")
    parser.add_argument("--generation-run", type=Path, help="a run after the generator stage whose batch generation is timed "
                                                               "(default: a --quick profile run built for it)")
    parser.add_argument("--generation-users", type=int, default=200, help="users batch generation is timed on (default 200)")
    parser.add_argument("--skip-generation", action="store_true", help="do not measure batch generation")
    args = parse_args_with_check(parser, TARGETS, argv)
    if args.steps_per_epoch < 1:
        parser.error("--steps-per-epoch must be >= 1")
    if args.generation_users < 1:
        parser.error("--generation-users must be >= 1")

    def log(message: str) -> None:
        print(message, flush=True)

    if args.size is not None:
        if args.json_out is None:
            parser.error("--size needs --json-out")
        args.json_out.write_text(json.dumps(measure_size(args.size, args, log)))
        return
    sizes = QUICK_SIZES if args.quick else tuple(int(s) for s in args.sizes.split(",")) if args.sizes else FULL_SIZES
    if list(sizes) != sorted(set(sizes)) or min(sizes) < 100:
        parser.error("--sizes must be increasing user counts >= 100")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        per_size = []
        for users in sizes:
            steps = args.lightgcn_steps if args.lightgcn_steps >= 0 else (4 if users >= 1_000_000 else 0)
            per_size.append(run_size_subprocess(users, args, steps, Path(folder)))
        generation = None if args.skip_generation else measure_generation(args.generation_run, args.generation_users, Path(folder), log)
    result = summarise(per_size, generation)
    result["seconds"] = time.perf_counter() - started
    log(f"epoch time vs training interactions, log-log slope: ours {result['slope_ours']:.2f}, "
        f"lightgcn {result['slope_lightgcn']:.2f}; ours / lightgcn on {sizes[-1]} users {result['epoch_ratio_largest']:.2f}")
    print_result(rounded(result, significant=True), TARGETS, args.check)


if __name__ == "__main__":
    main(sys.argv[1:])
