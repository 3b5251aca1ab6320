"""Generation tasks from the user's tokens: explanations, and tokens conditioned on a reference item."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pmg.config import load_config
from pmg.data.dataset_stage import load_prepared
from pmg.data.format import InteractionData
from pmg.generator.config import GeneratorConfig
from pmg.generator.generate import ImageChoice, load_generators
from pmg.generator.prompts import prompt_templates, user_prompts
from pmg.preference.stage import load_preferences
from pmg.quantize.stage import load_user_tokens
from pmg.reward import image_choice, load_reward_generators
from pmg.runs import RunDirectory, RunError
from pmg.tasks.config import ExplainConfig, ReferenceConfig
from pmg.tasks.state import history_items, lookup_item, lookup_user
from pmg.zoo.manifest import load_zoo
from prefgen import ImagePreferenceAdapter, TextPreferenceAdapter, build_text_prompt
from prefgraph import history_weights, weighted_history
from prefquant import PreferenceTokenizer, ResidualQuantizer

__all__ = ["Explanation", "explain", "ReferenceTokens", "reference_tokens", "resolve_reference", "run_generators",
           "run_image_choice"]


def run_generators(run: RunDirectory, *, sft: bool = False
                   ) -> tuple[str, TextPreferenceAdapter | None, ImagePreferenceAdapter | None]:
    """The adapters ``pmg generate`` uses: the reward stage's when it has run (unless ``sft``), else the
    generator stage's; with the name of that stage ("reward" or "generator") and the adapters (None
    where not trained)."""
    if run.record("reward") is not None and not sft:
        return ("reward", *load_reward_generators(run, load_zoo(run)))
    return ("generator", *load_generators(run, load_zoo(run)))


def run_image_choice(run: RunDirectory, stage: str) -> ImageChoice | None:
    """How ``pmg generate`` picks a user's image with the adapters of ``stage`` (what
    :func:`run_generators` named): the reward stage's best of ``reward.image.candidates``
    (:func:`pmg.reward.image_choice`); the generator stage's adapters draw one image."""
    return image_choice(run, load_zoo(run)) if stage == "reward" else None


@dataclass(frozen=True)
class Explanation:
    """Why ``user_id`` would like ``item_id``, in the words of the review-trained text adapter."""

    user_id: str
    item_id: str
    title: str
    prompt: str
    text: str
    cold_start: bool  # the user has no tokens: the no-token prompt was used


def explain(run: RunDirectory, user_id: str, item_id: str, config: ExplainConfig) -> Explanation:
    """Continue ``User <textual tokens> would love: <title> review:`` with the generator stage's text adapter.

    The adapter learnt ``… would love: review:`` → a review of a liked item; the item's title in
    front of the review context points it at that item.
    """
    config.validate()
    run.require("generator")
    generator = load_config(GeneratorConfig, run.stage_dir("generator") / "config.yaml")
    if not generator.text.enabled or "review" not in generator.text.targets:
        raise RunError("the run's text generator was not trained on reviews: set generator.text.enabled=true with "
                       f"'review' in generator.text.targets and rerun `pmg pipeline --run {run.root} --force generator`")
    data, split = load_prepared(run)
    user, item = lookup_user(run, data, user_id), lookup_item(run, data, item_id)
    fragment = user_prompts(data, generator, load_user_tokens(run), split.train, users=[user]).text[0]
    title = data.items[item].title or item_id
    prompt = build_text_prompt(fragment, f"{title} {generator.text.context_of('review')}",
                               prompt_templates(data, generator.image.default_subject, generator.text.audience))
    text_adapter, _ = load_generators(run, load_zoo(run))
    if text_adapter is None:
        raise RunError(f"{run.stage_dir('generator')} has no text adapter; rerun `pmg pipeline --run {run.root} --force generator`")
    text = text_adapter.generate([prompt], max_new_tokens=config.max_new_tokens, min_new_tokens=config.min_new_tokens,
                                 do_sample=config.do_sample, temperature=config.temperature, seed=config.seed)[0]
    return Explanation(user_id, item_id, data.items[item].title, prompt, text.strip(), fragment is None)


