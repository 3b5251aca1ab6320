"""The evaluate stage: one table of recommendation, quantizer and generation metrics for a completed run.

    pmg evaluate --run DIR [--config configs/evaluate.yaml] [key=value ...]

Needs every stage before it (data … reward); a missing one is a ``RunError`` naming it and the
command to run. Artifacts in ``<run>/evaluate/`` (the folder is replaced in one rename when
everything is computed, so a failing evaluation leaves the previous one as it was):

    evaluation.json      the table (``pmg.evaluate.table``): sections, rows, cells or the reason they are missing
    evaluation.md        the same table in Markdown
    generations.json     the generation users (ids, tokens, tastes) and, per variant and user, the prompts,
                         texts, image file and the judge's reading (what ``pmg report`` shows)
    generations/<variant>/<n>.png   the image of the n-th generation user in each variant
    metrics.json, config.yaml       every computed cell as ``section/metric/column``; the stage's config
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch

from pmg.atomic import atomic_directory
from pmg.config import load_config
from pmg.data.dataset_stage import load_prepared, load_user_roles
from pmg.data.format import InteractionData
from pmg.data.split import Split
from pmg.evaluate.config import EvaluateConfig
from pmg.evaluate.generation import (
    VARIANT_LABELS,
    VARIANTS,
    GenerationJudges,
    HistoryPixelScorer,
    RetrievalVariant,
    VariantGenerators,
    generation_record,
    generation_section,
    history_items,
    history_latent_variant,
    hybrid_variant,
    keyword_variant,
    no_token_variant,
    soft_prompt_variant,
    token_variant,
    user_keywords,
    zoo_generators,
)
from pmg.evaluate.recommendation import quantizer_section, recommendation_section
from pmg.evaluate.table import EvaluationTable, Section
from pmg.generator.config import GeneratorConfig, PromptMode
from pmg.generator.generate import ImageChoice, UserGeneration, load_generators, load_soft_prompt_generators
from pmg.preference.stage import load_preferences
from pmg.quantize.stage import UserTokens, load_user_tokens
from pmg.reward import image_choice, load_reward_generators
from pmg.runs import RunDirectory, RunError, fingerprint, stage_fingerprint
from pmg.stages import Stage, StageResult, complete_stage, reuse_or_clear, write_stage_record
from pmg.tasks.state import load_preference_state
from pmg.zoo.manifest import Zoo, ZooError, load_zoo
from prefreward import ConsistencyReward

__all__ = ["EVALUATE_STAGE", "EVALUATION_JSON", "EVALUATION_MD", "EVALUATION_PROTOCOL", "GENERATIONS_JSON", "UPSTREAM_STAGES", "GenerationInputs",
           "evaluation_users", "generate_variants", "generation_judges", "generation_variants", "load_evaluation",
           "load_generation_inputs", "require_stages", "run_evaluate_stage"]

# Bumped when how the variants are generated or judged changes, so that a run evaluated the old way
# is evaluated again rather than reused (a stage's fingerprint covers its config, not pmg's code).
# 2: each user's image from that user's own noise (pmg.generator.generate.user_seed), no longer one
# noise for every user. 3: tokens_reward's image the best of reward.image.candidates, and the
# keywords_best_of baseline.
EVALUATION_PROTOCOL = 3

EVALUATION_JSON = "evaluation.json"
EVALUATION_MD = "evaluation.md"
GENERATIONS_JSON = "generations.json"
GenerationVariant = VariantGenerators | RetrievalVariant
# Every stage the evaluation reads, in pipeline order (the first missing one is named).
UPSTREAM_STAGES = ("data", "zoo", "preference", "quantize", "generator", "reward")


def require_stages(run: RunDirectory, stages: tuple[str, ...]) -> None:
    """``RunError`` naming the first of ``stages`` that has not completed in ``run`` and what to run."""
    for stage in stages:
        run.require(stage)


@dataclass(frozen=True)
class GenerationInputs:
    """What judging a run's generations reads from it: the prepared data and split, the zoo, the
    users' tokens and the generator stage's config (which prompts and sampling settings it used)."""

    run: RunDirectory
    data: InteractionData
    split: Split
    zoo: Zoo
    tokens: UserTokens
    generator: GeneratorConfig


def load_generation_inputs(run: RunDirectory, *, tastes_for: str | None) -> GenerationInputs:
    """The :class:`GenerationInputs` of ``run`` (``RunError`` naming a stage that has not completed).

    ``tastes_for``: what needs the dataset's ground-truth tastes (a benchmark's name, for the
    message), or ``None`` when nothing does; a dataset without them is then a ``RunError``.
    """
    data, split = load_prepared(run)
    if tastes_for is not None and data.user_tastes is None:
        raise RunError(f"{run.root}: the dataset has no ground-truth tastes; {tastes_for} needs the catalog")
    return GenerationInputs(run, data, split, load_zoo(run), load_user_tokens(run),
                            load_config(GeneratorConfig, run.stage_dir("generator") / "config.yaml"))


def evaluation_users(run: RunDirectory, data: InteractionData, tokens: UserTokens, limit: int,
                     role: Literal["evaluation", "selection", "training"] = "evaluation") -> list[int]:
    """At most ``limit`` (0: all) of the data stage's evaluation users (``role="selection"``: its
    selection users, whom settings may be chosen on; ``"training"``: those the stages trained on)
    that have tokens, in index order (the roles are a seeded random draw, so the first ``limit``
    are a random sample of them)."""
    with_tokens = set(tokens.user_ids)
    users = [int(u) for u in load_user_roles(run, data).of(role) if data.user_ids[u] in with_tokens]
    return users[:limit] if limit > 0 else users


def generation_variants(run: RunDirectory, data: InteractionData, split: Split, zoo: Zoo, tokens: UserTokens,
                        generator: GeneratorConfig, users: Sequence[int], *,
                        history_latent: bool = False) -> dict[str, GenerationVariant | str]:
    """Each variant of ``pmg.evaluate.generation.VARIANTS`` ready to generate for ``users``, or the reason it is missing.

    Keywords are read from the training split only; the keyword variant prompts the zoo's models
    as they are, ``keywords_tuned`` and the hybrid the run's final adapters (the reward stage's), as
    ``tokens_reward`` does.
    ``tokens_sft`` and ``tokens_reward`` prompt as the run does (``generator.prompt``); when that is
    ``keywords_and_tokens``, ``hybrid`` is ``tokens_reward`` itself (generated once). ``tokens_reward``
    picks each image as ``pmg generate`` does (the best of ``reward.image.candidates``), and
    ``keywords_best_of`` as many of ``keywords_tuned``'s by the user's history images.
    ``history_latent`` is built only when asked for (its scale is chosen by generating for the
    selection users: ``evaluate.generation.history_latent_baseline``).
    """

    history = split.train
    sft_text, sft_image = load_generators(run, zoo)
    reward_text, reward_image = load_reward_generators(run, zoo)
    soft = load_soft_prompt_generators(run, zoo)
    keywords = user_keywords(data, generator, history, users)
    state = load_preference_state(run)
    roles = load_user_roles(run, data)
    image_size = sft_image.image_size if sft_image is not None else 64
    choice = image_choice(run, zoo) if reward_image is not None else None
    keywords_tuned = keyword_variant(reward_text, reward_image, data, history, keywords, generator)
    variants: dict[str, GenerationVariant | str] = {
        "no_tokens": no_token_variant(sft_text, sft_image, history),
        "soft_prompt": soft_prompt_variant(soft, load_preferences(run).user_preferences, history) if soft is not None else (
            "the generator stage did not train the soft-prompt baseline (generator.baselines.soft_prompt=false); "
            "rerun `pmg pipeline ... generator.baselines.soft_prompt=true` to compare with it"),
        "keywords": keyword_variant(*zoo_generators(zoo), data, history, keywords, generator),
        "keywords_tuned": keywords_tuned,
        "keywords_best_of": (replace(keywords_tuned, image_choice=ImageChoice(choice.candidates, HistoryPixelScorer(data, history_items(data, split, users), users)))
                             if choice is not None else
                             "the reward stage draws one image per user (reward.image.candidates=1): nothing to choose among"),
        "history_latent": (history_latent_variant(reward_text, reward_image, data, split, keywords, generator, zoo, users,
                                                  roles.selection.tolist(), roles.training.tolist())
                           if history_latent else "not asked for (evaluate.generation.history_latent_baseline=true)"),
        "hybrid": hybrid_variant(reward_text, reward_image, data, history, tokens, generator),
        "retrieve": RetrievalVariant(state.model.scorer(state.graph, state.embeddings, cold_start_history=state.cold_start_history),
                                     history, image_size),
        "tokens_sft": token_variant(sft_text, sft_image, data, history, tokens, generator),
        "tokens_reward": replace(token_variant(reward_text, reward_image, data, history, tokens, generator), image_choice=choice),
    }
    if generator.prompt is PromptMode.keywords_and_tokens:
        variants["hybrid"] = variants["tokens_reward"]
    return variants


def generate_variants(variants: Mapping[str, GenerationVariant | str], data: InteractionData, generator: GeneratorConfig,
                      users: Sequence[int], progress: bool = False) -> dict[str, list[UserGeneration] | str]:
    """Every variant's generations for ``users`` (a missing variant keeps its reason)."""
    generations: dict[str, list[UserGeneration] | str] = {}
    made: dict[int, list[UserGeneration]] = {}  # by variant object: one shared by two names is generated once
    with torch.no_grad():
        for name, variant in variants.items():
            if isinstance(variant, str):
                generations[name] = variant
                continue
            if id(variant) in made:
                generations[name] = made[id(variant)]
                continue
            started = time.perf_counter()
            generations[name] = made[id(variant)] = variant.generate_many(data, generator, users)
            if progress:
                print(f"  [{name}] {len(users)} users in {time.perf_counter() - started:.0f}s", flush=True)
    return generations


