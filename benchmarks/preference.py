"""Benchmark of the preference stage: ranking quality against popularity and PyG's LightGCN,
modal specificity of the learned preferences, training speed and memory.

Usage:
    uv run --frozen python benchmarks/preference.py            # catalog + ml-latest-small (~15 min on 2 idle CPU cores)
    uv run --frozen python benchmarks/preference.py --quick    # a small catalog only, for a smoke check

Both datasets run side by side with one protocol:

- split: the catalog's default pipeline split (leave-last-out per user); ml-latest-small 5/5-core, then a
  per-user 8:1:1 temporal split (``configs/movielens.yaml``);
- "ours": the stage's own code path, ``pmg.preference.stage.train_preferences`` with the config each
  dataset's pipeline uses: ``configs/preference.yaml`` for the catalog, the ``preference`` section of
  ``configs/movielens.yaml`` for ml-latest-small (no posters: id + textual modalities only);
- LightGCN: ``torch_geometric.nn.models.LightGCN`` with the same embedding size and layers, the same
  batches (the stage's ``BPRDataModule``), optimizer, learning rate, L2 weight (``l2_weight``), epoch budget and
  early stopping on validation NDCG@20 (best epoch kept);
- popularity: items ranked by training degree;
- test metrics for all three: every item outside the user's train + validation history is ranked,
  embeddings propagate over the training graph.

Modal specificity (catalog): a multinomial logistic-regression probe per (modality, taste), trained on
70% of users' saved preference vectors, accuracy on the other 30%.

Speed: seconds per training epoch (full-graph propagation + BPR step per batch, same batches) divided
by the training interactions in millions, ours over LightGCN's (``epoch_time_ratio_vs_lightgcn``, lower
is faster). Memory: parameter megabytes of both, and the process's peak RSS.

Progress goes to stdout; the LAST line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch_geometric.nn.models import LightGCN

from pmg.config import load_config
from pmg.data import CatalogConfig, read_dataset, write_catalog
from pmg.data.format import InteractionData
from pmg.data.modules import BPRDataModule
from pmg.data.sources import load_movielens
from pmg.data.split import Split, kcore, temporal_split
from pmg.pipeline import PipelineConfig
from pmg.preference.baselines import fit_lightgcn, held_out_ranking, lightgcn_bpr_loss
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
from prefgraph import InteractionGraph, lightgcn_scorer, popularity_scorer

REPO = Path(__file__).resolve().parents[1]
ML_LATEST_SMALL = REPO.parent / "shared" / "datasets" / "ml-latest-small"
PREFERENCE_YAML = REPO / "configs" / "preference.yaml"
MOVIELENS_YAML = REPO / "configs" / "movielens.yaml"
CACHE = REPO / ".cache" / "pmg" / "bench"
PROBE_TASTES = ("colour", "pattern", "material", "style")


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
def lightgcn_fit(config: PreferenceConfig, prep: Prepared, log) -> tuple[LightGCN, int]:
    """PyG LightGCN under the stage's budget (``pmg.preference.baselines``, what `pmg evaluate` trains too)."""
    fit = fit_lightgcn(config, prep.data, prep.split, log=log)
    return fit.model, fit.best_epoch


def test_metrics(scorer, prep: Prepared, ks: list[int]) -> dict[str, float]:
    """Test Recall/NDCG, the same protocol as the stage: train + validation items masked."""
    return held_out_ranking(scorer, prep.data, prep.split, ks)