@dataclass(frozen=True)
class ReferenceTokens:
    """A user's codes re-read with the history weighted by similarity to a reference item.

    ``history`` are the item ids [H] of the user's interactions (the reference left out);
    ``weights[m]`` their weights [H] in modality ``m`` (sum 1); ``codes[m]`` the codes [L].
    """

    user_id: str
    reference_id: str
    history: list[str]
    weights: dict[str, torch.Tensor]
    codes: dict[str, torch.Tensor]
    tokenizer: PreferenceTokenizer

    def fragment(self, modalities: list[str]) -> str:
        """The prompt fragment of ``modalities`` (those with codes), e.g. ``"<pv_0_3><pv_1_9>"``."""
        return self.tokenizer.prompt_fragment({m: self.codes[m] for m in modalities if m in self.codes})

    def top_history(self, modality: str, count: int = 3) -> list[tuple[str, float]]:
        """The ``count`` history items with the largest weight in ``modality``: (item id, weight)."""
        weights = self.weights[modality]
        order = weights.argsort(descending=True)[:count].tolist()
        return [(self.history[i], float(weights[i])) for i in order]


@torch.no_grad()
def reference_tokens(run: RunDirectory, data: InteractionData, user: int, reference: int,
                     config: ReferenceConfig) -> ReferenceTokens | None:
    """Tokens of data user ``user`` personalised towards item ``reference`` (RAGAR-style weighting).

    Per modality with codes: the user's history items (every interaction but the reference) get
    ``history_weights`` by cosine similarity to the reference in the preference stage's item
    embeddings (centred on the catalog mean); their weighted mean (``weighted_history``, a fold-in
    of the history as for cold-start users) is mixed into the user's preference and encoded by the
    run's quantizer.
    None when the user has no tokens or no history besides the reference.
    """
    config.validate()
    tokens = load_user_tokens(run)
    user_id = data.user_ids[user]
    if user_id not in tokens.user_ids:
        return None
    history = history_items(data, user)
    history = history[history != reference]
    if len(history) == 0:
        return None
    prefs = load_preferences(run)
    weights, codes = {}, {}
    for modality in tokens.codes:
        if modality not in prefs.item_embeddings:
            continue
        items = prefs.item_embeddings[modality]  # [I, d]
        # Propagated item embeddings share a large common component (raw cosines all near 1, so the
        # weights would be uniform); similarity is measured on what sets items apart from the mean.
        mean = items.mean(0)  # [d]
        past, target = items[torch.from_numpy(history)] - mean, items[reference] - mean  # [H, d], [d]
        weights[modality] = history_weights(past, target, config.temperature)
        # The weights sum to 1, so adding the mean back gives the weighted mean of the raw embeddings.
        folded = weighted_history(past, target, config.temperature) + mean  # [d]
        mixed = (1.0 - config.weight) * prefs.user_preferences[modality][user] + config.weight * folded  # rows follow data users
        try:
            quantizer = ResidualQuantizer.from_pretrained(run.stage_dir("quantize") / modality)
        except Exception as err:  # safetensors and json raise several types
            raise RunError(f"the {modality} quantizer of {run.root} is damaged ({err}); rerun with --force quantize") from err
        codes[modality] = quantizer.encode(mixed.unsqueeze(0))[0]
    return ReferenceTokens(user_id, data.items[reference].item_id, [data.items[i].item_id for i in history.tolist()],
                           weights, codes, tokens.tokenizer)


def resolve_reference(run: RunDirectory, data: InteractionData, item_id: str) -> int:
    """The data index of reference item ``item_id``, which must have an image (img2img starts from it)."""
    reference = lookup_item(run, data, item_id)
    if data.items[reference].image is None:
        raise RunError(f"item {item_id!r} has no image to use as a reference")
    return reference
