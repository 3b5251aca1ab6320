"""Benchmark of generation on both catalog profiles: every variant of `pmg evaluate` on at least 200
evaluation users, with 95% intervals, and the generation time with tokens against the plain pipelines.

Usage:
    uv run --frozen python benchmarks/generation.py              # runs/default and runs/sparse (built or reused)
    uv run --frozen python benchmarks/generation.py --quick      # both profiles at the quick profile's size
    uv run --frozen python benchmarks/generation.py --profiles default --users 200
    uv run --frozen python benchmarks/generation.py --tag tokens --set generator.prompt=tokens   # an ablation
    uv run --frozen python benchmarks/generation.py --check      # then compare with TARGETS, exit 1 on a miss
    uv run --frozen python benchmarks/generation.py --check-file saved.log   # compare a saved output only
    uv run --frozen python benchmarks/generation.py --timing-only --repeats 5   # only the time, on runs/default

Protocol:

- runs: ``pmg pipeline`` on the default catalog (``runs/default``) and on the sparse profile
  (``data.catalog.profile=sparse``, ``runs/sparse``); completed stages are reused. A run without
  the soft-prompt baseline is copied to ``runs/bench-generation-<profile>`` and its generator
  stage redone there with it (same seed and budget), so every variant is on the same models.
- users: the data stage's evaluation users (``data.users``: no stage trained or selected on
  them), at most ``--users``; the same users for every variant.
- variants: those of ``pmg evaluate`` (``pmg.evaluate.generation``): no tokens, soft prompt,
  keywords (the history's words where the tokens would go, through the zoo's models), keywords
  through the run's final adapters (no tokens), the same with each image the best of as many as
  the default draws, chosen by the user's history images (keywords best of: the words' baseline at
  the same sampling cost), the same with the initial latents shifted by each
  user's own history images (keywords + history latent, the words-and-images baseline of the
  tokens' latent prior; always judged here), hybrid (keywords + tokens),
  retrieve (the top-1 recommended item's own image and text), tokens after SFT, tokens after
  reward (each image the best of ``reward.image.candidates`` by the reward's personalization
  term, as ``pmg generate`` draws it). Per variant: image and text personalization, the joint rate, each attribute's rate,
  each with a 95% bootstrap interval over users, and the field's rows (``pmg.evaluate.field_metrics``:
  CLIP-I, SSIM, pixel features, colour FID, BLEU, ROUGE-L, distinct-n); the default variant's paired
  difference with each keywords baseline (keywords, keywords tuned, keywords best of) and with
  keywords + history latent, with its interval.
- ``history_keyword_hit_rate``: per taste, the share of users whose extracted keyword (what the
  keywords variant prompts with) is their true value; ``history_majority_hit_rate``: the share
  whose training items' most frequent value is (the keyword upper bound; for a hidden taste, what
  only the images hold).
- time (default profile): per user, text (every target, exactly ``max_new_tokens`` new tokens) +
  image, through the adapters with the run's prompts (words and tokens) vs the zoo's plain LM and
  SDXL pipeline with the same words and no tokens vs the plain models with the no-token prompt,
  interleaved over ``--timing-users`` users after a warm-up, ``--repeats`` times (medians over
  users; one image each, whatever ``reward.image.candidates``: drawing K images costs about K
  times one): ``token_overhead = time_tokens / time_words - 1`` (what the tokens cost) and
  ``overhead_vs_generic_prompt = time_tokens / time_generic - 1`` (what personalization costs).

Progress goes to stdout; the LAST line is one JSON object:
``{"default_variant", "profiles": {profile: P}, "token_overhead", ...}`` with
``P = {"n_users", "history_keyword_hit_rate", "history_majority_hit_rate", "variants": {variant: {...}},
"default_vs_keywords": {...}, "default_vs_keywords_tuned": {...}, "default_vs_keywords_best_of": {...},
"default_vs_history_latent": {...}}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from pmg.benchmark_targets import Targets, at_least, at_most, parse_args_with_check, print_result
from pmg.config import load_config
from pmg.data.dataset_stage import load_prepared
from pmg.data.format import InteractionData
from pmg.data.keyword_bound import history_majority_hit_rate
from pmg.evaluate.config import GenerationEvaluationConfig
from pmg.evaluate.field_metrics import FIELD_ROWS
from pmg.evaluate.generation import VARIANTS, generation_section, user_keywords
from pmg.evaluate.intervals import bootstrap_interval
from pmg.evaluate.stage import (
    evaluation_users,
    generate_variants,
    generation_judges,
    generation_variants,
    load_generation_inputs,
)
from pmg.evaluate.table import Cell, Section
from pmg.generator import GeneratorConfig, load_generators, run_generator_stage
from pmg.generator.evaluation import taste_attributes
from pmg.generator.prompts import UserPrompts, described_subject, user_prompts
from pmg.pipeline import PipelineConfig, quick_profile, run_pipeline
from pmg.quantize.stage import load_user_tokens
from pmg.runs import RunDirectory, RunError
from pmg.zoo.sdxl_recipe import pipeline_resolution

REPO = Path(__file__).resolve().parents[1]
PROFILES = {"default": (), "sparse": ("data.catalog.profile=sparse",)}
# What `pmg pipeline` gives a user by default: `pmg generate` prompts the reward-tuned adapters as the run
# prompts (generator.prompt: history keywords and tokens by default).
DEFAULT_VARIANT = "tokens_reward"
QUICK_OVERRIDES = ("generator.baselines.soft_prompt=true", "generator.trainer.enable_progress_bar=false")


def _name(profile: str, quick: bool, tag: str) -> str:
    return "-".join(part for part in (profile, "quick" if quick else "", tag) if part)


def _run(profile: str, quick: bool, tag: str, extra: list[str]) -> RunDirectory:
    """The profile's completed pipeline run (built, or reused stage by stage); ``extra`` overrides
    (an ablation) go to ``runs/<profile>[-quick]-<tag>``."""
    overrides = [f"run_dir={REPO / 'runs' / _name(profile, quick, tag)}", *PROFILES[profile], *(QUICK_OVERRIDES if quick else ()),
                 *extra]
    config = load_config(PipelineConfig, quick_profile() if quick else None, overrides)
    print(f"[{profile}] pipeline in {config.run_dir}", flush=True)
    return run_pipeline(config)


def _with_soft_prompt_baseline(run: RunDirectory, name: str) -> RunDirectory:
    """``run`` if it has the soft-prompt baseline, else a copy whose generator stage trained it too
    (same config otherwise; the original run is left as it is)."""
    if (run.stage_dir("generator") / "soft_prompt").is_dir():
        return run
    target = REPO / "runs" / f"bench-generation-{name}"
    fingerprint = run.require("generator")["fingerprint"]
    copy = RunDirectory(target)
    if target.is_dir() and (copy.record("generator") or {}).get("source_fingerprint") == fingerprint:
        return copy  # the copy of this very run, already with the baseline
    print(f"{run.root} has no soft-prompt baseline: redoing its generator stage with it in a copy, {target}", flush=True)
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(run.root, target)
    copy = RunDirectory(target)
    config = load_config(GeneratorConfig, copy.stage_dir("generator") / "config.yaml")
    config.baselines = dataclasses.replace(config.baselines, soft_prompt=True)
    print(f"[generator] {run_generator_stage(config, copy, run.require('quantize')['fingerprint'], True).summary}", flush=True)
    record = copy.require("generator")
    copy.mark_complete("generator", record["fingerprint"], {**{k: v for k, v in record.items() if k != "fingerprint"},
                                                           "source_fingerprint": fingerprint})
    return copy


def _cell(cell: Cell) -> tuple[float | None, list[float] | None]:
    return cell.value, list(cell.interval) if cell.interval is not None else None


def _variant_figures(section: Section, variant: str) -> dict[str, object]:
    """One variant's figures from the generation section (rates of every attribute, headline rows and the
    field's rows with intervals; a set-level field row's interval is None)."""
    out: dict[str, object] = {}
    for metric in ("image_personalization", "text_personalization", "joint", "consistency", "user_preference_image",
                   "user_preference_text", *(row[0] for row in FIELD_ROWS)):
        try:
            value, interval = _cell(section.row(metric).cells[variant])
        except KeyError:
            continue
        out[metric], out[f"{metric}_ci"] = value, interval
    for row in section.rows:
        for kind in ("image", "text"):
            if row.metric.startswith(f"{kind}_") and row.metric.endswith("_accuracy"):
                out[row.metric.removesuffix("_accuracy")] = row.cells[variant].value
    return out


def _paired(section: Section, variant: str, baseline: str) -> dict[str, object]:
    """``variant`` − ``baseline`` on the same users, per headline row, with the interval of the mean difference."""
    out: dict[str, object] = {}
    for metric in ("image_personalization", "text_personalization", "joint"):
        try:
            a, b = section.row(metric).cells[variant].per_user, section.row(metric).cells[baseline].per_user
        except KeyError:
            continue
        if a is None or b is None or len(a) != len(b):
            continue
        out[metric] = round(float(np.mean(a - b)), 4)
        out[f"{metric}_ci"] = [round(v, 4) for v in bootstrap_interval(a - b)]
    return out


def _keyword_hit_rate(data: InteractionData, generator: GeneratorConfig, history: np.ndarray, users: list[int]) -> dict[str, float]:
    """Per taste, the share of ``users`` whose history keyword (read as the run's prompts read it) is their
    true value (no keyword: a miss)."""
    keywords = [k for k in user_keywords(data, generator, history, users) if k is not None]
    assert data.user_tastes is not None
    return {a: round(float(np.mean([k.values.get(a) == data.user_tastes[a][u] for k, u in zip(keywords, users, strict=True)])), 4)
            for a in data.user_tastes}


def _profile(profile: str, quick: bool, limit: int, tag: str, extra: list[str]) -> tuple[dict[str, object], RunDirectory, list[int]]:
    run = _with_soft_prompt_baseline(_run(profile, quick, tag, extra), _name(profile, quick, tag))
    inputs = load_generation_inputs(run, tastes_for="benchmarks/generation.py")
    data, split, zoo, tokens, generator = inputs.data, inputs.split, inputs.zoo, inputs.tokens, inputs.generator
    users = evaluation_users(run, data, tokens, limit)
    print(f"[{profile}] judging {len(users)} evaluation users of {run.root}", flush=True)
    variants = generation_variants(run, data, split, zoo, tokens, generator, users, history_latent=True)
    missing = {name: reason for name, reason in variants.items() if isinstance(reason, str)}
    if missing:
        raise RunError(f"{run.root}: variants missing: {missing}")
    generations = generate_variants(variants, data, generator, users, progress=True)
    settings = GenerationEvaluationConfig()  # the same consistency and joint attributes as `pmg evaluate`
    section, _ = generation_section(data, split, users, generations, generation_judges(zoo), settings.consistency_attribute,
                                    settings.joint_text_attribute)
    figures = {
        "n_users": len(users),
        "run": str(run.root),
        "keyword_weight": str(generator.keywords.weight),
        "history_keyword_hit_rate": _keyword_hit_rate(data, generator, split.train, users),
        "history_majority_hit_rate": {a: round(v, 4) for a, v in history_majority_hit_rate(data, split.train, users).items()},
        "visual_tastes": list(taste_attributes(data, "visual")),
        "variants": {name: _variant_figures(section, name) for name in VARIANTS},
        "default_vs_keywords": _paired(section, DEFAULT_VARIANT, "keywords"),
        "default_vs_keywords_tuned": _paired(section, DEFAULT_VARIANT, "keywords_tuned"),
        "default_vs_keywords_best_of": _paired(section, DEFAULT_VARIANT, "keywords_best_of"),
        "default_vs_history_latent": _paired(section, DEFAULT_VARIANT, "history_latent"),
    }
    for name in VARIANTS:
        shown = figures["variants"][name]
        print(f"[{profile}] {name}: image {shown.get('image_personalization')} {shown.get('image_personalization_ci')}, "
              f"text {shown.get('text_personalization')} {shown.get('text_personalization_ci')}, "
              f"joint {shown.get('joint')}", flush=True)
    print(f"[{profile}] e.g. keywords: {generations['keywords'][0].text_prompt!r} / {generations['keywords'][0].image_prompt!r}",
          flush=True)
    return figures, run, users


def _time_generation(config: GeneratorConfig, data: InteractionData, users: list[int], prompts: UserPrompts,
                     adapters: tuple, plain: tuple, repeats: int) -> dict[str, float]:
    """Median seconds per user (text for every target + one image) of three paths, interleaved:
    ``tokens`` (the adapters with the run's prompts: the user's words and tokens), ``words`` (the
    zoo's plain LM and SDXL pipeline with the same words, no tokens: what the tokens add to) and
    ``generic`` (the plain models with the no-token prompt: no personalization at all)."""
    from prefgen import build_image_prompt, build_text_prompt

    text_adapter, image_adapter = adapters
    lm, lm_tokenizer, pipe = plain
    sample, targets = config.sample, config.text.targets
    size = pipeline_resolution(pipe)
    lengths = {"max_new_tokens": sample.max_new_tokens, "min_new_tokens": sample.max_new_tokens}
    image_options = {"num_inference_steps": sample.num_inference_steps, "guidance_scale": sample.guidance_scale,
                     "height": size, "width": size}

    def subject(user: int) -> str:
        return described_subject(data, "a dress", prompts.subject_words[user] or {})

    def with_tokens(user: int) -> None:
        text_adapter.generate([build_text_prompt(prompts.text[user], config.text.context_of(t)) for t in targets], **lengths)
        image_adapter.generate([build_image_prompt(subject(user), prompts.image[user])], seed=sample.seed, **image_options)

    @torch.no_grad()
    def plain_models(words: str | None, image_subject: str) -> None:
        batch = lm_tokenizer([build_text_prompt(words, config.text.context_of(t)) for t in targets], return_tensors="pt",
                             padding=True, padding_side="left")
        lm.generate(**batch, do_sample=False, pad_token_id=lm_tokenizer.pad_token_id, eos_token_id=lm_tokenizer.eos_token_id,
                    **lengths)
        pipe(prompt=[build_image_prompt(image_subject, None)], generator=torch.Generator("cpu").manual_seed(sample.seed),
             **image_options)

    paths = {"tokens": with_tokens,
             "words": lambda user: plain_models(prompts.text_words[user], subject(user)),
             "generic": lambda user: plain_models(None, "a dress")}
    for call in paths.values():
        call(users[0])  # warm-up of every path (first calls allocate and compile kernels)
    timings: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(repeats):
        for user in users:
            for name, call in paths.items():
                started = time.perf_counter()
                call(user)
                timings[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in timings.items()}


# What --check compares the figures with (issue "Preference tokens that beat words"); the keys are
# paths into the printed JSON. A profile that was not run leaves its targets unmet.
TARGETS: Targets = {
    f"profiles.default.variants.{DEFAULT_VARIANT}.image_colour": at_least(0.90),
    f"profiles.default.variants.{DEFAULT_VARIANT}.image_pattern": at_least(0.80),
    f"profiles.default.variants.{DEFAULT_VARIANT}.text_material": at_least(0.90),
    f"profiles.default.variants.{DEFAULT_VARIANT}.text_style": at_least(0.80),
    f"profiles.default.variants.{DEFAULT_VARIANT}.joint": at_least(0.75),
    # "At least the keywords baseline": the interval of the paired difference does not lie below zero.
    "profiles.default.default_vs_keywords.image_personalization_ci.1": at_least(0.0),
    "profiles.default.default_vs_keywords.text_personalization_ci.1": at_least(0.0),
    "profiles.sparse.default_vs_keywords.image_personalization": at_least(0.10),
    "profiles.sparse.default_vs_keywords.text_personalization": at_least(0.10),
    "token_overhead": at_most(0.05),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", choices=sorted(PROFILES), default=["default", "sparse"])
    parser.add_argument("--quick", action="store_true", help="both profiles at the quick profile's size (runs/<profile>-quick)")
    parser.add_argument("--users", type=int, default=200, help="at most this many evaluation users are judged (0: all)")
    parser.add_argument("--timing-users", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a pipeline override for an ablation (e.g. generator.prompt=tokens); needs --tag")
    parser.add_argument("--tag", default="", help="the ablation's name: its runs are runs/<profile>-<tag>")
    parser.add_argument("--timing-only", action="store_true",
                        help="only the three-path timing on the first profile's run (built if missing); no quality "
                             "figures, which --check then reports as not measured")
    args = parse_args_with_check(parser, TARGETS)
    if bool(args.overrides) != bool(args.tag):
        parser.error("--set and --tag go together: an ablation's runs must not overwrite the default runs")

    started = time.perf_counter()
    profiles: dict[str, object] = {}
    timing_run: tuple[RunDirectory, list[int]] | None = None
    if args.timing_only:
        run = _run(args.profiles[0], args.quick, args.tag, args.overrides)
        data, _ = load_prepared(run)
        timing_run = (run, evaluation_users(run, data, load_user_tokens(run), args.timing_users))
    for profile in [] if args.timing_only else args.profiles:
        profiles[profile], run, users = _profile(profile, args.quick, args.users, args.tag, args.overrides)
        if timing_run is None or profile == "default":
            timing_run = (run, users)
    assert timing_run is not None
    run, users = timing_run
    inputs = load_generation_inputs(run, tastes_for=None)
    data, split, zoo, tokens, config = inputs.data, inputs.split, inputs.zoo, inputs.tokens, inputs.generator
    text_adapter, image_adapter = load_generators(run, zoo)
    if text_adapter is None or image_adapter is None:
        raise RunError(f"{run.root}: this benchmark needs both the text and the image generator")
    prompts = user_prompts(data, config, tokens, split.train)
    lm, lm_tokenizer = zoo.load_lm()
    if lm_tokenizer.pad_token is None:
        lm_tokenizer.pad_token = lm_tokenizer.eos_token
    seconds = _time_generation(config, data, users[: args.timing_users], prompts, (text_adapter, image_adapter),
                               (lm.eval(), lm_tokenizer, zoo.load_sdxl()), args.repeats)
    print("time per user: " + ", ".join(f"{seconds[name]:.3f}s {name}" for name in seconds), flush=True)
    result = {
        "default_variant": DEFAULT_VARIANT,
        "generator_prompt": str(config.prompt),
        "overrides": args.overrides,
        "profiles": profiles,
        # The tokens' cost: the pipeline against the plain models given the same words.
        "token_overhead": round(seconds["tokens"] / seconds["words"] - 1, 4),
        # Personalization's whole cost: against the plain models with the generic prompt.
        "overhead_vs_generic_prompt": round(seconds["tokens"] / seconds["generic"] - 1, 4),
        "seconds_per_user_tokens": round(seconds["tokens"], 4),
        "seconds_per_user_words": round(seconds["words"], 4),
        "seconds_per_user_generic": round(seconds["generic"], 4),
        "quick": bool(args.quick),
        "timing_only": bool(args.timing_only),
        "minutes": round((time.perf_counter() - started) / 60, 2),
        "torch_threads": torch.get_num_threads(),
    }
    print_result(result, TARGETS, args.check)


if __name__ == "__main__":
    main()
