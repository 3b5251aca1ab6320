"""Generative retrieval on MovieLens with prefquant semantic IDs, against item IDs and popularity.

Items get semantic IDs from their text embeddings (prefquant's SemanticIdMap: a residual
quantizer plus a collision suffix). A small GRU reads a user's history and predicts the
next item's semantic ID code by code; beam search keeps only IDs that belong to an item.
The same GRU with one embedding and one output row per item (an item-ID model), trained
the same way, and most-popular-first are the baselines. The split is temporal: training
interactions are those before a time cutoff; each user's first interactions after it
are predicted from everything before them. Items first seen after the cutoff are cold:
they get IDs from the frozen codebooks (SemanticIdMap.encode) and only the semantic-ID
model can recommend them.

Usage (from the repository root):
    uv run python examples/generative_retrieval/run.py                  # ml-latest-small, MiniLM
    uv run python examples/generative_retrieval/run.py --tiny --data D  # seconds, for tests

Progress goes to stderr; the LAST line of stdout is one JSON object with the figures.

The quantizer side uses prefquant alone. Item features are produced the way pmg's
preference stage produces them (pmg.data.sources.load_movielens for the item texts,
pmg.features.encode_items with the offline all-MiniLM-L6-v2 encoder, cached), so this
script needs the pmg workspace for that one step; pass --features FILE to use your own
[I, d] safetensors tensor "values" instead.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prefquant import ResidualQuantizer, SemanticIdMap, load_safetensors

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = (HERE.parents[1] / ".." / "shared" / "datasets" / "ml-latest-small").resolve()


@dataclass(frozen=True)
class Settings:
    """Everything that sizes a run; ``--tiny`` shrinks it for tests."""

    num_levels: int = 3
    codebook_size: int = 64
    assignment: str = "sinkhorn"
    quantizer_epochs: int = 20
    dim: int = 64
    max_len: int = 50
    epochs: int = 10
    batch_size: int = 64
    lr: float = 2e-3
    split: str = "last"
    test_fraction: float = 0.2
    targets_per_user: int = 5
    beam_width: int = 32
    seed: int = 0


TINY = Settings(codebook_size=8, quantizer_epochs=5, dim=16, max_len=20, epochs=30, lr=1e-2, beam_width=16)


def log(message: str) -> None:
    print(f"[generative-retrieval] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- data
@dataclass
class Interactions:
    """Per-user, time-ordered item indices into the catalog; features [I, d] per item."""

    features: Tensor
    histories: list[list[int]]
    times: list[list[int]]


def load_movielens_with_features(
    data_dir: Path, encoder: str, cache_dir: Path, features: Path | None
) -> Interactions:
    """Item text features and time-ordered histories, read the way pmg's preference stage reads them."""
    # Only this step uses pmg; everything quantizer-side below is prefquant.
    from pmg.data.sources import load_movielens
    from pmg.features import FeatureEncoderSpec, encode_items

    data = load_movielens(data_dir)
    if features is not None:
        values = load_safetensors(features)["values"].float()
        if values.shape[0] != data.num_items:
            raise ValueError(f"{features}: {values.shape[0]} rows, the catalog has {data.num_items} items")
    else:
        values = encode_items(data, FeatureEncoderSpec("textual", encoder), cache_dir).values
    order = sorted(range(len(data.user)), key=lambda i: (int(data.user[i]), int(data.timestamp[i]), i))
    histories: list[list[int]] = [[] for _ in range(data.num_users)]
    times: list[list[int]] = [[] for _ in range(data.num_users)]
    for i in order:
        histories[int(data.user[i])].append(int(data.item[i]))
        times[int(data.user[i])].append(int(data.timestamp[i]))
    return Interactions(values, histories, times)


@dataclass
class Split:
    train: list[list[int]]  # per user, items before the cutoff
    eval_points: list[tuple[list[int], int]]  # (everything the user did before, target item)
    warm: Tensor  # [I] bool: the item occurs in training
    users: int  # users with at least one evaluation point