def generation_judges(zoo: Zoo) -> GenerationJudges:
    """The zoo's attribute judge (or why it is missing) and its CLIP embedder."""
    try:
        judge, judge_missing = zoo.load_judge(), ""
    except ZooError as err:
        judge, judge_missing = None, str(err)
    clip, processor = zoo.load_clip()
    return GenerationJudges(judge, judge_missing, ConsistencyReward.from_model(clip, processor).embedder)


def _generation(run: RunDirectory, data: InteractionData, split: Split, tokens: UserTokens,
                config: EvaluateConfig) -> tuple[Section, dict[str, Any], dict[str, list[Any]]]:
    """The generation section, the ``generations.json`` record and the images per variant."""
    zoo = load_zoo(run)
    generator = load_config(GeneratorConfig, run.stage_dir("generator") / "config.yaml")
    settings = config.generation
    users = evaluation_users(run, data, tokens, settings.num_users)
    if len(users) < 2:
        reason = f"only {len(users)} evaluation user(s) with tokens (data.users.evaluation_fraction)"
        variants: dict[str, GenerationVariant | str] = dict.fromkeys(VARIANTS, reason)
    else:
        variants = generation_variants(run, data, split, zoo, tokens, generator, users,
                                       history_latent=settings.history_latent_baseline)
    generations = generate_variants(variants, data, generator, users)
    section, readings = generation_section(data, split, users, generations, generation_judges(zoo),
                                           settings.consistency_attribute, settings.joint_text_attribute)
    section.notes.append(
        f"{len(users)} of the data stage's evaluation users (never trained on, nor selected on, by any stage), the same for "
        f"every column; one image per user from that user's own seeded noise, and greedy texts ({', '.join(generator.text.targets)}) per user; keywords from each "
        "user's training interactions only")
    position = {u: n for n, u in enumerate(tokens.user_ids)}
    record: dict[str, Any] = {
        "users": [{"user_id": data.user_ids[u],
                   "tokens": {m: tokens.tokenizer.prompt_fragment({m: codes[position[data.user_ids[u]]]})
                              for m, codes in tokens.codes.items()},
                   "tastes": {a: values[u] for a, values in data.user_tastes.items()} if data.user_tastes else None}
                  for u in users],
        "variants": {}, "missing": {},
    }
    images: dict[str, list[Any]] = {}
    for name in VARIANTS:
        generated = generations[name]
        if isinstance(generated, str):
            record["variants"][name] = None
            record["missing"][name] = generated
            continue
        images[name] = [g.image for g in generated]
        variant_readings = readings[name]
        record["variants"][name] = [
            generation_record(g, variant_readings[n] if variant_readings else None,
                              f"generations/{name}/{n:03d}.png" if g.image is not None else None)
            for n, g in enumerate(generated)]
    return section, record, images


