"""Benchmark of the preference stage: ranking quality against popularity and PyG's LightGCN,
modal specificity of the learned preferences, training speed and memory.

Usage:
    uv run --frozen python benchmarks/preference.py            # catalog + ml-latest-small, 3 seeds each
    uv run --frozen python benchmarks/preference.py --seeds 5  # more seeds, a narrower interval
    uv run --frozen python benchmarks/preference.py --quick    # a small catalog only, for a smoke check
    uv run --frozen python benchmarks/preference.py --datasets catalog --check   # then compare with TARGETS, exit 1 on a miss
    uv run --frozen python benchmarks/preference.py --check-file saved.log       # compare a saved output only

Both datasets run side by side with one protocol:

- split: the catalog's default pipeline split (leave-last-out per user); ml-latest-small 5/5-core, then a
  per-user 8:1:1 temporal split (``configs/movielens.yaml``);
- "ours": the stage's own code path, ``pmg.preference.stage.train_preferences`` with the config each
  dataset's pipeline uses: ``configs/preference.yaml`` for the catalog, the ``preference`` section of
  ``configs/movielens.yaml`` for ml-latest-small (no posters: id + textual modalities only);
- LightGCN: ``torch_geometric.nn.models.LightGCN`` given its own best shot
  (``pmg.preference.baselines.LightGCNConfig``, what ``pmg evaluate`` trains too): the stage's embedding size,
  batches (``BPRDataModule``) and optimizer, the paper's 3 layers, its own budget (up to 400 epochs, early
  stopping after 20 without a better validation NDCG@20, best epoch kept) and its learning rate x L2 weight
  from the full grid (lr 1e-3, 5e-3, 1e-2 x L2 1e-4, 1e-3; ``pmg evaluate`` searches the learning rate only),
  chosen on the validation split with the first seed; the test rows are never read while choosing;
- popularity: items ranked by training degree;
- test metrics for all three: every item outside the user's train + validation history is ranked,
  embeddings propagate over the training graph.

Seeds (``--seeds``, default 3): ours and LightGCN (at the chosen grid point) are trained once per seed
(``trainer.seed`` + 0, 1, ...) on the same split; the keys without a suffix are the first seed's run (the
config's own seed, like earlier versions of this benchmark). ``<dataset>_margin_recall20_vs_lightgcn`` and
``_ndcg20_`` are the mean over seeds of ours - LightGCN, ``..._ci`` its 95% Student-t interval over the
per-seed differences (paired by seed; mean +- t(0.975, n-1) * sd / sqrt(n)).
``<dataset>_lightgcn_grid`` lists every grid point's validation result (``best_epoch`` 0-based, as
``<dataset>_lightgcn_best_epoch``), ``<dataset>_lightgcn_lr`` / ``_l2_weight`` the chosen point.

Modal specificity (catalog): a multinomial logistic-regression probe per (modality, taste), trained on
70% of users' saved preference vectors, accuracy on the other 30%.

Speed: seconds per training epoch (full-graph propagation + BPR step per batch, same batches) divided
by the training interactions in millions, ours over LightGCN's (``epoch_time_ratio_vs_lightgcn``, lower
is faster); LightGCN as compared above (3 layers, propagating over a sparse CSR adjacency, PyG's fast
path), so the ratio is not comparable with versions before that change. Memory: parameter megabytes of
both, and the process's peak RSS.

Targets: ``TARGETS`` (what ``--check`` compares): ours above LightGCN on the catalog, by the mean
margin over seeds of Recall@20 and NDCG@20. ml-latest-small is reported, not checked: its data is
not in the repository.

Progress goes to stdout; the LAST line is one JSON object (numbers, and a few lists: seeds, intervals, the grid).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch_geometric.nn.models import LightGCN

from pmg.benchmark_targets import Targets, at_least, parse_args_with_check, print_result, rounded
from pmg.config import load_config
from pmg.data import CatalogConfig, read_dataset, write_catalog
from pmg.data.format import InteractionData
from pmg.data.modules import BPRDataModule
from pmg.data.sources import load_movielens
from pmg.data.split import Split, kcore, temporal_split
from pmg.evaluate.probes import linear_probe_hits
from pmg.pipeline import PipelineConfig
from pmg.preference.baselines import (
    LightGCNConfig,
    LightGCNFit,
    fit_lightgcn,
    held_out_ranking,
    lightgcn_adjacency,
    lightgcn_bpr_loss,
    tune_lightgcn,
)
from pmg.preference.module import PreferenceModule
from pmg.preference.stage import (
    ZOO_ENCODER,
    PreferenceConfig,
    build_model,
    item_features,
    resolve_zoo_encoders,
    train_preferences,
)
from pmg.runs import RunDirectory, RunError
from pmg.training import build_optimizer
from prefgraph import InteractionGraph, popularity_scorer

REPO = Path(__file__).resolve().parents[1]
ML_LATEST_SMALL = REPO.parent / "shared" / "datasets" / "ml-latest-small"
PREFERENCE_YAML = REPO / "configs" / "preference.yaml"
MOVIELENS_YAML = REPO / "configs" / "movielens.yaml"
CACHE = REPO / ".cache" / "pmg" / "bench"
PROBE_TASTES = ("colour", "pattern", "material", "style")
TARGETS: Targets = {"catalog_margin_recall20_vs_lightgcn": at_least(0.0), "catalog_margin_ndcg20_vs_lightgcn": at_least(0.0)}
# Student-t 0.975 quantiles by degrees of freedom (1..30), for the 95% interval over seeds.
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


@dataclass
class Prepared:
    name: str
    data: InteractionData
    split: Split

    def pairs(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.data.user[rows]), torch.from_numpy(self.data.item[rows])

    def graph(self, rows: np.ndarray) -> InteractionGraph:
        return InteractionGraph(*self.pairs(rows), self.data.num_users, self.data.num_items)


def catalog_dataset(config: CatalogConfig) -> Prepared:
    """The seeded catalog (cached under .cache/pmg/bench), leave-last-out like the default pipeline."""
    folder = CACHE / f"catalog-{config.seed}-{config.num_users}-{config.num_items}-{config.interactions_per_user}"
    if not folder.is_dir():  # write_catalog writes atomically, so a folder is complete
        write_catalog(folder, config)
    data = read_dataset(folder)
    return Prepared("catalog", data, temporal_split(data, "leave_last_out"))


def movielens_dataset() -> Prepared:
    data = kcore(load_movielens(ML_LATEST_SMALL), 5, 5)
    return Prepared("ml", data, temporal_split(data, "ratio", val_fraction=0.1, test_fraction=0.1))


# ---------------------------------------------------------------------------------------- baselines
def test_metrics(scorer, prep: Prepared, ks: list[int]) -> dict[str, float]:
    """Test Recall/NDCG, the same protocol as the stage: train + validation items masked."""
    return held_out_ranking(scorer, prep.data, prep.split, ks)


# ---------------------------------------------------------------------------------------- intervals
def t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% Student-t interval ``(mean, low, high)`` of ``values`` [n] (n >= 2; n = 1 gives
    ``(v, v, v)``: no spread to estimate)."""
    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, mean, mean
    df = len(x) - 1
    if df <= len(T975):
        t = T975[df - 1]
    else:  # Cornish-Fisher expansion around the normal quantile: within 1e-3 of t for df > 30
        z = 1.959964
        t = z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
    half = t * float(x.std(ddof=1)) / np.sqrt(len(x))
    return mean, mean - half, mean + half


