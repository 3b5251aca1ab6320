"""Image personalization over the sampler's seeds, and whether a scorer without the judge can pick
the more personal of a user's images.

Usage:
    uv run --frozen python benchmarks/image_seeds.py                 # both profiles' benchmark runs, 5 seeds
    uv run --frozen python benchmarks/image_seeds.py --runs sparse=runs/bench-generation-sparse --seeds 3 --users 100
    uv run --frozen python benchmarks/image_seeds.py --role selection --seeds 4 --users 0   # the selection users, to choose by
    uv run --frozen python benchmarks/image_seeds.py --runs sparse=runs/bench-generation-sparse --role training --seeds 8 --best-of 4
    uv run --frozen python benchmarks/image_seeds.py --check-file saved.log   # a saved output against TARGETS (none)

`benchmarks/generation.py` judges one image per user and variant, each user's from their own noise
(``pmg.generator.generate.user_seed`` of ``generator.sample.seed``; until that existed, one noise for
every user, so that the whole figure rested on one draw of it). This benchmark draws each evaluation
user's image at ``--seeds`` seeds (``user_seed`` of ``sample.seed`` + 0, 1, ...; seed 0 is the image
`generation.py` judges for a variant that draws one image; the default variant's judged image is the
best of its first ``reward.image.candidates`` seeds by the ``personalization`` scorer) for the default variant (``tokens_reward``) and the two keyword
baselines (``keywords``: the zoo's models, ``keywords_tuned``: the run's final adapters), with the
prompts and texts of `pmg evaluate` (texts are greedy, written once). The runs are those
`benchmarks/generation.py` built (``runs/bench-generation-<profile>``, or the run itself where it had
the soft-prompt baseline); run it first.

Per profile:

- per variant, image personalization (the judged share of the user's visual tastes) at each seed,
  the mean over seeds with a 95% bootstrap interval over users, and each taste's mean rate;
- the default variant minus each keyword baseline, per seed and over seeds (interval over users of
  each user's mean difference): how much of one seed's margin is the draw of the noise;
- best of the seeds: per user, the image a scorer ranks first, judged. Scorers: ``personalization``,
  the reward stage's personalization term (the zoo CLIP's image embedding mapped into the preference
  stage's item space by the ridge map ``pmg.reward.fit_content_maps`` fits, cosine with the user's
  visual preference vector); ``personalization_pixels``, the same from the preference stage's own
  image features (``pixels``) by a ridge map fitted likewise; ``recommender``, the preference stage's
  own score of the image as a new item (its GNN's visual projection of the image's ``pixels``
  features, cosine with the user's visual preference); ``prompt``, how well the image follows its
  own prompt (the zoo CLIP's image–text cosine; no user model); ``history_clip`` and ``history_pixels``,
  the user's ``clip_i_history`` / ``pixel_history`` of the evaluation (``pmg.evaluate.field_metrics``:
  the mean cosine with the user's training-split item images; words-and-images, no tokens); ``first`` (seed 0); and the judge itself
  (``oracle``: a bound on what any choice among these images reaches, not a method). With each, its
  ``agreement``: over pairs of one user's images whose judged shares differ, the share the scorer
  orders as the judge does (0.5 is chance), averaged per user, with an interval over users; and each
  taste's rate in the chosen images.

No stage trains or selects on these users, and nothing here is chosen on them: the scorers are fixed.
With ``--role selection`` the same figures are for the data stage's selection users instead (those the
stages choose settings on, never evaluated): what a choice of scorer or of the number of candidates
may be made on; ``--role training``, for users the stages trained on (more of them than the 50
selection users, to compare scorers on; the adapters have seen their items).
No target is stated (``TARGETS`` is empty): the figures qualify `generation.py`'s one-seed figures.

The LAST line is one JSON object: ``{"seeds", "profiles": {profile: {"run", "role", "n_users",
"variants": {variant: {"per_seed", "mean", "mean_ci", "<taste>"}}, "differences": {"default_vs_<baseline>":
{"per_seed", "mean", "mean_ci"}}, "best_of_seeds": {variant: {scorer: {"image_personalization",
"image_personalization_ci", "agreement", "agreement_ci", "<taste>"}}}, "best_of_first": {K: {variant: {scorer: ...}}}}},
"minutes"}`` (``best_of_first`` only with ``--best-of``).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from pmg.benchmark_targets import Targets, parse_args_with_check, print_result
from pmg.config import load_config
from pmg.evaluate.field_metrics import FieldReferences
from pmg.evaluate.generation import history_items, image_tensor, item_embeddings
from pmg.evaluate.intervals import bootstrap_interval
from pmg.evaluate.stage import (
    evaluation_users,
    generate_variants,
    generation_variants,
    load_generation_inputs,
)
from pmg.features import PIXEL_SIZE, FeatureEncoderSpec, encode_items, pixel_features, rgb_array
from pmg.generator.evaluation import judge_attribute_hits, taste_attributes, visual_taste_judge
from pmg.generator.generate import generate_images, user_seed
from pmg.preference import PreferenceConfig
from pmg.preference.stage import load_preferences
from pmg.reward import RewardConfig, fit_content_maps
from pmg.runs import RunDirectory, RunError
from pmg.tasks.state import load_preference_state
from prefquant import fit_linear_map
from prefreward import ConsistencyReward, PersonalizationReward

TARGETS: Targets = {}
REPO = Path(__file__).resolve().parents[1]
DEFAULT_VARIANT = "tokens_reward"
BASELINES = ("keywords", "keywords_tuned")
# Which scorers choose among which variant's images: the personalization term needs the user's
# preference vector, which a words-only variant does not have.
SCORERS = {DEFAULT_VARIANT: ("first", "personalization", "personalization_pixels", "recommender", "prompt", "history_clip",
                             "history_pixels", "oracle"),
           "keywords_tuned": ("first", "prompt", "history_clip", "history_pixels", "oracle")}
_EMBED_BATCH = 64


def _benchmark_run(profile: str) -> Path:
    """The run `benchmarks/generation.py` judges for ``profile``: its copy with the soft-prompt baseline if it made one."""
    copy = REPO / "runs" / f"bench-generation-{profile}"
    return copy if copy.is_dir() else REPO / "runs" / profile


def _rounded(values: Sequence[float]) -> list[float]:
    return [round(float(v), 4) for v in values]


def _agreement(scores: torch.Tensor, shares: torch.Tensor) -> np.ndarray:
    """Per user with at least one pair of images judged differently, the share of such pairs that
    ``scores`` [U, S] orders as ``shares`` [U, S] do (score ties count half): float [U']."""
    out = []
    for score, share in zip(scores.tolist(), shares.tolist(), strict=True):
        pairs = [(i, j) for i in range(len(share)) for j in range(i + 1, len(share)) if share[i] != share[j]]
        if pairs:
            out.append(np.mean([0.5 if score[i] == score[j] else float((score[i] > score[j]) == (share[i] > share[j]))
                                for i, j in pairs]))
    return np.asarray(out, dtype=float)


def _embed(embedder: object, images: Sequence[object]) -> torch.Tensor:
    """Unit CLIP image embeddings [N, d_c] of PIL ``images``."""
    with torch.no_grad():
        return torch.cat([embedder.embed_images(torch.stack([image_tensor(i) for i in images[s : s + _EMBED_BATCH]]))
                          for s in range(0, len(images), _EMBED_BATCH)])


def _best_of(scores: dict[str, torch.Tensor], share: torch.Tensor, hits: torch.Tensor, tastes: Sequence[str],
             scorers: Sequence[str], k: int, variant: str) -> dict[str, dict[str, object]]:
    """Per scorer, the judged figures of the image it ranks first among each user's first ``k``
    seeds: ``scores`` {scorer: [seeds, U]}, ``share`` [seeds, U] judged shares, ``hits`` [seeds, tastes, U]."""
    out: dict[str, dict[str, object]] = {}
    for scorer in scorers:
        score = scores[scorer][:k]
        chosen = score.argmax(dim=0)  # [U]
        picked = share[:k].gather(0, chosen[None]).squeeze(0).numpy()
        agreement = _agreement(score.T, share[:k].T)
        out[scorer] = {"image_personalization": round(float(picked.mean()), 4), "image_personalization_ci": _rounded(bootstrap_interval(picked)),
                       "agreement": round(float(agreement.mean()), 4) if len(agreement) else None,
                       "agreement_ci": _rounded(bootstrap_interval(agreement)) if len(agreement) > 1 else None,
                       **{t: round(float(hits[:k, n].gather(0, chosen[None]).float().mean()), 4) for n, t in enumerate(tastes)}}
        print(f"  best of {k} {variant} by {scorer}: {out[scorer]['image_personalization']} "
              f"(agrees with the judge on {out[scorer]['agreement']} of pairs; "
              + ", ".join(f"{t} {out[scorer][t]}" for t in tastes) + ")", flush=True)
    return out


def profile_figures(run: RunDirectory, seeds: int, limit: int,
                    role: Literal["evaluation", "selection", "training"] = "evaluation",
                    best_of: Sequence[int] = ()) -> dict[str, object]:
    """This benchmark's figures for one run (see the module docstring), at ``seeds`` seeds for at most
    ``limit`` (0: all) of the data stage's ``role`` users; the best of each user's first ``k`` seeds
    too for each ``k`` of ``best_of`` (``best_of_first``)."""
    inputs = load_generation_inputs(run, tastes_for="benchmarks/image_seeds.py")
    data, split, zoo, tokens, generator = inputs.data, inputs.split, inputs.zoo, inputs.tokens, inputs.generator
    judge = visual_taste_judge(data, zoo)
    if judge is None:
        raise RunError(f"{run.root}: the zoo has no judge reading the catalog's visual tastes")
    tastes = [t for t in taste_attributes(data, "visual") if t in judge.attributes]
    users = evaluation_users(run, data, tokens, limit, role)
    built = generation_variants(run, data, split, zoo, tokens, generator, users)
    variants = {name: built[name] for name in (DEFAULT_VARIANT, *BASELINES)}
    missing = {name: v for name, v in variants.items() if isinstance(v, str)}
    if missing:
        raise RunError(f"{run.root}: variants missing: {missing}")
    # One draw per seed: the best-of choice `pmg evaluate` makes for the default variant
    # (reward.image.candidates) is what best_of_seeds studies, over these same draws.
    variants = {name: dataclasses.replace(v, image_choice=None) for name, v in variants.items()}
    print(f"[{run.root.name}] {len(users)} {role} users, {seeds} seeds", flush=True)
    generations = generate_variants(variants, data, generator, users, progress=True)

    images: dict[str, list[list[object]]] = {}  # variant -> [seed][user]
    hits: dict[str, torch.Tensor] = {}  # variant -> [seeds, tastes, users] bool
    for name, variant in variants.items():
        made = generations[name]
        assert not isinstance(made, str) and variant.image is not None
        prompts = [g.image_prompt for g in made]
        started = time.perf_counter()
        drawn = [[g.image for g in made]]
        with torch.no_grad():
            for k in range(1, seeds):
                drawn.append([image for s in range(0, len(prompts), 16)
                              for image in generate_images(variant.image, prompts[s : s + 16], generator,
                                                           [user_seed(generator.sample.seed + k, data, u) for u in users[s : s + 16]])])
        images[name] = drawn
        hits[name] = torch.stack([
            torch.stack([judge_attribute_hits(batch, [data.user_tastes[t][u] for u in users], judge, t, readings) for t in tastes])
            for batch in drawn for readings in [judge.predict_values(batch)]])
        print(f"  [{name}] {seeds - 1} more seeds in {time.perf_counter() - started:.0f}s", flush=True)

    share = {name: h.float().mean(dim=1) for name, h in hits.items()}  # [seeds, users]
    figures: dict[str, object] = {"run": str(run.root), "role": role, "n_users": len(users), "tastes": tastes, "variants": {}, "differences": {},
                                  "best_of_seeds": {}}
    for name, values in share.items():
        per_user = values.mean(dim=0).numpy()
        figures["variants"][name] = {
            "per_seed": _rounded(values.mean(dim=1)), "mean": round(float(per_user.mean()), 4),
            "mean_ci": _rounded(bootstrap_interval(per_user)),
            **{t: round(float(hits[name][:, n].float().mean()), 4) for n, t in enumerate(tastes)},
        }
        print(f"  {name}: image personalization per seed {figures['variants'][name]['per_seed']}, "
              f"mean {figures['variants'][name]['mean']} {figures['variants'][name]['mean_ci']}", flush=True)
    for baseline in BASELINES:
        difference = share[DEFAULT_VARIANT] - share[baseline]  # [seeds, users]
        per_user = difference.mean(dim=0).numpy()
        figures["differences"][f"default_vs_{baseline}"] = {
            "per_seed": _rounded(difference.mean(dim=1)), "mean": round(float(per_user.mean()), 4),
            "mean_ci": _rounded(bootstrap_interval(per_user))}
        print(f"  default - {baseline}: per seed {figures['differences'][f'default_vs_{baseline}']['per_seed']}", flush=True)

    clip, processor = zoo.load_clip()
    embedder = ConsistencyReward.from_model(clip, processor).embedder
    size = variants[DEFAULT_VARIANT].image.image_size
    history = history_items(data, split, users)
    # The evaluation's own references: history_clip / history_pixels are its clip_i_history / pixel_history per user.
    references = FieldReferences.of_users(data, history, [np.zeros(0, dtype=np.int64)] * len(users),
                                          item_embeddings(data, np.unique(np.concatenate(history)), embedder, "image"))
    preferences = load_preferences(run)
    reward = load_config(RewardConfig, run.stage_dir("reward") / "config.yaml")
    visual_map = fit_content_maps(data, {"visual": preferences.item_embeddings["visual"]}, embedder, image_size=size,
                                  text_target="description", ridge=reward.map_ridge)["visual"]  # [d, d_c]
    personalization = PersonalizationReward(visual_map.shape[1], visual_map.shape[0], weight=visual_map)
    user_vectors = preferences.user_preferences["visual"][torch.as_tensor(users)].float()  # [U, d]
    # The preference stage's own image features (the default encoder, model-free pixels) mapped into its
    # item space the same way: what the reward's term would see if it read images as the GNN does.
    features = load_config(PreferenceConfig, run.stage_dir("preference") / "config.yaml").features
    if features.visual != "pixels":
        raise RunError(f"{run.root}: the pixel scorers need the preference stage's visual encoder 'pixels', not {features.visual!r}")
    items = encode_items(data, FeatureEncoderSpec("visual", "pixels"), features.cache_dir or None)
    known = items.mask.nonzero().flatten()
    pixel_map = fit_linear_map(items.values[known], preferences.item_embeddings["visual"][known].float(), ridge=reward.map_ridge)  # [256, d]
    projection = load_preference_state(run).model.item_projections["visual"].requires_grad_(False)  # features [*, 256] -> [*, d]
    for name, scorers in SCORERS.items():
        content = torch.stack([_embed(embedder, batch) for batch in images[name]])  # [seeds, U, d_c]
        raw_pixels = torch.stack([torch.from_numpy(np.stack([pixel_features(rgb_array(i, PIXEL_SIZE)) for i in batch]))
                                  for batch in images[name]]).float()  # [seeds, U, 256], as the preference stage encodes items
        pixels = torch.nn.functional.normalize(raw_pixels, dim=-1)  # the evaluation's unit pixel vectors (field_metrics.pixel_vectors)
        with torch.no_grad():
            prompts = embedder.embed_texts([g.image_prompt for g in generations[name]])  # [U, d_c], unit
        scores = {
            "first": -torch.arange(seeds, dtype=torch.float32)[:, None].expand(seeds, len(users)),
            "oracle": share[name],
            "history_clip": torch.stack([references.user_similarities("history", "clip", content[k]) for k in range(seeds)]).nan_to_num(0.0),
            "personalization": torch.stack([personalization(content[k], user_vectors) for k in range(seeds)]),
            "personalization_pixels": torch.nn.functional.cosine_similarity(pixels @ pixel_map, user_vectors[None], dim=-1),
            "recommender": torch.nn.functional.cosine_similarity(projection(raw_pixels), user_vectors[None], dim=-1),
            "prompt": (content * prompts[None]).sum(dim=-1),
            "history_pixels": torch.stack([references.user_similarities("history", "pixels", pixels[k]) for k in range(seeds)]).nan_to_num(0.0),
        }
        figures["best_of_seeds"][name] = _best_of(scores, share[name], hits[name], tastes, scorers, seeds, name)
        for k in best_of:
            figures.setdefault("best_of_first", {}).setdefault(str(k), {})[name] = _best_of(scores, share[name], hits[name], tastes,
                                                                                         scorers, k, name)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", metavar="PROFILE=RUN", default=None,
                        help="the runs to judge, named (default: default and sparse, the runs benchmarks/generation.py built)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per user's image (at least 2)")
    parser.add_argument("--users", type=int, default=200, help="at most this many users of --role (0: all)")
    parser.add_argument("--role", choices=("evaluation", "selection", "training"), default="evaluation",
                        help="whose images: the data stage's evaluation users, its selection users (to choose settings on), "
                             "or its training users (more users, to compare scorers on)")
    parser.add_argument("--best-of", type=int, nargs="*", default=[], metavar="K",
                        help="also choose among each user's first K seeds only, for each K (2 <= K < --seeds)")
    args = parse_args_with_check(parser, TARGETS)
    if any(not 2 <= k < args.seeds for k in args.best_of):
        parser.error(f"--best-of values must be at least 2 and below --seeds ({args.seeds}), got {args.best_of}")
    if args.seeds < 2:
        parser.error("--seeds must be at least 2: one seed is what benchmarks/generation.py judges")
    if args.runs and any("=" not in item for item in args.runs):
        parser.error(f"--runs takes PROFILE=RUN pairs (e.g. sparse=runs/bench-generation-sparse), got {args.runs}")
    named = dict(item.split("=", 1) for item in args.runs) if args.runs else {p: str(_benchmark_run(p)) for p in ("default", "sparse")}
    started = time.perf_counter()
    profiles = {profile: profile_figures(RunDirectory(Path(path)), args.seeds, args.users, args.role, args.best_of)
                for profile, path in named.items()}
    print_result({"seeds": args.seeds, "profiles": profiles, "minutes": round((time.perf_counter() - started) / 60, 2),
                  "torch_threads": torch.get_num_threads()}, TARGETS, args.check)


if __name__ == "__main__":
    main()