def _summary(table: EvaluationTable, out: Path) -> str:
    def value(section: str, metric: str, column: str) -> str:
        try:
            cell = table.section(section).row(metric).cells[column]
        except KeyError:
            return "n/a"
        return f"{cell.value:.3f}" if cell.value is not None else "n/a"

    recommendation = table.section("recommendation")
    recall = recommendation.rows[0].metric if recommendation.rows else "recall@20"
    # Without ground-truth tastes (MovieLens) the favourite-genre rows are what says whether images follow the user.
    favourite = [row.metric for section in table.sections if section.name == "generation" for row in section.rows
                 if row.metric.startswith("image_favourite_") and not row.metric.endswith("_shuffled")]
    favourites = "".join(f"; {metric[len('image_'):].replace('_', ' ')} ours (reward) {value('generation', metric, 'tokens_reward')} "
                         f"vs another user's {value('generation', f'{metric}_shuffled', 'tokens_reward')}" for metric in favourite)
    return (f"{recall} ours {value('recommendation', recall, 'ours')} vs LightGCN {value('recommendation', recall, 'lightgcn')}; "
            f"image personalization ours (reward) {value('generation', 'image_personalization', 'tokens_reward')} vs "
            f"no tokens {value('generation', 'image_personalization', 'no_tokens')}{favourites}; table in {out / EVALUATION_MD}")