def temporal_split(data: Interactions, settings: Settings) -> Split:
    """``"last"``: each user's chronologically last interaction is the target, the rest trains.
    ``"global"``: interactions before the (1 - test_fraction) time quantile train; each user's
    first ``targets_per_user`` interactions after it are targets."""
    if settings.split == "last":
        train, points, warm = [], [], torch.zeros(data.features.shape[0], dtype=torch.bool)
        for items in data.histories:
            train.append(items[:-1])
            warm[items[:-1]] = True
            if len(items) >= 3:
                points.append((items[:-1], items[-1]))
        return Split(train, points, warm, len(points))
    every = sorted(t for user in data.times for t in user)
    cutoff = every[min(len(every) - 1, int(len(every) * (1 - settings.test_fraction)))]
    train, points, users = [], [], 0
    warm = torch.zeros(data.features.shape[0], dtype=torch.bool)
    for items, times in zip(data.histories, data.times, strict=True):
        before = [item for item, t in zip(items, times, strict=True) if t < cutoff]
        train.append(before)
        warm[before] = True
        if len(before) < 2:
            continue  # a user new after the cutoff has no history to predict from
        after = len(before)
        users += after < len(items)
        for position in range(after, min(after + settings.targets_per_user, len(items))):
            points.append((items[:position], items[position]))
    return Split(train, points, warm, users)


def windows(sequences: list[list[int]], max_len: int) -> list[list[int]]:
    """Training windows of at most max_len + 1 items (inputs and next-item targets)."""
    out = []
    for sequence in sequences:
        for end in range(len(sequence), 1, -max_len):
            out.append(sequence[max(0, end - max_len - 1) : end])
    return out


def pad_left(sequences: list[list[int]], length: int, fill: int) -> Tensor:
    rows = [([fill] * length + s[-length:])[-length:] for s in sequences]
    return torch.tensor(rows, dtype=torch.long)


