"""Benchmark of prefquant: code usage, reconstruction, taste information in tokens, encode speed.

Usage:
    uv run --frozen python benchmarks/quant.py               # synthetic users with planted tastes
    uv run --frozen python benchmarks/quant.py --run RUN_DIR # users from a pmg run's preference stage
    uv run --frozen python benchmarks/quant.py --check       # then compare with TARGETS, exit 1 on a miss
    uv run --frozen python benchmarks/quant.py --check-file saved.log   # compare a saved output only

Progress goes to stdout; the LAST line is one JSON object. Headline keys (``TARGETS``, what
``--check`` compares, bounds ``usage_min`` and ``encode_speed_ratio_vs_vqpytorch``):

    usage_min               min over modalities and levels of the fraction of codes used by all users
    recon_cos               mean over modalities of mean cos(x, decode(encode(x)))
    nmi_visual_colour       NMI(first-level visual code, colour taste)
    nmi_textual_material    NMI(first-level textual code, material taste)
    nmi_random              the same NMI for visual/colour from a random (untrained) codebook
    homogeneity_visual_colour, homogeneity_random
                            1 - H(colour | code) / H(colour): NMI is capped by the entropy gap between
                            64 codes and 8 colours, homogeneity is not
    nmi_shuffled            chance level: trained visual codes against permuted users
    encode_speed_ratio_vs_vqpytorch
                            our encode (codes only) against vector-quantize-pytorch ResidualVQ's
                            codes-only path (each layer's codebook module chained over the residual,
                            no losses or output sums); same L, K, d, codebooks, data, threads
    eval_forward_speed_ratio_vs_vqpytorch
                            our eval-mode forward against their eval-mode forward (full outputs both)
    train_speed_ratio_vs_vqpytorch
                            training-mode forward (EMA update, dead codes) on batch_size rows, ours
                            against theirs; ratios are their seconds over ours (> 1: we are faster)
    collision_rate_nearest, collision_rate_sinkhorn, recon_rel_mse_nearest, recon_rel_mse_sinkhorn
                            the visual modality quantized with nearest-code and with Sinkhorn-balanced
                            training: items sharing a full code tuple, and relative reconstruction error
    peak_rss_mb, rss_mb_before_baseline (peak before vector-quantize-pytorch runs), quantizer_bytes

The ``--run`` contract: ``DIR/preference/user_preferences.safetensors`` holds tensors
``visual``, ``textual``, ``id`` of shape [U, d] float32, and ``DIR/preference/user_tastes.json``
holds ``{"colour": [int per user], "pattern": [...], "material": [...], "style": [...]}``
(label strings per user are accepted too).
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from pmg.benchmark_targets import Targets, at_least, parse_args_with_check, print_result
from prefquant import (
    ResidualQuantizer,
    code_perplexity,
    code_usage,
    fit_quantizer,
    homogeneity,
    load_safetensors,
    normalized_mutual_information,
    semantic_id_quality,
    tuple_ids,
)

MODALITIES = ("visual", "textual", "id")
TASTES = ("colour", "pattern", "material", "style")
# Which taste each modality is meant to carry, for the headline NMI keys.
HEADLINE_TASTE = {"visual": "colour", "textual": "material"}
# Round 1's goals: the codebooks in use, and encoding no slower than vector-quantize-pytorch (run without it: not measured, so missed).
TARGETS: Targets = {"usage_min": at_least(0.9), "encode_speed_ratio_vs_vqpytorch": at_least(1.0)}


@dataclass(frozen=True)
class BenchConfig:
    num_levels: int = 3
    codebook_size: int = 64
    epochs: int = 15
    batch_size: int = 256
    dead_code_patience: int = 20
    seed: int = 0
    speed_rows: int = 65536
    speed_repeats: int = 5
    compare_vqpytorch: bool = True


def log(message: str) -> None:
    print(f"[quant-bench] {message}", flush=True)


# ---------------------------------------------------------------------------- data sources
def synthetic_users(
    num_users: int = 4096, dim: int = 64, seed: int = 0
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per-modality user embeddings [U, d] with planted tastes, each modality carrying only its own.

    visual = colour centre (norm ~3) + pattern centre (~1.2) + idiosyncratic part (~2.5);
    textual = material centre (~3) + style centre (~1.2) + idiosyncratic part (~2.5);
    id = idiosyncratic part only (collaborative signal unrelated to the planted tastes).

    The idiosyncratic part is isotropic and about as large as the taste signal, so a
    random partition of the space cuts across tastes while a trained codebook should not.
    """
    gen = torch.Generator().manual_seed(seed)
    sizes = {"colour": 8, "pattern": 4, "material": 6, "style": 5}
    tastes = {name: torch.randint(size, (num_users,), generator=gen) for name, size in sizes.items()}

    def centres(count: int, scale: float) -> torch.Tensor:
        return scale * torch.randn(count, dim, generator=gen) / dim**0.5

    visual = centres(8, 3.0)[tastes["colour"]] + centres(4, 1.2)[tastes["pattern"]]
    textual = centres(6, 3.0)[tastes["material"]] + centres(5, 1.2)[tastes["style"]]
    embeddings = {
        "visual": visual + 2.5 * torch.randn(num_users, dim, generator=gen) / dim**0.5,
        "textual": textual + 2.5 * torch.randn(num_users, dim, generator=gen) / dim**0.5,
        "id": torch.randn(num_users, dim, generator=gen) / dim**0.5,
    }
    return embeddings, tastes