def run_evaluate_stage(config: EvaluateConfig, run: RunDirectory, upstream: str, force: bool) -> StageResult:
    """Compute the evaluation table of ``run`` and write it (JSON + Markdown) with the generations.
    An evaluation recorded under another :data:`EVALUATION_PROTOCOL` is computed again, not reused."""
    stage_fp = stage_fingerprint("evaluate", config, fingerprint(upstream, f"protocol {EVALUATION_PROTOCOL}"))
    # Checked before anything is cleared: a bad config or a missing stage loses no earlier evaluation.
    config.validate()
    require_stages(run, UPSTREAM_STAGES)
    if (reused := reuse_or_clear(run, "evaluate", stage_fp, force)) is not None:
        return reused
    data, split = load_prepared(run)
    tokens = load_user_tokens(run)
    generation, record, images = _generation(run, data, split, tokens, config)
    table = EvaluationTable(str(run.root), data.name, [
        recommendation_section(run, data, split, config), quantizer_section(data, tokens, config.seed), generation])
    out = run.root / "evaluate"
    with atomic_directory(out) as tmp:
        (tmp / EVALUATION_JSON).write_text(json.dumps(table.to_json(), indent=2))
        (tmp / EVALUATION_MD).write_text(table.to_markdown(VARIANT_LABELS))
        (tmp / GENERATIONS_JSON).write_text(json.dumps(record, indent=2))
        for name, pictures in images.items():
            folder = tmp / "generations" / name
            folder.mkdir(parents=True)
            for n, picture in enumerate(pictures):
                if picture is not None:
                    picture.save(folder / f"{n:03d}.png")
        write_stage_record(tmp, table.flat_metrics(), config)
    summary = _summary(table, out)
    return complete_stage(run, "evaluate", stage_fp, summary)


def load_evaluation(run: RunDirectory) -> tuple[EvaluationTable, dict[str, Any]]:
    """The evaluate stage's table and generations record (``RunError`` saying what to run if missing or damaged)."""
    run.require("evaluate")
    out = run.stage_dir("evaluate")
    try:
        table = EvaluationTable.read(out / EVALUATION_JSON)
        record = json.loads((out / GENERATIONS_JSON).read_text())
    except (OSError, ValueError, KeyError) as err:
        raise RunError(f"the evaluation in {out} is damaged ({err}); rerun `pmg evaluate --run {run.root}`") from err
    return table, record


EVALUATE_STAGE = Stage("evaluate", "evaluate", EvaluateConfig, run_evaluate_stage,
                       "one table of recommendation, quantizer and generation metrics against baselines")