# ---------------------------------------------------------------------------- models
class ItemIdModel(nn.Module):
    """GRU over item embeddings, softmax over the warm items (index 0 pads and stands for unknown items)."""

    def __init__(self, num_items: int, dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(num_items + 1, dim, padding_idx=0)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.out = nn.Linear(dim, num_items)

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens [B, T] -> hidden states [B, T, dim]."""
        return self.gru(self.embed(tokens))[0]


class SemanticIdModel(nn.Module):
    """The same GRU over items embedded as the sum of their ID's code embeddings; a code-by-code head.

    Args:
        level_sizes: values per ID position (SemanticIdMap.level_sizes).
        dim: hidden size (equal to the item-ID model's).
    """

    def __init__(self, level_sizes: tuple[int, ...], dim: int) -> None:
        super().__init__()
        self.level_sizes = level_sizes
        self.embed = nn.ModuleList(nn.Embedding(size, dim) for size in level_sizes)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.prefix = nn.ModuleList(nn.Embedding(size, dim) for size in level_sizes[:-1])
        self.norm = nn.LayerNorm(dim)
        self.heads = nn.ModuleList(nn.Linear(dim, size) for size in level_sizes)

    def forward(self, ids: Tensor, present: Tensor) -> Tensor:
        """ids [B, T, L + 1] and present [B, T] bool (False pads) -> hidden states [B, T, dim]."""
        items = sum(table(ids[..., level]) for level, table in enumerate(self.embed))
        return self.gru(items * present.unsqueeze(-1))[0]

    def level_logits(self, hidden: Tensor, prefix: Tensor) -> Tensor:
        """Logits [..., size_l] of code l = prefix.shape[-1] given hidden [..., dim] and the codes before it."""
        state = hidden
        for level in range(prefix.shape[-1]):
            state = state + self.prefix[level](prefix[..., level])
        return self.heads[prefix.shape[-1]](self.norm(state))


def train_model(
    model: nn.Module, batches_of: callable, loss_of: callable, settings: Settings, name: str
) -> list[float]:
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    generator = torch.Generator().manual_seed(settings.seed)
    history = []
    model.train()
    for epoch in range(settings.epochs):
        total, count, started = 0.0, 0, time.perf_counter()
        for batch in batches_of(generator):
            loss = loss_of(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count = total + loss.item(), count + 1
        history.append(total / max(count, 1))
        log(f"{name} epoch {epoch + 1}: loss {history[-1]:.3f} ({time.perf_counter() - started:.1f} s)")
    model.eval()
    return history


# ---------------------------------------------------------------------------- retrieval
def prefix_children(ids: Tensor) -> list[dict[tuple[int, ...], list[int]]]:
    """Per ID position l, prefix (l codes) -> the codes that follow it in some valid ID."""
    tables: list[dict[tuple[int, ...], set[int]]] = [{} for _ in range(ids.shape[1])]
    for row in ids.tolist():
        for level in range(len(row)):
            tables[level].setdefault(tuple(row[:level]), set()).add(row[level])
    return [{key: sorted(values) for key, values in table.items()} for table in tables]


@torch.no_grad()
def beam_search(model: SemanticIdModel, hidden: Tensor, children: list[dict], width: int) -> Tensor:
    """Top ``width`` IDs [B, width, L + 1] for hidden states [B, dim], best first.

    At every position, codes that lead to no item's ID get -inf, so every finite beam
    ends on an ID some item has (beams beyond the valid ones end on no item).
    """
    batch = hidden.shape[0]
    beams = torch.zeros(batch, 1, 0, dtype=torch.long)
    scores = torch.zeros(batch, 1)
    for level, size in enumerate(model.level_sizes):
        logits = model.level_logits(hidden.unsqueeze(1).expand(-1, beams.shape[1], -1), beams)
        logp = F.log_softmax(logits, dim=-1)
        allowed = torch.zeros_like(logp, dtype=torch.bool)
        for b, rows in enumerate(beams.tolist()):
            for k, prefix in enumerate(rows):
                allowed[b, k, children[level].get(tuple(prefix), [])] = True
        total = torch.where(allowed, scores.unsqueeze(-1) + logp, torch.tensor(-math.inf))
        flat = total.reshape(batch, -1)
        # Rows with fewer valid continuations than ``width`` keep -inf beams; they end on no item.
        scores, index = flat.topk(min(width, flat.shape[1]), dim=-1)
        parent, code = index // size, index % size
        beams = torch.cat(
            [beams.gather(1, parent.unsqueeze(-1).expand(-1, -1, level)), code.unsqueeze(-1)], -1
        )
    return beams


def ranking_metrics(ranked: list[list[int]], targets: list[int]) -> tuple[float, float, list[bool]]:
    """Recall@10 and NDCG@10 of one target per list; also the per-point hits."""
    hits, gains = [], []
    for items, target in zip(ranked, targets, strict=True):
        rank = items[:10].index(target) if target in items[:10] else None
        hits.append(rank is not None)
        gains.append(0.0 if rank is None else 1.0 / math.log2(rank + 2))
    n = max(len(targets), 1)
    return sum(hits) / n, sum(gains) / n, hits


def unseen_top(candidates: list[int], seen: set[int], k: int = 10) -> list[int]:
    """The first k candidates the user has not interacted with yet (-1 marks no item)."""
    return [item for item in candidates if item >= 0 and item not in seen][:k]


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="a MovieLens folder (ml-latest-small)"
    )
    parser.add_argument("--text-encoder", default="minilm", choices=("minilm", "words"))
    parser.add_argument(
        "--features", type=Path, help="safetensors with 'values' [I, d] instead of the encoder"
    )
    parser.add_argument("--cache-dir", type=Path, default=HERE / ".cache", help="item-feature cache")
    parser.add_argument("--out", type=Path, help="also save the SemanticIdMap (quantizer + IDs) here")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, seconds (for tests)")
    parser.add_argument(
        "--split",
        choices=("last", "global"),
        default="last",
        help="last: each user's last interaction is the target; global: a time cutoff for everyone",
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    settings = replace(TINY if args.tiny else Settings(), split=args.split)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    log(f"reading {args.data} and its item features ({args.text_encoder})")
    data = load_movielens_with_features(args.data, args.text_encoder, args.cache_dir, args.features)
    split = temporal_split(data, settings)
    features = data.features
    warm_items = split.warm.nonzero().squeeze(-1)
    cold_items = (~split.warm).nonzero().squeeze(-1)
    log(
        f"{features.shape[0]} items ({len(warm_items)} in training), {len(split.eval_points)} evaluation points"
    )

    # Semantic IDs: fit on the items known at the cutoff, then give cold items IDs from frozen codebooks.
    quantizer_seconds = time.perf_counter()
    id_map = SemanticIdMap(
        ResidualQuantizer(
            features.shape[1],
            settings.num_levels,
            settings.codebook_size,
            assignment=settings.assignment,
            dead_code_patience=20,
        )
    )
    id_map.fit(
        features[warm_items], warm_items, epochs=settings.quantizer_epochs, batch_size=512, seed=settings.seed
    )
    warm_quality = id_map.quality()
    id_map.encode(features[cold_items], cold_items)
    all_quality = id_map.quality()
    quantizer_seconds = time.perf_counter() - quantizer_seconds
    nearest = ResidualQuantizer(
        features.shape[1], settings.num_levels, settings.codebook_size, dead_code_patience=20
    )
    nearest_map = SemanticIdMap(nearest)
    nearest_map.fit(
        features[warm_items], warm_items, epochs=settings.quantizer_epochs, batch_size=512, seed=settings.seed
    )
    nearest_quality = nearest_map.quality()
    if args.out is not None:
        id_map.save_pretrained(args.out)
    ids_unique = torch.unique(id_map.ids, dim=0).shape[0] == len(id_map)
    log(
        f"semantic IDs {id_map.level_sizes}: collision rate {warm_quality.collision_rate:.3f} "
        f"({settings.assignment}; nearest-code {nearest_quality.collision_rate:.3f}), "
        f"largest group {warm_quality.largest_collision_group}, {len(cold_items)} cold items added"
    )
    item_ids = id_map.ids_of(torch.arange(features.shape[0]))  # [I, L + 1], row = catalog index

    # Training windows shared by both models.
    train_windows = windows(split.train, settings.max_len)
    dense = torch.full((features.shape[0],), -1, dtype=torch.long)
    dense[warm_items] = torch.arange(len(warm_items))

    def batches_of(generator: torch.Generator):
        order = torch.randperm(len(train_windows), generator=generator).tolist()
        for start in range(0, len(order), settings.batch_size):
            yield [train_windows[i] for i in order[start : start + settings.batch_size]]

    def item_batch(batch: list[list[int]]) -> tuple[Tensor, Tensor]:
        seq = pad_left(batch, settings.max_len + 1, -1)
        return seq[:, :-1], seq[:, 1:]

    def item_loss(model: ItemIdModel, batch: list[list[int]]) -> Tensor:
        inputs, targets = item_batch(batch)
        tokens = torch.where(inputs >= 0, dense[inputs.clamp_min(0)] + 1, 0)
        hidden = model(tokens)
        mask = targets >= 0
        return F.cross_entropy(model.out(hidden[mask]), dense[targets[mask]])

    def semantic_loss(model: SemanticIdModel, batch: list[list[int]]) -> Tensor:
        inputs, targets = item_batch(batch)
        hidden = model(item_ids[inputs.clamp_min(0)], inputs >= 0)
        mask = targets >= 0
        hidden, target_ids = hidden[mask], item_ids[targets[mask]]
        losses = [
            F.cross_entropy(model.level_logits(hidden, target_ids[:, :level]), target_ids[:, level])
            for level in range(target_ids.shape[1])
        ]
        return torch.stack(losses).sum()

    torch.manual_seed(settings.seed)
    semantic = SemanticIdModel(id_map.level_sizes, settings.dim)
    torch.manual_seed(settings.seed)
    item_model = ItemIdModel(len(warm_items), settings.dim)
    train_seconds = time.perf_counter()
    train_model(semantic, batches_of, semantic_loss, settings, "semantic IDs")
    semantic_train_seconds = time.perf_counter() - train_seconds
    train_model(item_model, batches_of, item_loss, settings, "item IDs")
    item_train_seconds = time.perf_counter() - train_seconds - semantic_train_seconds

    # Evaluation: one ranked list of 10 unseen items per evaluation point and method.
    histories = [history for history, _ in split.eval_points]
    targets = [target for _, target in split.eval_points]
    seen = [set(history) for history in histories]
    popularity = torch.bincount(
        torch.tensor([i for s in split.train for i in s]), minlength=features.shape[0]
    )
    popular = torch.argsort(popularity, descending=True, stable=True)[:500].tolist()
    ranked_popular = [unseen_top(popular, s) for s in seen]

    children = prefix_children(id_map.ids)
    ranked_semantic, ranked_items = [], []
    evaluate_seconds = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(histories), 128):
            chunk = histories[start : start + 128]
            seq = pad_left(chunk, settings.max_len, -1)
            hidden = semantic(item_ids[seq.clamp_min(0)], seq >= 0)[:, -1]
            beams = beam_search(semantic, hidden, children, settings.beam_width)
            found = id_map.lookup(beams.reshape(-1, beams.shape[-1]), default=-1).reshape(beams.shape[:2])
            ranked_semantic += [
                unseen_top(row, s) for row, s in zip(found.tolist(), seen[start:], strict=False)
            ]
            tokens = torch.where(seq >= 0, dense[seq.clamp_min(0)] + 1, 0)
            scores = item_model.out(item_model(tokens)[:, -1])
            top = warm_items[scores.topk(min(len(warm_items), 10 + settings.max_len), dim=-1).indices]
            ranked_items += [unseen_top(row, s) for row, s in zip(top.tolist(), seen[start:], strict=False)]
    evaluate_seconds = time.perf_counter() - evaluate_seconds

    report: dict = {}
    cold_target = [not bool(split.warm[t]) for t in targets]
    for name, ranked in (
        ("semantic_ids", ranked_semantic),
        ("item_ids", ranked_items),
        ("popularity", ranked_popular),
    ):
        recall, ndcg, hits = ranking_metrics(ranked, targets)
        report[f"recall10_{name}"] = round(recall, 4)
        report[f"ndcg10_{name}"] = round(ndcg, 4)
        report[f"recall10_{name}_cold_targets"] = round(
            sum(h for h, c in zip(hits, cold_target, strict=True) if c) / max(sum(cold_target), 1), 4
        )
    recommended_cold = sum(not bool(split.warm[i]) for row in ranked_semantic for i in row)
    report.update(
        {
            "collision_rate": warm_quality.collision_rate,
            "collision_rate_nearest_code": nearest_quality.collision_rate,
            "largest_collision_group": warm_quality.largest_collision_group,
            "collision_rate_with_cold_items": all_quality.collision_rate,
            "prefix_collision_rate": list(warm_quality.prefix_collision_rate),
            "code_usage": list(warm_quality.usage),
            "code_perplexity": [round(p, 2) for p in warm_quality.perplexity],
            "id_level_sizes": list(id_map.level_sizes),
            "ids_unique": ids_unique,
            "items": features.shape[0],
            "warm_items": len(warm_items),
            "cold_items": len(cold_items),
            "eval_points": len(targets),
            "eval_users": split.users,
            "cold_targets": sum(cold_target),
            "cold_share_of_semantic_recommendations": round(recommended_cold / max(len(targets) * 10, 1), 4),
            "params_semantic_ids": sum(p.numel() for p in semantic.parameters()),
            "params_item_ids": sum(p.numel() for p in item_model.parameters()),
            "text_encoder": "features file" if args.features else args.text_encoder,
            "feature_dim": features.shape[1],
            "quantizer_s": round(quantizer_seconds, 1),
            "train_s_semantic_ids": round(semantic_train_seconds, 1),
            "train_s_item_ids": round(item_train_seconds, 1),
            "evaluate_s": round(evaluate_seconds, 1),
            "total_s": round(time.perf_counter() - started, 1),
            "threads": torch.get_num_threads(),
            "settings": asdict(settings),
        }
    )
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