# ---------------------------------------------------------------------------------------- speed
def epoch_seconds(config: PreferenceConfig, lightgcn_config: LightGCNConfig, prep: Prepared,
                  repeats: int = 2) -> dict[str, float]:
    """Seconds per training epoch, ours (PreferenceModule's model: forward + loss_terms) and PyG LightGCN
    (``lightgcn_config``'s size and layers over the CSR adjacency it trains on), over the same batches;
    the best of ``repeats`` epochs each, since the machine is shared."""
    torch.manual_seed(0)
    features, masks = item_features(config, prep.data)
    graph = InteractionGraph(*prep.pairs(prep.split.train), prep.data.num_users, prep.data.num_items, features, masks)
    model = build_model(config.model, prep.data.num_users, prep.data.num_items, {m: v.shape[1] for m, v in features.items()})
    datamodule = BPRDataModule(prep.data, prep.split, batch_size=config.batch_size, num_negatives=config.num_negatives)
    module = PreferenceModule(graph, model, config.optimizer, datamodule.val_targets, config.ks)
    batches = list(datamodule.train_dataloader())
    ours_opt = build_optimizer(module.model.parameters(), config.optimizer)
    dim = config.model.embedding_dim if lightgcn_config.embedding_dim == -1 else lightgcn_config.embedding_dim
    lightgcn = LightGCN(graph.num_nodes, dim, lightgcn_config.num_layers)
    lightgcn_opt = build_optimizer(lightgcn.parameters(), config.optimizer)
    adjacency = lightgcn_adjacency(graph)
    offset = graph.num_users

    def ours_epoch() -> None:
        module.model.train()
        for batch in batches:
            emb = module.model(module.graph)
            loss = module.model.loss_terms(emb, batch["users"], batch["positives"], batch["negatives"]).total
            ours_opt.zero_grad()
            loss.backward()
            ours_opt.step()

    def lightgcn_epoch() -> None:
        for batch in batches:
            loss = lightgcn_bpr_loss(lightgcn, adjacency, batch, offset, config.model.l2_weight)
            lightgcn_opt.zero_grad()
            loss.backward()
            lightgcn_opt.step()

    times = {}
    for name, run in (("ours", ours_epoch), ("lightgcn", lightgcn_epoch)):
        run()  # warm-up (adjacency cache, allocator)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - start)
        times[name] = best
    millions = len(prep.split.train) / 1e6
    return {
        "ours_epoch_s_per_m": times["ours"] / millions,
        "lightgcn_epoch_s_per_m": times["lightgcn"] / millions,
        "ours_param_mb": sum(p.numel() * p.element_size() for p in module.model.parameters()) / 2**20,
        "lightgcn_param_mb": sum(p.numel() * p.element_size() for p in lightgcn.parameters()) / 2**20,
    }


