"""Benchmark of the generator stage on the catalog: personalization of generated images and texts
with discrete preference tokens, without them, and with the continuous soft-prompt baseline;
generation time with tokens against the plain pipelines.

Usage:
    uv run --frozen python benchmarks/generation.py                  # on runs/default (a completed `pmg pipeline`)
    uv run --frozen python benchmarks/generation.py --run DIR
    uv run --frozen python benchmarks/generation.py --quick          # builds a small run itself (quick profile)

Protocol:

- users: the generator stage's held-out users (``generator.heldout_user_fraction``; never seen in
  SFT, so their token combinations are judged as for a new user), all users when none were held
  out; at most ``--users``.
- three variants, same trained models and sampling settings (``generator.sample``: greedy text,
  seeded diffusion), one image and one text per target (title, review) per user, the image
  subject being the user's most liked category:
  ``tokens``: the token adapters with the user's preference tokens in both prompts;
  ``notoken``: the same adapters with the no-token prompt (what the tokens add);
  ``softprompt``: the soft-prompt baseline (``<run>/generator/soft_prompt``), the user's
  preference vectors mapped into the LM / CLIP text-encoder embedding spaces. A run without it
  (``generator.baselines.soft_prompt`` is off by default) is copied to ``runs/bench-generation``
  and its generator stage redone there with it (same seed and budget).
- ``img_colour_acc*``: share of images in which the zoo's attribute judge reads the user's
  ground-truth colour; ``text_attr_acc*``: mean over the textual tastes (material, style) of the
  share of users whose generated texts (title and review joined) name their true value first
  (``pmg.generator.evaluation``). Chance is about 1/8 and 1/6.
- time: per user, text (every target, exactly ``max_new_tokens`` new tokens) + image, with tokens
  through the adapters vs the zoo's plain LM and SDXL pipeline with the no-token prompts, same
  settings, interleaved over ``--timing-users`` users after a warm-up, ``--repeats`` times;
  ``token_overhead = time_with_tokens / time_plain - 1`` (medians over users).

Progress goes to stdout; the LAST line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from pmg.config import load_config
from pmg.data.dataset_stage import load_prepared
from pmg.data.format import InteractionData
from pmg.evaluate.generation import no_token_variant, soft_prompt_variant, token_variant
from pmg.generator import (
    GeneratorConfig,
    load_generators,
    load_heldout_users,
    load_soft_prompt_generators,
)
from pmg.generator.evaluation import judge_colour_accuracy, taste_attributes, text_attribute_accuracy
from pmg.pipeline import PipelineConfig, quick_profile, run_pipeline
from pmg.preference.stage import load_preferences
from pmg.quantize.stage import load_user_tokens
from pmg.runs import RunDirectory, RunError
from pmg.zoo.manifest import load_zoo
from pmg.zoo.sdxl_recipe import pipeline_resolution

REPO = Path(__file__).resolve().parents[1]
QUICK_RUN = REPO / "runs" / "bench-generation-quick"
# The quick profile holds out a larger share of its 200 users so that enough are judged.
QUICK_OVERRIDES = ("generator.heldout_user_fraction=0.25", "generator.baselines.soft_prompt=true",
                   "generator.trainer.enable_progress_bar=false")
# A run without the soft-prompt baseline is copied here and its generator stage redone with it.
BASELINE_RUN = REPO / "runs" / "bench-generation"


def _with_soft_prompt_baseline(run: RunDirectory) -> RunDirectory:
    """``run`` if it has the soft-prompt baseline, else a copy whose generator stage trained it too
    (same config otherwise; the original run is left as it is)."""
    import dataclasses
    import shutil

    from pmg.generator import run_generator_stage

    if (run.stage_dir("generator") / "soft_prompt").is_dir():
        return run
    print(f"{run.root} has no soft-prompt baseline: redoing its generator stage with it in a copy, {BASELINE_RUN}", flush=True)
    shutil.rmtree(BASELINE_RUN, ignore_errors=True)
    shutil.copytree(run.root, BASELINE_RUN)
    copy = RunDirectory(BASELINE_RUN)
    config = load_config(GeneratorConfig, copy.stage_dir("generator") / "config.yaml")
    config.baselines = dataclasses.replace(config.baselines, soft_prompt=True)
    print(f"[generator] {run_generator_stage(config, copy, run.require('quantize')['fingerprint'], True).summary}", flush=True)
    return copy


def _evaluation_users(run: RunDirectory, data: InteractionData, limit: int) -> tuple[list[int], bool]:
    index = data.user_index()
    heldout = [index[u] for u in load_heldout_users(run)]
    users = heldout or list(range(data.num_users))
    return users[:limit], bool(heldout)


def _accuracies(data: InteractionData, users: list[int], images: list, texts: list[str], judge) -> tuple[float, float, dict]:
    colour = judge_colour_accuracy(images, [data.user_tastes["colour"][u] for u in users], judge) if images else float("nan")
    attributes = taste_attributes(data, "textual")
    tastes = {name: [data.user_tastes[name][u] for u in users] for name in attributes}
    text = text_attribute_accuracy(texts, tastes, attributes) if texts else {"mean": float("nan")}
    return colour, text["mean"], text


def _time_generation(config: GeneratorConfig, data: InteractionData, users: list[int], fragments: tuple[list, list],
                     adapters: tuple, plain: tuple, repeats: int) -> tuple[float, float]:
    """Median seconds per user (text for every target + one image): with tokens, plain."""
    from prefgen import build_image_prompt, build_text_prompt

    text_adapter, image_adapter = adapters
    lm, lm_tokenizer, pipe = plain
    sample, targets = config.sample, config.text.targets
    size = pipeline_resolution(pipe)
    lengths = {"max_new_tokens": sample.max_new_tokens, "min_new_tokens": sample.max_new_tokens}
    image_options = {"num_inference_steps": sample.num_inference_steps, "guidance_scale": sample.guidance_scale,
                     "height": size, "width": size}

    def with_tokens(user: int) -> None:
        text_adapter.generate([build_text_prompt(fragments[0][user], config.text.context_of(t)) for t in targets], **lengths)
        image_adapter.generate([build_image_prompt("a dress", fragments[1][user])], seed=sample.seed, **image_options)

    @torch.no_grad()
    def without(user: int) -> None:
        batch = lm_tokenizer([build_text_prompt(None, config.text.context_of(t)) for t in targets], return_tensors="pt",
                             padding=True, padding_side="left")
        lm.generate(**batch, do_sample=False, pad_token_id=lm_tokenizer.pad_token_id, eos_token_id=lm_tokenizer.eos_token_id,
                    **lengths)
        pipe(prompt=[build_image_prompt("a dress", None)], generator=torch.Generator("cpu").manual_seed(sample.seed),
             **image_options)

    with_tokens(users[0])  # warm-up of both paths (first calls allocate and compile kernels)
    without(users[0])
    timings: dict[str, list[float]] = {"tokens": [], "plain": []}
    for _ in range(repeats):
        for user in users:
            for name, call in (("tokens", with_tokens), ("plain", without)):
                started = time.perf_counter()
                call(user)
                timings[name].append(time.perf_counter() - started)
    return statistics.median(timings["tokens"]), statistics.median(timings["plain"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/default"), help="a run whose generator stage completed")
    parser.add_argument("--quick", action="store_true", help="build a small run (quick profile) in runs/bench-generation-quick")
    parser.add_argument("--users", type=int, default=200, help="at most this many users are judged")
    parser.add_argument("--timing-users", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    started = time.perf_counter()
    if args.quick:
        config = load_config(PipelineConfig, quick_profile(), [f"run_dir={QUICK_RUN}", *QUICK_OVERRIDES])
        run = run_pipeline(config)
    else:
        run = RunDirectory(args.run)
    run.require("generator")
    run = _with_soft_prompt_baseline(run)
    config = load_config(GeneratorConfig, run.stage_dir("generator") / "config.yaml")
    data, _ = load_prepared(run)
    if data.user_tastes is None or "colour" not in data.user_tastes:
        raise RunError(f"{run.root}: the dataset has no ground-truth tastes; this benchmark needs the catalog")
    zoo = load_zoo(run)
    judge = zoo.load_judge()
    tokens = load_user_tokens(run)
    text_adapter, image_adapter = load_generators(run, zoo)
    soft = load_soft_prompt_generators(run, zoo)
    if text_adapter is None or image_adapter is None:
        raise RunError(f"{run.root}: this benchmark needs both the text and the image generator")
    if soft is None or soft.text is None or soft.image is None:
        raise RunError(f"{run.root}: the soft-prompt baseline lacks a generator")
    preferences = load_preferences(run).user_preferences
    users, heldout = _evaluation_users(run, data, args.users)
    print(f"judging {len(users)} {'held-out' if heldout else 'training'} users of {run.root}", flush=True)

    figures: dict[str, object] = {}
    # The variants as `pmg evaluate` builds them (its no_tokens, soft_prompt and tokens_sft columns).
    variants = {"tokens": token_variant(text_adapter, image_adapter, data, tokens, config),
                "notoken": no_token_variant(text_adapter, image_adapter),
                "softprompt": soft_prompt_variant(soft, preferences)}
    fragments = (variants["tokens"].text_fragments, variants["tokens"].image_fragments)
    for variant, generators in variants.items():
        variant_started = time.perf_counter()
        results = generators.generate_many(data, config, users)
        images = [result.image for result in results]
        texts = [result.text for result in results]
        colour, text, per_attribute = _accuracies(data, users, images, texts, judge)
        suffix = "" if variant == "tokens" else f"_{variant}"
        figures[f"img_colour_acc{suffix}"] = round(colour, 4)
        figures[f"text_attr_acc{suffix}"] = round(text, 4)
        figures.update({f"text_{name}_acc{suffix}": round(v, 4) for name, v in per_attribute.items() if name != "mean"})
        print(f"[{variant}] image colour {colour:.3f}, text attributes {text:.3f} {per_attribute} "
              f"({time.perf_counter() - variant_started:.1f}s); e.g. {texts[0]!r}", flush=True)

    lm, lm_tokenizer = zoo.load_lm()
    if lm_tokenizer.pad_token is None:
        lm_tokenizer.pad_token = lm_tokenizer.eos_token
    with_tokens, plain = _time_generation(config, data, users[: args.timing_users], fragments, (text_adapter, image_adapter),
                                          (lm.eval(), lm_tokenizer, zoo.load_sdxl()), args.repeats)
    figures.update({
        "token_overhead": round(with_tokens / plain - 1, 4),
        "seconds_per_user_tokens": round(with_tokens, 4),
        "seconds_per_user_plain": round(plain, 4),
        "users": len(users),
        "heldout_users": heldout,
        "run": str(run.root),
        "quick": bool(args.quick),
        "minutes": round((time.perf_counter() - started) / 60, 2),
        "torch_threads": torch.get_num_threads(),
    })
    print(f"time per user: {with_tokens:.3f}s with tokens, {plain:.3f}s plain", flush=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