def read_run(run_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Read the preference stage's user embeddings and ground-truth tastes from a pmg run directory."""
    folder = Path(run_dir) / "preference"
    weights, tastes_path = folder / "user_preferences.safetensors", folder / "user_tastes.json"
    tensors = load_safetensors(weights)
    missing = [m for m in MODALITIES if m not in tensors]
    if missing:
        raise ValueError(f"{weights}: missing tensors {missing} (has {sorted(tensors)})")
    embeddings = {m: tensors[m] for m in MODALITIES}
    num_users = embeddings["visual"].shape[0]
    for name, tensor in embeddings.items():
        if tensor.dim() != 2 or tensor.shape[0] != num_users or not tensor.is_floating_point():
            raise ValueError(
                f"{weights}: {name!r} must be float [U={num_users}, d], got {tensor.dtype} {list(tensor.shape)}"
            )
        embeddings[name] = tensor.float()
    try:
        raw = json.loads(tastes_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{tastes_path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{tastes_path}: not valid JSON ({exc})") from None
    tastes: dict[str, torch.Tensor] = {}
    for name in TASTES:
        values = raw.get(name)
        if not isinstance(values, list) or len(values) != num_users:
            raise ValueError(f"{tastes_path}: {name!r} must be a list of {num_users} ints (or label strings)")
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            tastes[name] = torch.tensor(values, dtype=torch.long)
        elif all(isinstance(v, str) for v in values):
            # pmg's dataset format names tastes ("red"); NMI only needs equal labels to get equal ids.
            vocabulary = {label: index for index, label in enumerate(sorted(set(values)))}
            tastes[name] = torch.tensor([vocabulary[v] for v in values], dtype=torch.long)
        else:
            raise ValueError(f"{tastes_path}: {name!r} must be a list of {num_users} ints (or label strings)")
    return embeddings, tastes


# ---------------------------------------------------------------------------- measurements
def _nmi_block(codes: torch.Tensor, tastes: dict[str, torch.Tensor]) -> dict[str, float]:
    first, full = codes[:, 0], tuple_ids(codes)
    out: dict[str, float] = {}
    for name, labels in tastes.items():
        out[f"nmi_{name}"] = round(normalized_mutual_information(first, labels), 4)
        out[f"nmi_{name}_tuple"] = round(normalized_mutual_information(full, labels), 4)
        out[f"homogeneity_{name}"] = round(homogeneity(first, labels), 4)
    return out


def _random_codebook_codes(x: torch.Tensor, config: BenchConfig, seed: int) -> torch.Tensor:
    """First-level codes from an untrained codebook drawn to match the data's mean and spread."""
    gen = torch.Generator().manual_seed(seed)
    book = x.mean(0) + x.std(0) * torch.randn(config.codebook_size, x.shape[1], generator=gen)
    return torch.cdist(x, book).argmin(dim=1).unsqueeze(1)


def _time(fns: list, repeats: int) -> list[float]:
    """Median seconds per call of each function, calls interleaved so that load drift hits all alike."""
    for fn in fns:
        fn()  # warm-up
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return [statistics.median(bucket) for bucket in times]


def _speed(rq: ResidualQuantizer, x: torch.Tensor, config: BenchConfig) -> dict[str, float | None]:
    """Rows per second of ours and of vector-quantize-pytorch's ResidualVQ, like for like.

    * encode: our ``encode`` (codes only) against their codes-only path: each layer's own
      codebook module in eval mode (their distance, argmax and code lookup), chained over
      the residual, without the ResidualVQ wrapper's losses and output sums. Both use the
      same codebooks, so the codes must agree.
    * eval forward: our eval-mode ``forward`` against their eval-mode ``forward`` (codes,
      quantized vectors and losses on both sides).
    * train forward: a training-mode forward on ``batch_size`` rows (EMA update, dead-code
      bookkeeping) on both sides, on copies so the measured quantizer stays as trained.
    """
    gen = torch.Generator().manual_seed(config.seed + 7)
    rows = x[torch.randint(x.shape[0], (config.speed_rows,), generator=gen)]
    rows = rows + 0.01 * rows.std() * torch.randn(rows.shape, generator=gen)
    train_batches = list(rows[: config.batch_size * 8].split(config.batch_size))
    ours_train = copy.deepcopy(rq).train()

    def ours() -> torch.Tensor:
        return rq.encode(rows)

    def ours_forward() -> torch.Tensor:
        with torch.no_grad():
            return rq(rows).codes

    def ours_training() -> None:
        for batch in train_batches:
            ours_train(batch)

    result: dict[str, float | None] = {
        "encode_rows_per_s": None,
        "vqpytorch_encode_rows_per_s": None,
        "encode_speed_ratio_vs_vqpytorch": None,
        "eval_forward_speed_ratio_vs_vqpytorch": None,
        "train_rows_per_s": None,
        "vqpytorch_train_rows_per_s": None,
        "train_speed_ratio_vs_vqpytorch": None,
        "codes_agree_with_vqpytorch": None,
    }
    train_rows = sum(batch.shape[0] for batch in train_batches)
    try:
        if not config.compare_vqpytorch:
            raise ImportError
        from vector_quantize_pytorch import ResidualVQ
    except ImportError:
        if config.compare_vqpytorch:
            log("vector-quantize-pytorch not installed: skipping the speed comparison")
        encode_s, train_s = _time([ours, ours_training], config.speed_repeats)
        result["encode_rows_per_s"] = round(config.speed_rows / encode_s)
        result["train_rows_per_s"] = round(train_rows / train_s)
        return result
    baseline = ResidualVQ(
        dim=x.shape[1],
        num_quantizers=rq.num_levels,
        codebook_size=rq.codebook_size,
        kmeans_init=True,
        decay=0.99,
        threshold_ema_dead_code=2,
    )
    baseline.train()
    torch.manual_seed(config.seed)
    for batch in x[torch.randperm(x.shape[0])].split(config.batch_size):
        baseline(batch.unsqueeze(0))
    baseline_train = copy.deepcopy(baseline).train()
    baseline.eval()
    # Same codebooks in both: their codes must then equal ours, so the timing compares equal work.
    with torch.no_grad():
        for layer, book in zip(baseline.layers, rq.codebooks, strict=True):
            layer._codebook.embed.copy_(book.unsqueeze(0))
    batch = rows.unsqueeze(0)

    def theirs() -> torch.Tensor:
        with torch.no_grad():
            residual, codes = batch, []
            for layer in baseline.layers:
                quantize, indices, _ = layer._codebook(residual)  # [1, N, d], [1, N]
                codes.append(indices[0])
                residual = residual - quantize
            return torch.stack(codes, dim=-1)

    def theirs_forward() -> torch.Tensor:
        with torch.no_grad():
            return baseline(batch)[1]

    def theirs_training() -> None:
        for train_batch in train_batches:
            baseline_train(train_batch.unsqueeze(0))

    agree = (theirs() == ours()).all(dim=1).float().mean()
    agree_forward = (theirs_forward()[0] == ours()).all(dim=1).float().mean()
    ours_s, their_s, ours_fwd_s, their_fwd_s, ours_train_s, their_train_s = _time(
        [ours, theirs, ours_forward, theirs_forward, ours_training, theirs_training], config.speed_repeats
    )
    result["encode_rows_per_s"] = round(config.speed_rows / ours_s)
    result["vqpytorch_encode_rows_per_s"] = round(config.speed_rows / their_s)
    result["encode_speed_ratio_vs_vqpytorch"] = round(their_s / ours_s, 3)
    result["eval_forward_speed_ratio_vs_vqpytorch"] = round(their_fwd_s / ours_fwd_s, 3)
    result["train_rows_per_s"] = round(train_rows / ours_train_s)
    result["vqpytorch_train_rows_per_s"] = round(train_rows / their_train_s)
    result["train_speed_ratio_vs_vqpytorch"] = round(their_train_s / ours_train_s, 3)
    result["codes_agree_with_vqpytorch"] = round(float(min(agree, agree_forward)), 4)
    return result


def balanced_assignment_report(x: torch.Tensor, config: BenchConfig) -> dict[str, float | int]:
    """Nearest-code against Sinkhorn-balanced training on the same rows [N, d], same seed and size.

    Reports, for each, the semantic-ID quality of the trained codes (full-tuple collision
    rate, largest collision group, smallest per-level perplexity) and the reconstruction
    error relative to the data's variance; encode is nearest-code in both.
    """
    out: dict[str, float | int] = {}
    for mode in ("nearest", "sinkhorn"):
        rq = ResidualQuantizer(
            x.shape[1],
            config.num_levels,
            config.codebook_size,
            dead_code_patience=config.dead_code_patience,
            assignment=mode,
        )
        fit_quantizer(rq, x, epochs=config.epochs, batch_size=config.batch_size, seed=config.seed)
        codes = rq.encode(x)
        quality = semantic_id_quality(codes, config.codebook_size)
        out[f"collision_rate_{mode}"] = round(quality.collision_rate, 4)
        out[f"largest_collision_group_{mode}"] = quality.largest_collision_group
        out[f"perplexity_min_{mode}"] = round(min(quality.perplexity), 2)
        out[f"recon_rel_mse_{mode}"] = round(
            float(((rq.decode(codes) - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()), 4
        )
    return out


def quantizer_report(
    embeddings: dict[str, torch.Tensor],
    tastes: dict[str, torch.Tensor] | None,
    config: BenchConfig,
) -> dict:
    """Train one ResidualQuantizer per modality on all users and measure it.

    Args:
        embeddings: modality -> user embeddings [U, d] (float).
        tastes: taste name -> ground-truth label per user [U] (long), or None if unknown.
        config: quantizer size and training/timing settings.

    Returns:
        A JSON-serialisable dict: headline keys (see module docstring) plus ``modalities``
        with per-modality usage, perplexity, reconstruction and NMI/homogeneity per taste.
    """
    report: dict = {"config": asdict(config), "modalities": {}}
    quantizers: dict[str, ResidualQuantizer] = {}
    for index, (modality, x) in enumerate(embeddings.items()):
        started = time.perf_counter()
        rq = ResidualQuantizer(
            x.shape[1],
            config.num_levels,
            config.codebook_size,
            dead_code_patience=config.dead_code_patience,
        )
        history = fit_quantizer(
            rq, x, epochs=config.epochs, batch_size=config.batch_size, seed=config.seed + index
        )
        codes = rq.encode(x)
        recon = rq.decode(codes)
        entry = {
            "users": x.shape[0],
            "dim": x.shape[1],
            "usage": [round(v, 4) for v in code_usage(codes, config.codebook_size).tolist()],
            "perplexity": [round(v, 2) for v in code_perplexity(codes, config.codebook_size).tolist()],
            "recon_cos": round(float(F.cosine_similarity(recon, x, dim=-1).mean()), 4),
            "recon_rel_mse": round(float(((recon - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()), 4),
            "distinct_tuples": int(torch.unique(codes, dim=0).shape[0]),
            "restarted_codes": int(sum(h["restarted"] for h in history)),
            "train_s": round(time.perf_counter() - started, 2),
        }
        if tastes is not None:
            entry.update(_nmi_block(codes, tastes))
        report["modalities"][modality] = entry
        quantizers[modality] = rq
        log(
            f"{modality}: usage {entry['usage']} recon_cos {entry['recon_cos']} "
            f"perplexity {entry['perplexity']} ({entry['train_s']} s)"
        )

    per_modality = report["modalities"].values()
    report["usage_min"] = min(min(e["usage"]) for e in per_modality)
    report["recon_cos"] = round(statistics.mean(e["recon_cos"] for e in per_modality), 4)
    if tastes is not None:
        for modality, taste in HEADLINE_TASTE.items():
            if modality in report["modalities"]:
                report[f"nmi_{modality}_{taste}"] = report["modalities"][modality][f"nmi_{taste}"]
        # Leakage check: tokens of one modality should not know the other modality's taste.
        if "visual" in embeddings:
            report["nmi_visual_material"] = report["modalities"]["visual"]["nmi_material"]
            visual = embeddings["visual"]
            random_codes = _random_codebook_codes(visual, config, config.seed)[:, 0]
            report["nmi_random"] = round(normalized_mutual_information(random_codes, tastes["colour"]), 4)
            report["homogeneity_visual_colour"] = report["modalities"]["visual"]["homogeneity_colour"]
            report["homogeneity_random"] = round(homogeneity(random_codes, tastes["colour"]), 4)
            gen = torch.Generator().manual_seed(config.seed + 1)
            shuffled = quantizers["visual"].encode(visual)[torch.randperm(visual.shape[0], generator=gen), 0]
            report["nmi_shuffled"] = round(normalized_mutual_information(shuffled, tastes["colour"]), 4)
        if "textual" in embeddings:
            report["nmi_textual_colour"] = report["modalities"]["textual"]["nmi_colour"]

    speed_modality = "visual" if "visual" in embeddings else next(iter(embeddings))
    log(f"nearest-code against Sinkhorn-balanced training on {speed_modality}")
    report.update(balanced_assignment_report(embeddings[speed_modality], config))
    log(f"timing encode on {config.speed_rows} rows ({speed_modality}), {torch.get_num_threads()} thread(s)")
    report["rss_mb_before_baseline"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    report.update(_speed(quantizers[speed_modality], embeddings[speed_modality], config))
    report["quantizer_bytes"] = sum(
        t.numel() * t.element_size() for t in quantizers[speed_modality].state_dict().values()
    )
    # ru_maxrss is KiB on Linux.
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    report["threads"] = torch.get_num_threads()
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run", type=Path, help="pmg run directory with preference/user_preferences.safetensors"
    )
    parser.add_argument("--levels", type=int, default=BenchConfig.num_levels)
    parser.add_argument("--codebook-size", type=int, default=BenchConfig.codebook_size)
    parser.add_argument("--epochs", type=int, default=BenchConfig.epochs)
    parser.add_argument("--users", type=int, default=4096, help="synthetic users (ignored with --run)")
    parser.add_argument("--dim", type=int, default=64, help="synthetic embedding size (ignored with --run)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for both implementations (default 1: stable timings)",
    )
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip the vector-quantize-pytorch comparison"
    )
    args = parse_args_with_check(parser, TARGETS, argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = BenchConfig(
        num_levels=args.levels,
        codebook_size=args.codebook_size,
        epochs=args.epochs,
        compare_vqpytorch=not args.no_baseline,
    )
    if args.run is not None:
        log(f"reading users from {args.run}")
        embeddings, tastes = read_run(args.run)
        source = str(args.run)
    else:
        log(
            f"synthetic users: {args.users} x {args.dim}, planted colour/pattern (visual), material/style (textual)"
        )
        embeddings, tastes = synthetic_users(args.users, args.dim)
        source = "synthetic"
    report = quantizer_report(embeddings, tastes, config)
    report["source"] = source
    print_result(report, TARGETS, args.check)


if __name__ == "__main__":
    main(sys.argv[1:])