# ---------------------------------------------------------------------------------------- probes
def probes(preferences: dict[str, torch.Tensor], data: InteractionData, seed: int = 0) -> dict[str, float]:
    generator = torch.Generator().manual_seed(seed)
    train = torch.rand(data.num_users, generator=generator) < 0.7
    out = {}
    for modality in ("visual", "textual", "id"):
        if modality not in preferences:
            continue
        for taste in PROBE_TASTES:
            labels = torch.from_numpy(data.taste_labels(taste))
            out[f"probe_{modality}_on_{taste}"] = float(linear_probe_hits(preferences[modality], labels, train, ~train).float().mean())
    for taste in PROBE_TASTES:
        labels = torch.from_numpy(data.taste_labels(taste))
        out[f"probe_majority_{taste}"] = float((labels[~train] == torch.mode(labels[train]).values).float().mean())
    return out


# ---------------------------------------------------------------------------------------- main
def run_dataset(config: PreferenceConfig, lightgcn_config: LightGCNConfig, prep: Prepared, log, seeds: list[int],
                keep: Path | None = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Ours, LightGCN and popularity on ``prep``, ours and LightGCN once per seed in ``seeds``;
    ``keep``: a folder that receives our stage artifacts (the first seed's). Returns the result keys
    and the first seed's user preferences (per modality, [U, d])."""
    k = max(config.ks)
    log(f"[{prep.name}] {prep.data.num_users} users, {prep.data.num_items} items; train {len(prep.split.train)}, "
        f"val {len(prep.split.val)}, test {len(prep.split.test)}; seeds {seeds}")
    ours_runs, lightgcn_runs = [], []
    preferences: dict[str, torch.Tensor] = {}
    tuning = None
    for index, seed in enumerate(seeds):
        seeded = replace(config, trainer=replace(config.trainer, seed=seed))
        start = time.perf_counter()
        folder = keep if index == 0 else None
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as scratch:
            artifacts = train_preferences(seeded, prep.data, prep.split, folder or Path(scratch))
        ours_s = time.perf_counter() - start
        m = artifacts.metrics
        log(f"  seed {seed} ours: best val ndcg@{k} {m['best_val_score']:.4f}; test recall@{k} {m[f'test/recall@{k}']:.4f} "
            f"ndcg@{k} {m[f'test/ndcg@{k}']:.4f} ({int(m['epochs'])} epochs, {ours_s:.0f}s, "
            f"modalities {sorted(artifacts.user_preferences)})")
        ours_runs.append({**m, "seconds": ours_s})
        if index == 0:
            preferences = artifacts.user_preferences
            # The grid is searched once, on validation with the first seed; later seeds retrain the
            # chosen point, as ours keeps its one config across seeds.
            tuning = tune_lightgcn(lightgcn_config, seeded, prep.data, prep.split, seed=seed, log=log)
            fit: LightGCNFit = tuning.best
            log(f"  seed {seed} lightgcn: {tuning.describe()}")
        else:
            assert tuning is not None
            fit = fit_lightgcn(lightgcn_config, seeded, prep.data, prep.split, lr=tuning.best.lr,
                               l2_weight=tuning.best.l2_weight, seed=seed, log=log)
        lightgcn_m = test_metrics(fit.scorer(prep.data, prep.split), prep, config.ks)
        log(f"  seed {seed} lightgcn: test recall@{k} {lightgcn_m[f'recall@{k}']:.4f} ndcg@{k} {lightgcn_m[f'ndcg@{k}']:.4f} "
            f"(best epoch {fit.best_epoch + 1} of {fit.epochs}, {fit.seconds:.0f}s)")
        lightgcn_runs.append({**lightgcn_m, "best_epoch": fit.best_epoch, "epochs": fit.epochs})
    assert tuning is not None
    pop = test_metrics(popularity_scorer(prep.graph(prep.split.train)), prep, config.ks)
    log(f"  popularity: recall@{k} {pop[f'recall@{k}']:.4f} ndcg@{k} {pop[f'ndcg@{k}']:.4f}")
    first, first_lightgcn = ours_runs[0], lightgcn_runs[0]
    result: dict[str, Any] = {
        f"{prep.name}_seeds": seeds,
        f"{prep.name}_recall{k}": first[f"test/recall@{k}"],
        f"{prep.name}_ndcg{k}": first[f"test/ndcg@{k}"],
        f"{prep.name}_lightgcn_recall{k}": first_lightgcn[f"recall@{k}"],
        f"{prep.name}_lightgcn_ndcg{k}": first_lightgcn[f"ndcg@{k}"],
        f"{prep.name}_pop_recall{k}": pop[f"recall@{k}"],
        f"{prep.name}_pop_ndcg{k}": pop[f"ndcg@{k}"],
        f"{prep.name}_val_ndcg{k}": first["best_val_score"],
        f"{prep.name}_epochs": first["epochs"],
        f"{prep.name}_lightgcn_best_epoch": float(first_lightgcn["best_epoch"]),  # 0-based, as before
        f"{prep.name}_lightgcn_epochs": float(first_lightgcn["epochs"]),
        f"{prep.name}_train_seconds": first["seconds"],
        f"{prep.name}_lightgcn_lr": tuning.best.lr,
        f"{prep.name}_lightgcn_l2_weight": tuning.best.l2_weight,
        f"{prep.name}_lightgcn_grid": [asdict(point) for point in tuning.grid],
        f"{prep.name}_lightgcn_grid_seconds": sum(point.seconds for point in tuning.grid),
    }
    for metric in ("recall", "ndcg"):
        ours = [run[f"test/{metric}@{k}"] for run in ours_runs]
        theirs = [run[f"{metric}@{k}"] for run in lightgcn_runs]
        mean, low, high = t_interval([a - b for a, b in zip(ours, theirs, strict=True)])
        result[f"{prep.name}_{metric}{k}_seeds"] = ours
        result[f"{prep.name}_lightgcn_{metric}{k}_seeds"] = theirs
        result[f"{prep.name}_{metric}{k}_mean"] = float(np.mean(ours))
        result[f"{prep.name}_lightgcn_{metric}{k}_mean"] = float(np.mean(theirs))
        result[f"{prep.name}_margin_{metric}{k}_vs_lightgcn"] = mean
        result[f"{prep.name}_margin_{metric}{k}_ci"] = [low, high]
        log(f"  margin ours - lightgcn, {metric}@{k}: {mean:+.4f} (95% t-interval over {len(seeds)} seeds "
            f"[{low:+.4f}, {high:+.4f}])")
    return result, preferences


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small catalog only (smoke check)")
    parser.add_argument("--config", type=Path, default=PREFERENCE_YAML if PREFERENCE_YAML.is_file() else None,
                        help="the preference stage's YAML (default configs/preference.yaml)")
    parser.add_argument("--ml-config", type=Path, default=MOVIELENS_YAML,
                        help="the MovieLens pipeline YAML whose preference section ml-latest-small uses "
                             "(default configs/movielens.yaml)")
    parser.add_argument("--datasets", default="catalog,ml", help="comma-separated subset of catalog,ml")
    parser.add_argument("--seeds", type=int, default=3,
                        help="seeds per dataset for ours and LightGCN (the interval over seeds needs >= 2; default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for every model (the stage's default is 1)")
    parser.add_argument("--zoo-run", type=Path, default=REPO / "runs" / "default",
                        help="a run whose zoo stage has completed on the default catalog: its CLIP serves a 'zoo' feature "
                             "encoder (default runs/default, what `uv run pmg pipeline` writes)")
    parser.add_argument("--keep", type=Path, help="write the catalog's preference artifacts to KEEP/preference "
                        "(then `benchmarks/quant.py --run KEEP` measures the quantizer on them)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="preference config overrides")
    args = parse_args_with_check(parser, TARGETS, argv)
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    # One thread count for ours and the baselines, so speeds compare (the stage sets its own from config).
    torch.set_num_threads(args.threads)
    datasets = set(args.datasets.split(","))

    def log(message: str) -> None:
        print(message, flush=True)

    common = [*args.overrides, "trainer.enable_progress_bar=false", f"num_threads={args.threads}"]
    config = load_config(PreferenceConfig, args.config, common)
    if ZOO_ENCODER in (config.features.visual, config.features.textual):
        if args.quick:
            raise SystemExit("--quick uses a smaller catalog than the zoo was trained on: add features.visual=pixels")
        try:
            if not (args.zoo_run / "run.json").is_file():
                raise RunError(f"{args.zoo_run} is not a run directory")
            config = resolve_zoo_encoders(config, RunDirectory(args.zoo_run))
        except RunError as err:
            raise SystemExit(f"a 'zoo' feature encoder needs the default pipeline's zoo ({err}); run "
                             "`uv run pmg pipeline` first, pass --zoo-run DIR, or override features.visual=pixels") from err
        log(f"zoo encoders: visual {config.features.visual!r}, textual {config.features.textual!r}")
    # The full lr x L2 grid here (pmg evaluate searches the learning rate only, to keep the pipeline's time).
    lightgcn_config = LightGCNConfig()
    seeds = [config.trainer.seed + i for i in range(args.seeds)]
    started = time.perf_counter()
    result: dict[str, Any] = {"seeds": args.seeds}
    if "catalog" in datasets:
        catalog = catalog_dataset(CatalogConfig(num_users=200, num_items=400, interactions_per_user=20) if args.quick else CatalogConfig())
        metrics, preferences = run_dataset(config, lightgcn_config, catalog, log, seeds,
                                           args.keep / "preference" if args.keep else None)
        result.update(metrics)
        probe = probes(preferences, catalog.data)
        result.update(probe)
        log("  probes (held-out users' accuracy): " + ", ".join(f"{k[6:]} {v:.2f}" for k, v in probe.items()))
        speed = epoch_seconds(config, lightgcn_config, catalog)
        result["epoch_time_ratio_vs_lightgcn"] = speed["ours_epoch_s_per_m"] / speed["lightgcn_epoch_s_per_m"]
        result.update({f"catalog_{k}": v for k, v in speed.items()})
        log(f"  epoch time per million interactions: ours {speed['ours_epoch_s_per_m']:.1f}s, "
            f"lightgcn {speed['lightgcn_epoch_s_per_m']:.1f}s; params ours {speed['ours_param_mb']:.2f} MB, "
            f"lightgcn {speed['lightgcn_param_mb']:.2f} MB")
    if "ml" in datasets and not args.quick:
        # Each dataset with the preference settings its pipeline config gives (the same overrides on top).
        ml_config = load_config(PipelineConfig, args.ml_config, [f"preference.{o}" for o in common]).preference
        ml_seeds = [ml_config.trainer.seed + i for i in range(args.seeds)]
        metrics, _ = run_dataset(ml_config, lightgcn_config, movielens_dataset(), log, ml_seeds)
        result.update(metrics)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["seconds"] = time.perf_counter() - started
    print_result(rounded(result), TARGETS, args.check, sort_keys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
