"""Benchmark of the zoo stage on a catalog profile: time, peak memory and quality.

    uv run python benchmarks/zoo.py [--profile default|sparse] [--config configs/zoo.yaml] [--run DIR] [--images-per-combo N] [--check] [key=value ...]
    uv run python benchmarks/zoo.py --check-file saved.log   # compare a saved output with TARGETS only

Builds the catalog of ``--profile`` (data stage; ``default`` unless named), trains the whole zoo
from scratch (``retrain``, into ``<run>/zoo-cache`` unless ``cache_dir=`` says otherwise, so the
cache is not what is timed and no run's cache entry is replaced), then measures on held-out data:
- ``t2i_colour_acc`` / ``t2i_pattern_acc`` / ``t2i_category_acc``: the judge's reading of
  images generated for the held-out category×colour×pattern combinations (never trained on);
- ``clip_top1``: image→text top-1 among ``clip_candidates`` held-out captions of distinct
  combinations;
- ``judge_acc``: mean held-out accuracy of the judge over its attributes (per attribute too);
- from the stage's own ``zoo.json`` (``pmg.zoo.models.evaluate_models``): CLIP scores of images
  drawn for held-out items' captions against the caption and the real image, beside a shuffled
  pairing (``t2i_clip_score`` / ``_shuffled``, ``t2i_clip_i`` / ``_shuffled``), and the LM's
  held-out perplexity beside a unigram's (``lm_heldout_perplexity``, ``lm_unigram_perplexity``),
  and the VAE's round trip (``vae_<attribute>_acc``: the judge on held-out items' images encoded
  and decoded; the UNet cannot draw a colour more faithfully than the VAE decodes it).
``minutes`` is the zoo stage's wall time, ``cpu_minutes`` its CPU time over all threads (the
figure that does not depend on what else runs on the machine); ``peak_rss_gb`` the process's
peak resident memory.
Targets: ``TARGETS`` (what ``--check`` compares): text-to-image colour and pattern on the unseen
combinations, CLIP top-1, the stage's time and memory.
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

from pmg.benchmark_targets import Targets, at_least, at_most, parse_args_with_check, print_result
from pmg.data.catalog import CATALOG_PROFILES

TARGETS: Targets = {
    "t2i_colour_acc": at_least(0.80),
    "t2i_pattern_acc": at_least(0.60),
    "clip_top1": at_least(0.80),
    "minutes": at_most(10.0),
    "peak_rss_gb": at_most(6.0),
}


def _peak_rss_gb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=CATALOG_PROFILES, default="default", help="the catalog profile (data.catalog.profile)")
    parser.add_argument("--config", type=Path, default=Path("configs/zoo.yaml"))
    parser.add_argument("--run", type=Path, help="default: runs/bench-zoo, runs/bench-zoo-<profile> for another profile")
    parser.add_argument("--images-per-combo", type=int, default=8)
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parse_args_with_check(parser, TARGETS)

    import numpy as np

    from pmg.config import load_config
    from pmg.data.dataset_stage import DatasetConfig, prepare_dataset
    from pmg.runs import RunDirectory
    from pmg.zoo import ZooConfig, load_zoo, run_zoo_stage

    run = RunDirectory(args.run or Path("runs/bench-zoo" if args.profile == "default" else f"runs/bench-zoo-{args.profile}"))
    data, split, data_fp = prepare_dataset(load_config(DatasetConfig, None, [f"catalog.profile={args.profile}"]), run)
    # Its own cache: a retrained entry must not replace the one that the user's runs point to.
    config = load_config(ZooConfig, args.config if args.config.is_file() else None,
                         [f"cache_dir={run.root / 'zoo-cache'}", *args.overrides, "retrain=true"])
    started, cpu_started = time.perf_counter(), time.process_time()
    result = run_zoo_stage(config, run, data_fp, True)
    minutes = (time.perf_counter() - started) / 60
    # CPU time (all threads) says what the stage costs whatever else shares the machine.
    cpu_minutes = (time.process_time() - cpu_started) / 60
    print(result.summary, flush=True)

    from pmg.zoo.corpus import build_corpus
    from pmg.zoo.evaluation import clip_retrieval_top1, judge_accuracy, text_to_image_accuracy

    zoo = load_zoo(run)
    corpus = build_corpus(data, split, config.holdout, config.judge.model.image_size)
    judge = zoo.load_judge()
    clip, processor = zoo.load_clip()
    pipe = zoo.load_sdxl()
    top1, candidates = clip_retrieval_top1(clip, processor, corpus, corpus.heldout_items,
                                           candidates=config.eval.clip_candidates, seed=config.eval.seed)
    judged = judge_accuracy(judge, corpus, corpus.heldout_items)
    t2i_started = time.perf_counter()
    t2i = text_to_image_accuracy(pipe, judge, corpus.heldout_combos, images_per_combo=args.images_per_combo,
                                 steps=config.eval.t2i_steps, guidance_scale=config.eval.guidance_scale, seed=1,
                                 sheet=run.stage_dir("zoo") / "t2i_samples_benchmark.png")
    figures = {
        "t2i_colour_acc": t2i.get("colour"),
        "t2i_pattern_acc": t2i.get("pattern"),
        "t2i_category_acc": t2i.get("category"),
        "t2i_images": int(t2i.get("images", 0)),
        "t2i_heldout_combos": len(corpus.heldout_combos),
        "t2i_seconds": round(time.perf_counter() - t2i_started, 1),
        "t2i_samples": str(run.stage_dir("zoo") / "t2i_samples_benchmark.png"),
        "clip_top1": top1,
        "clip_candidates": candidates,
        "judge_acc": float(np.mean([v for v in judged.values() if v is not None])),
        **{f"judge_{k}_acc": v for k, v in judged.items()},
        "judge_heldout_items": int(corpus.image_items(corpus.heldout_items).size),
        **{k: zoo.metrics.get(k) for k in ("t2i_clip_score", "t2i_clip_score_shuffled", "t2i_clip_i", "t2i_clip_i_shuffled",
                                           "t2i_clip_items", "lm_heldout_perplexity", "lm_unigram_perplexity", "lm_heldout_tokens")},
        **{k: v for k, v in zoo.metrics.items() if k.startswith("vae_")},
        "profile": args.profile,
        "minutes": round(minutes, 2),
        "cpu_minutes": round(cpu_minutes, 2),
        "torch_threads": __import__("torch").get_num_threads(),
        "peak_rss_gb": round(_peak_rss_gb(), 2),
        "stage_timings_s": json.loads((Path(zoo.root) / "zoo.json").read_text()).get("timings", {}),
    }
    print_result(figures, TARGETS, args.check)


if __name__ == "__main__":
    main()