# ---------------------------------------------------------------------------------------- speed
def epoch_seconds(config: PreferenceConfig, prep: Prepared, repeats: int = 2) -> dict[str, float]:
    """Seconds per training epoch, ours (PreferenceModule's model: forward + loss_terms) and PyG LightGCN,
    over the same batches; the best of ``repeats`` epochs each, since the machine is shared."""
    torch.manual_seed(0)
    features, masks = item_features(config, prep.data)
    graph = InteractionGraph(*prep.pairs(prep.split.train), prep.data.num_users, prep.data.num_items, features, masks)
    model = build_model(config.model, prep.data.num_users, prep.data.num_items, {m: v.shape[1] for m, v in features.items()})
    datamodule = BPRDataModule(prep.data, prep.split, batch_size=config.batch_size, num_negatives=config.num_negatives)
    module = PreferenceModule(graph, model, config.optimizer, datamodule.val_targets, config.ks)
    batches = list(datamodule.train_dataloader())
    ours_opt = build_optimizer(module.model.parameters(), config.optimizer)
    lightgcn = LightGCN(graph.num_nodes, config.model.embedding_dim, config.model.num_layers)
    lightgcn_opt = build_optimizer(lightgcn.parameters(), config.optimizer)
    edge_index = graph.bipartite_edge_index()
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
            loss = lightgcn_bpr_loss(lightgcn, edge_index, batch, offset, config.model.l2_weight)
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
def linear_probe(x: torch.Tensor, labels: torch.Tensor, train: torch.Tensor, weight_decay: float = 1e-3) -> float:
    """Held-out accuracy of multinomial logistic regression on standardised ``x`` [U, d]."""
    mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-6)
    z = (x - mean) / std
    classes = int(labels.max()) + 1
    linear = torch.nn.Linear(z.size(1), classes)
    optimizer = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(z[train]), labels[train]) + weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    test = ~train
    with torch.no_grad():
        return float((linear(z[test]).argmax(1) == labels[test]).float().mean())


def probes(preferences: dict[str, torch.Tensor], data: InteractionData, seed: int = 0) -> dict[str, float]:
    generator = torch.Generator().manual_seed(seed)
    train = torch.rand(data.num_users, generator=generator) < 0.7
    out = {}
    for modality in ("visual", "textual", "id"):
        if modality not in preferences:
            continue
        for taste in PROBE_TASTES:
            labels = torch.from_numpy(data.taste_labels(taste))
            out[f"probe_{modality}_on_{taste}"] = linear_probe(preferences[modality].float(), labels, train)
    for taste in PROBE_TASTES:
        labels = torch.from_numpy(data.taste_labels(taste))
        out[f"probe_majority_{taste}"] = float((labels[~train] == torch.mode(labels[train]).values).float().mean())
    return out


# ---------------------------------------------------------------------------------------- main
def run_dataset(config: PreferenceConfig, prep: Prepared, log, keep: Path | None = None) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Ours, LightGCN and popularity on ``prep``; ``keep``: a folder that receives our stage artifacts."""
    k = max(config.ks)
    log(f"[{prep.name}] {prep.data.num_users} users, {prep.data.num_items} items; train {len(prep.split.train)}, "
        f"val {len(prep.split.val)}, test {len(prep.split.test)}")
    start = time.perf_counter()
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        artifacts = train_preferences(config, prep.data, prep.split, keep or Path(scratch))
    ours_s = time.perf_counter() - start
    m = artifacts.metrics
    log(f"  ours: best val ndcg@{k} {m['best_val_score']:.4f}; test recall@{k} {m[f'test/recall@{k}']:.4f} ndcg@{k} {m[f'test/ndcg@{k}']:.4f} "
        f"({int(m['epochs'])} epochs, {ours_s:.0f}s, modalities {sorted(artifacts.user_preferences)})")
    start = time.perf_counter()
    lightgcn, epochs = lightgcn_fit(config, prep, log)
    lightgcn_m = test_metrics(lightgcn_scorer(lightgcn, prep.graph(prep.split.train)), prep, config.ks)
    log(f"  lightgcn: recall@{k} {lightgcn_m[f'recall@{k}']:.4f} ndcg@{k} {lightgcn_m[f'ndcg@{k}']:.4f} "
        f"({time.perf_counter() - start:.0f}s)")
    pop = test_metrics(popularity_scorer(prep.graph(prep.split.train)), prep, config.ks)
    log(f"  popularity: recall@{k} {pop[f'recall@{k}']:.4f} ndcg@{k} {pop[f'ndcg@{k}']:.4f}")
    result = {
        f"{prep.name}_recall{k}": m[f"test/recall@{k}"],
        f"{prep.name}_ndcg{k}": m[f"test/ndcg@{k}"],
        f"{prep.name}_lightgcn_recall{k}": lightgcn_m[f"recall@{k}"],
        f"{prep.name}_lightgcn_ndcg{k}": lightgcn_m[f"ndcg@{k}"],
        f"{prep.name}_pop_recall{k}": pop[f"recall@{k}"],
        f"{prep.name}_pop_ndcg{k}": pop[f"ndcg@{k}"],
        f"{prep.name}_val_ndcg{k}": m["best_val_score"],
        f"{prep.name}_epochs": m["epochs"],
        f"{prep.name}_lightgcn_best_epoch": float(epochs),
        f"{prep.name}_train_seconds": ours_s,
    }
    return result, artifacts.user_preferences


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small catalog only (smoke check)")
    parser.add_argument("--config", type=Path, default=PREFERENCE_YAML if PREFERENCE_YAML.is_file() else None,
                        help="the preference stage's YAML (default configs/preference.yaml)")
    parser.add_argument("--ml-config", type=Path, default=MOVIELENS_YAML,
                        help="the MovieLens pipeline YAML whose preference section ml-latest-small uses "
                             "(default configs/movielens.yaml)")
    parser.add_argument("--datasets", default="catalog,ml", help="comma-separated subset of catalog,ml")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for every model (the stage's default is 1)")
    parser.add_argument("--zoo-run", type=Path, default=REPO / "runs" / "default",
                        help="a run whose zoo stage has completed on the default catalog: its CLIP serves a 'zoo' feature "
                             "encoder (default runs/default, what `uv run pmg pipeline` writes)")
    parser.add_argument("--keep", type=Path, help="write the catalog's preference artifacts to KEEP/preference "
                        "(then `benchmarks/quant.py --run KEEP` measures the quantizer on them)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="preference config overrides")
    args = parser.parse_args(argv)
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
    started = time.perf_counter()
    result: dict[str, float] = {}
    if "catalog" in datasets:
        catalog = catalog_dataset(CatalogConfig(num_users=200, num_items=400, interactions_per_user=20) if args.quick else CatalogConfig())
        metrics, preferences = run_dataset(config, catalog, log, args.keep / "preference" if args.keep else None)
        result.update(metrics)
        probe = probes(preferences, catalog.data)
        result.update(probe)
        log("  probes (held-out users' accuracy): " + ", ".join(f"{k[6:]} {v:.2f}" for k, v in probe.items()))
        speed = epoch_seconds(config, catalog)
        result["epoch_time_ratio_vs_lightgcn"] = speed["ours_epoch_s_per_m"] / speed["lightgcn_epoch_s_per_m"]
        result.update({f"catalog_{k}": v for k, v in speed.items()})
        log(f"  epoch time per million interactions: ours {speed['ours_epoch_s_per_m']:.1f}s, "
            f"lightgcn {speed['lightgcn_epoch_s_per_m']:.1f}s; params ours {speed['ours_param_mb']:.2f} MB, "
            f"lightgcn {speed['lightgcn_param_mb']:.2f} MB")
    if "ml" in datasets and not args.quick:
        # Each dataset with the preference settings its pipeline config gives (the same overrides on top).
        ml_config = load_config(PipelineConfig, args.ml_config, [f"preference.{o}" for o in common]).preference
        metrics, _ = run_dataset(ml_config, movielens_dataset(), log)
        result.update(metrics)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["seconds"] = time.perf_counter() - started
    print(json.dumps({k: round(v, 5) for k, v in result.items()}, sort_keys=True), flush=True)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
