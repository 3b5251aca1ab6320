"""Generation section of the evaluation table: every variant judged on the same evaluation users.

Variants (the same sampling settings, ``generator.sample``: greedy text, seeded diffusion; a user's
image in every variant from the same noise, that user's own (:func:`pmg.generator.generate.user_seed`),
so variants differ only by their conditioning and a figure over users averages over as many draws of
the noise):

- ``no_tokens``: the generator stage's adapters with the no-token prompt (what the tokens add);
- ``soft_prompt``: the continuous baseline (``<run>/generator/soft_prompt``), each user's preference
  vectors projected into the placeholders (no quantization);
- ``keywords`` (PMG-style): the user's history keywords (``pmg.data.keywords``: read from their
  training interactions only) where the tokens would go: in the text prompt, and describing the
  image subject ("a red striped dress"), through the zoo's models as they are (a pretrained
  generator prompted with words, as PMG does; with ``generator.prompt=tokens`` the tuned LM
  learns to follow tokens and no longer copies words from its prompt, which would handicap it);
- ``keywords_tuned``: the same keywords, no tokens, through the pipeline's final adapters: with
  ``generator.prompt=keywords_and_tokens`` they were trained on prompts with words, and some
  without tokens, so this is the words-only baseline with the same training as the tokens;
- ``keywords_best_of`` (words and images, no tokens): ``keywords_tuned`` with each user's image the
  best of as many as ``tokens_reward`` draws (``reward.image.candidates``), chosen by its mean
  similarity to the user's own history images in model-free pixel features
  (:class:`HistoryPixelScorer`): the words' baseline at the same sampling cost as the tokens';
- ``history_latent`` (words and images, no tokens; when asked for): ``keywords_tuned`` with each
  user's initial latents shifted by the mean latent of their own liked history images
  (:func:`pmg.generator.latent_prior.history_latent_offsets`), at the scale that shows the
  selection users' visual tastes best: what the tokens' latent prior does, read straight off the
  history instead of through the tokens;
- ``hybrid``: those keywords and the user's tokens together, through the pipeline's final
  (reward-stage) adapters (with ``generator.prompt=keywords_and_tokens``, the default, this is
  ``tokens_reward``: the adapters were trained on such prompts);
- ``retrieve`` ("recommend, not generate"): the image and text (title and description) of the
  item the preference stage ranks first for the user outside their training history;
- ``tokens_sft``: the generator stage's adapters prompted as the run prompts (``generator.prompt``:
  the user's discrete tokens, with their history keywords by default);
- ``tokens_reward``: the reward stage's adapters prompted so, each image the best of
  ``reward.image.candidates`` by the reward's personalization term (:mod:`pmg.reward.choice`):
  what ``pmg generate`` gives a user.

Metrics per variant (``pmg.generator.evaluation`` for the ground-truth checks), each with a 95%
bootstrap interval over the users (``pmg.evaluate.intervals``) and the number of users it rests on:

- personalization accuracy: the judge reads the user's true value of each visual taste in the
  image; the text names the user's true value of each textual taste first; and their per-user means;
- favourite values, on a dataset without ground-truth tastes whose judge has a multi-label head
  (MovieLens genres): the judge's most likely value in the image is one of the user's favourites,
  the :data:`FAVOURITE_COUNT` values most frequent among their held-out future items
  (:func:`favourite_values`); beside it the same with every image compared with another evaluated
  user's favourites (:func:`favourite_hits`), the baseline a generic image of the most popular
  value also reaches;
- cross-modal consistency: the text names first the ``consistency_attribute`` value (colour)
  the judge reads in the image;
- joint: per user, the image shows the user's ``consistency_attribute`` value, the text names
  the user's ``joint_text_attribute`` value, and the two agree (consistency): a generic prompt
  whose every text names red beside a red image is consistent, not joint;
- CLIP score: cosine of the zoo CLIP's embeddings of the image and of the text, in [-1, 1]. The
  reward stage optimises this CLIP, so the CLIP rows are not independent of the reward-tuned
  variants: prefer the judge-based rows;
- user-preference score: the generated content against the user's held-out future items (the
  split's validation + test items): for each user, the share of the other evaluated users whose
  future items are less similar to the content than the user's own (mean CLIP cosine; ties
  count half); 0.5 is chance. Image against item images, text against item texts;
- the field's metrics (``pmg.evaluate.field_metrics``: CLIP-I, SSIM, model-free pixel features
  and a colour-histogram FID for images; BLEU, ROUGE-L and distinct-n for texts), against the
  user's history (training-split items) or their held-out targets.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pmg.data.images import load_image, load_image_tensor
from pmg.data.keywords import HistoryKeywords
from pmg.evaluate.field_metrics import FIELD_ROWS, FieldReferences, field_cells, pixel_vectors
from pmg.evaluate.table import Cell, Section
from pmg.generator.config import PromptMode
from pmg.generator.evaluation import (
    consistency_hits,
    judge_attribute_hits,
    taste_attributes,
    text_attribute_hits,
    visual_taste_judge,
)
from pmg.generator.generate import ImageChoice, SoftPromptGenerators, UserGeneration, generate_for_users
from pmg.generator.latent_prior import choose_scale, history_latent_offsets, visual_taste_share
from pmg.generator.prompts import keyword_prompts, prompt_keywords, user_prompts
from prefgen import ImagePreferenceAdapter, TextPreferenceAdapter

if TYPE_CHECKING:
    from PIL.Image import Image

    from pmg.data.format import InteractionData, Item
    from pmg.data.split import Split
    from pmg.generator.config import GeneratorConfig
    from pmg.quantize.stage import UserTokens
    from pmg.zoo.judge import AttributeJudge
    from pmg.zoo.manifest import Zoo
    from prefgraph import Scorer
    from prefreward._clip import ClipEmbedder

__all__ = ["VARIANTS", "VARIANT_LABELS", "FAVOURITE_COUNT", "GenerationJudges", "HistoryPixelScorer", "RetrievalVariant",
           "VariantGenerators",
           "favourite_hits", "favourite_values", "future_items", "zoo_generators",
           "generation_record", "generation_section", "history_items", "item_embeddings", "history_latent_variant", "hybrid_variant", "image_tensor", "keyword_variant",
           "no_token_variant", "soft_prompt_variant", "token_variant", "user_keywords"]

VARIANTS = ("no_tokens", "soft_prompt", "keywords", "keywords_tuned", "keywords_best_of", "history_latent", "hybrid", "retrieve",
            "tokens_sft", "tokens_reward")
VARIANT_LABELS = {"no_tokens": "no tokens", "soft_prompt": "soft prompt", "keywords": "keywords",
                  "keywords_tuned": "keywords (tuned adapters)", "keywords_best_of": "keywords, best of history-like images",
                  "history_latent": "keywords + history latent",
                  "hybrid": "keywords + tokens",
                  "retrieve": "retrieve (top-1 item)", "tokens_sft": "ours (SFT)", "tokens_reward": "ours (reward)"}
# How many of a user's most frequent future values are their favourites (MovieLens: genres). Three:
# a movie has 2.3 of ml-latest-small's 19 genres on average, so a user's few future movies already
# name several; the top 3 keep what they mostly watch and leave out most of the rest.
FAVOURITE_COUNT = 3


@dataclass
class VariantGenerators:
    """One generated variant: its text/image adapters and how a user is put in the prompts.

    ``text_fragments`` / ``image_fragments``: per data user, the prompt fragment (tokens, keywords
    or both; None entries or lists: the no-token prompt). ``subject_keywords``: per data user, the
    {attribute: value} words that describe the image subject (None: none). With ``soft`` the
    prompts carry the baseline's placeholders, filled from ``preferences`` ({modality: [U, d]}).
    ``latent_offsets``: per data user, a shift of the image's initial latents, [U, C] (None: none).
    ``image_choice``: each user's image is the best of several (None: one draw).
    """

    text: TextPreferenceAdapter | None
    image: ImagePreferenceAdapter | None
    history: np.ndarray
    text_fragments: Sequence[str | None] | None = None
    image_fragments: Sequence[str | None] | None = None
    subject_keywords: Sequence[Mapping[str, str] | None] | None = None
    soft: SoftPromptGenerators | None = None
    preferences: Mapping[str, torch.Tensor] | None = None
    latent_offsets: torch.Tensor | None = None
    image_choice: ImageChoice | None = None

    def generate(self, data: InteractionData, config: GeneratorConfig, user: int) -> UserGeneration:
        """Texts (one per ``config.text.targets``) and an image for data user ``user``."""
        return self.generate_many(data, config, [user])[0]

    def generate_many(self, data: InteractionData, config: GeneratorConfig, users: Sequence[int]) -> list[UserGeneration]:
        """:meth:`generate` for each of ``users``, batched (each user's image and texts as alone)."""
        if self.soft is not None:
            assert self.preferences is not None
            text_vectors, image_vectors = self.soft.vectors(self.preferences, users)
            return generate_for_users(data, config, users=list(users), text_fragments=[self.soft.fragment(self.text)] * len(users),
                                      image_fragments=[self.soft.fragment(self.image)] * len(users), text_adapter=self.text,
                                      image_adapter=self.image, history=self.history, text_soft_prompt=text_vectors,
                                      image_soft_prompt=image_vectors, image_choice=self.image_choice)

        def per_user(values: Sequence[Any] | None) -> list[Any]:
            return [values[u] if values is not None else None for u in users]

        return generate_for_users(
            data, config, users=list(users), text_fragments=per_user(self.text_fragments),
            image_fragments=per_user(self.image_fragments), text_adapter=self.text, image_adapter=self.image,
            history=self.history, keywords=per_user(self.subject_keywords) if self.subject_keywords is not None else None,
            image_latent_offsets=self.latent_offsets[list(users)] if self.latent_offsets is not None else None,
            image_choice=self.image_choice,
        )


@dataclass
class RetrievalVariant:
    """"Recommend, not generate": each user gets the image and text of the item ``scorer`` ranks
    first outside their training history (``history`` rows), at ``image_size`` pixels."""

    scorer: Scorer
    history: np.ndarray
    image_size: int

    def generate_many(self, data: InteractionData, config: GeneratorConfig, users: Sequence[int]) -> list[UserGeneration]:
        with torch.no_grad():
            scores = self.scorer(torch.as_tensor(list(users), dtype=torch.long)).float().clone()  # [B, I]
        owners = data.user[self.history]
        for row, user in enumerate(users):
            scores[row, torch.from_numpy(data.item[self.history[owners == user]])] = float("-inf")
        results = []
        for user, item in zip(users, scores.argmax(dim=1).tolist(), strict=True):
            record = data.items[item]
            image = None
            if record.image is not None:
                image = load_image(record.image, self.image_size, data.image_read_fit)
            results.append(UserGeneration(data.user_ids[user], False, f"(item {record.item_id})",
                                          {"title": record.title, "description": record.description}, "", image))
        return results


# A row no prompt ever uses: a prefgen adapter needs one new token, and with no LoRA and no
# prompt holding it the adapter generates exactly what the zoo's model does.
_UNUSED_TOKEN = "<pmg_unused>"


def zoo_generators(zoo: Zoo) -> tuple[TextPreferenceAdapter, ImagePreferenceAdapter]:
    """The zoo's LM and SDXL pipeline as they are (no LoRA, no trained token row), behind the
    adapters' generation API so that they sample exactly as the trained variants do."""
    lm, tokenizer = zoo.load_lm()
    return TextPreferenceAdapter(lm, tokenizer, [_UNUSED_TOKEN]).eval(), ImagePreferenceAdapter(zoo.load_sdxl(), [_UNUSED_TOKEN]).eval()


def user_keywords(data: InteractionData, config: GeneratorConfig, history: np.ndarray,
                  users: Sequence[int]) -> list[HistoryKeywords | None]:
    """Per data user, the keywords of their ``history`` rows read as the run's prompts read them
    (``config.keywords``; None for users not in ``users``)."""
    found: list[HistoryKeywords | None] = [None] * data.num_users
    for user, keywords in zip(users, prompt_keywords(data, config, history, users), strict=True):
        found[user] = keywords
    return found


def token_variant(text: TextPreferenceAdapter | None, image: ImagePreferenceAdapter | None, data: InteractionData,
                  history: np.ndarray, tokens: UserTokens, config: GeneratorConfig, mode: PromptMode | None = None) -> VariantGenerators:
    """Adapters prompted as the run prompts (``mode``, None: ``config.prompt``): each user's
    discrete tokens, with their ``history`` keywords for ``keywords_and_tokens``."""
    prompts = user_prompts(data, config, tokens, history, mode)
    return VariantGenerators(text, image, history, prompts.text, prompts.image, prompts.subject_words)


def keyword_variant(text: TextPreferenceAdapter | None, image: ImagePreferenceAdapter | None, data: InteractionData,
                    history: np.ndarray, keywords: Sequence[HistoryKeywords | None], config: GeneratorConfig) -> VariantGenerators:
    """Adapters prompted with each user's history keywords where the tokens would go (no tokens)."""
    text_fragments, subject_words = keyword_prompts(data, keywords, config)
    return VariantGenerators(text, image, history, text_fragments, None, subject_words)


def history_latent_variant(text: TextPreferenceAdapter | None, image: ImagePreferenceAdapter | None, data: InteractionData,
                           split: Split, keywords: Sequence[HistoryKeywords | None], config: GeneratorConfig, zoo: Zoo,
                           users: Sequence[int], selection_users: Sequence[int], training_users: Sequence[int]) -> VariantGenerators | str:
    """The keyword variant through ``text``/``image`` with each of ``users``' initial latents shifted by
    their own history's mean latent (:func:`pmg.generator.latent_prior.history_latent_offsets`), at the
    scale of ``config.image.latent_prior_scales`` whose images show ``selection_users``' visual tastes
    best (the rule the tokens' prior is scaled by); the reason it cannot be built otherwise."""
    if image is None:
        return "the run has no image adapter"
    judge = visual_taste_judge(data, zoo)
    if judge is None or not selection_users:
        return "no selection users, or no zoo judge reading a ground-truth visual taste, to choose the history latents' scale by"
    history = split.train
    offsets = history_latent_offsets(config, data, split, image, [*users, *selection_users], training_users)  # [n, C]
    chosen_words = keyword_prompts(data, user_keywords(data, config, history, selection_users), config)[1]
    selection_words = [chosen_words[u] for u in selection_users]
    selection_offsets = offsets[len(users):]
    scale, _ = choose_scale(config.image.latent_prior_scales, lambda s: visual_taste_share(
        config, data, history, image, selection_users, judge, [None] * len(selection_users), selection_words,
        s * selection_offsets), "evaluate: history latent")
    variant = keyword_variant(text, image, data, history, keywords, config)
    variant.latent_offsets = torch.zeros(data.num_users, offsets.shape[1])
    variant.latent_offsets[torch.as_tensor(list(users), dtype=torch.long)] = scale * offsets[: len(users)]
    return variant


def hybrid_variant(text: TextPreferenceAdapter | None, image: ImagePreferenceAdapter | None, data: InteractionData,
                   history: np.ndarray, tokens: UserTokens, config: GeneratorConfig) -> VariantGenerators:
    """Adapters prompted with the history keywords and the user's tokens together."""
    return token_variant(text, image, data, history, tokens, config, PromptMode.keywords_and_tokens)


def no_token_variant(text: TextPreferenceAdapter | None, image: ImagePreferenceAdapter | None, history: np.ndarray) -> VariantGenerators:
    """The same adapters with the no-token (cold-start) prompt."""
    return VariantGenerators(text, image, history)


def soft_prompt_variant(soft: SoftPromptGenerators, preferences: Mapping[str, torch.Tensor], history: np.ndarray) -> VariantGenerators:
    """The continuous soft-prompt baseline, each user's preference vectors in its placeholders."""
    return VariantGenerators(soft.text, soft.image, history, soft=soft, preferences=preferences)


class HistoryPixelScorer:
    """Scores generated images for data users by their mean cosine with the user's own history
    images (``history[n]``: the items of ``users[n]``'s training rows, :func:`history_items`) in model-free pixel features
    (:func:`pmg.evaluate.field_metrics.pixel_vectors`): a choice among images that reads the
    history's images and no model of the user. Called with B PIL images and their B users: float [B];
    a user without a history image scores 0 (the first candidate stays)."""

    def __init__(self, data: InteractionData, history: Sequence[np.ndarray], users: Sequence[int]) -> None:
        if len(history) != len(users):
            raise ValueError(f"{len(history)} histories for {len(users)} users")
        self.references = FieldReferences.of_users(data, history, [np.zeros(0, dtype=np.int64)] * len(users), {})
        self.position = {int(u): n for n, u in enumerate(users)}

    def __call__(self, images: Sequence[Image], users: Sequence[int | None]) -> torch.Tensor:
        if len(images) != len(users):
            raise ValueError(f"{len(images)} images for {len(users)} users")
        vectors = pixel_vectors(images)  # [B, 256], unit
        owners = self.references.owners("history")
        stacked = self.references.stacked("history", "pixels") if len(owners) else torch.zeros(0, vectors.shape[1])
        scores = torch.zeros(len(images))
        for b, user in enumerate(users):
            if user is None:
                continue
            if int(user) not in self.position:
                raise ValueError(f"user {user} is not one of the {len(self.position)} this scorer read the history of")
            mine = stacked[owners == self.position[int(user)]]  # [H, 256]
            if len(mine):
                scores[b] = (mine @ vectors[b]).mean()
        return scores


def image_tensor(image: Image) -> torch.Tensor:
    """A PIL image as float32 [3, H, W] in [-1, 1] (what the CLIP embedder and the judge take)."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0


def future_items(data: InteractionData, split: Split, users: Sequence[int]) -> list[np.ndarray]:
    """Per user of ``users``, the items it interacts with after the training period (the split's
    validation + test rows), sorted without repeats: int64 [F_u] each."""
    rows = np.concatenate([split.val, split.test])
    return [np.unique(data.item[rows[data.user[rows] == u]]) for u in users]


def favourite_values(items: Sequence[Item], future: Sequence[np.ndarray], attribute: str, known: Sequence[str],
                     count: int = FAVOURITE_COUNT) -> list[tuple[str, ...]]:
    """Per user, their favourite values of the set-valued ``attribute`` (:meth:`Item.value_set`):
    the ``count`` values of ``known`` (the judge's) most frequent among the user's ``future``
    items (int64 [F_u] item indices into ``items``), ties in the order first seen (items in the
    order given, each item's values in its order); () for a user whose future items have none."""
    allowed = set(known)
    counts = [Counter(v for i in f.tolist() for v in items[i].value_set(attribute) if v in allowed) for f in future]
    # Counter.most_common sorts by count only, stably, so ties keep their first-seen order.
    return [tuple(value for value, _ in found.most_common(count)) for found in counts]


def favourite_hits(read: Sequence[str], favourites: Sequence[tuple[str, ...]]) -> tuple[np.ndarray, np.ndarray]:
    """Whether each user's image shows one of their favourite values, and the baseline.

    ``read[u]``: the value the judge reads in user u's image; ``favourites[u]``: u's favourites
    (:func:`favourite_values`). Over the N users with favourites, in order: ``own`` float [N], 1
    where ``read`` is among the user's own favourites; ``shuffled`` float [N], 1 where it is among
    the next such user's (the last compared with the first: a fixed derangement for N >= 2), what
    an image that ignores the user scores. Both empty for N < 2 (no derangement)."""
    if len(read) != len(favourites):
        raise ValueError(f"{len(read)} readings but {len(favourites)} users' favourites")
    kept = [u for u, found in enumerate(favourites) if found]
    if len(kept) < 2:
        return np.zeros(0), np.zeros(0)
    own = np.array([read[u] in favourites[u] for u in kept], dtype=np.float64)
    shuffled = np.array([read[u] in favourites[kept[(k + 1) % len(kept)]] for k, u in enumerate(kept)], dtype=np.float64)
    return own, shuffled


def history_items(data: InteractionData, split: Split, users: Sequence[int]) -> list[np.ndarray]:
    """Per user of ``users``, the items of their training-split rows, sorted without repeats: int64 [H_u] each."""
    return [np.unique(data.item[split.train[data.user[split.train] == u]]) for u in users]


def _preference_shares(content: torch.Tensor, future: list[torch.Tensor]) -> np.ndarray:
    """``content`` [N, d] unit vectors, ``future[v]`` [F_v, d] unit vectors of user v's future items.

    s(u, v) = mean cosine of content u with user v's items = content[u] · mean(future[v]); per
    user u, the share of other users v with s(u, v) < s(u, u) (ties half): float [N], 0.5 = chance.
    """
    centres = torch.stack([items.mean(dim=0) for items in future])  # [N, d]
    similarity = content @ centres.T  # [N, N]
    own = similarity.diagonal().unsqueeze(1)
    wins = (own > similarity).float() + 0.5 * (own == similarity).float()
    others = ~torch.eye(len(content), dtype=torch.bool)
    return (wins * others).sum(dim=1).div(others.sum(dim=1)).numpy()


@dataclass
class GenerationJudges:
    """What judges the generations: the zoo's attribute judge (None: ``judge_missing`` says why)
    and its CLIP (unit embeddings of images and texts)."""

    judge: AttributeJudge | None
    judge_missing: str
    embedder: ClipEmbedder


def item_embeddings(data: InteractionData, items: np.ndarray, embedder: ClipEmbedder, modality: str) -> dict[int, torch.Tensor]:
    """Unit CLIP embeddings {item: [d]} of the ``items`` that have the modality (image or text)."""
    if modality == "image":
        kept = [int(i) for i in items if data.items[i].image is not None]
        embed = lambda chunk: embedder.embed_images(  # noqa: E731
            torch.stack([load_image_tensor(data.items[i].image, embedder.image_size, data.image_read_fit) for i in chunk]))
    else:
        kept = [int(i) for i in items if data.items[i].text]
        embed = lambda chunk: embedder.embed_texts([data.items[i].text for i in chunk])  # noqa: E731
    out: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for start in range(0, len(kept), 64):
            chunk = kept[start : start + 64]
            out.update(zip(chunk, embed(chunk), strict=True))
    return out


def _user_preference(content: torch.Tensor, future: list[np.ndarray], items: dict[int, torch.Tensor], what: str) -> Cell:
    """The user-preference score over the users with at least one future item that has ``what``."""
    kept = [(n, [items[int(i)] for i in f if int(i) in items]) for n, f in enumerate(future)]
    kept = [(n, vectors) for n, vectors in kept if vectors]
    if len(kept) < 2:
        return Cell.absent(f"fewer than 2 evaluated users have a held-out future item with {what}")
    rows = torch.tensor([n for n, _ in kept])
    return Cell.of_users(_preference_shares(content[rows], [torch.stack(vectors) for _, vectors in kept]))


def generation_section(data: InteractionData, split: Split, users: list[int],
                       generations: Mapping[str, list[UserGeneration] | str], judges: GenerationJudges,
                       consistency_attribute: str, joint_text_attribute: str,
                       ) -> tuple[Section, dict[str, list[dict[str, str]] | None]]:
    """The generation rows for every variant, and the judge's reading of each variant's images.

    ``generations[variant]``: one ``UserGeneration`` per user of ``users`` (same order), or the
    reason the variant is missing. Returns the section and, per variant, the judge's values per
    user (None without images or judge). Every computed cell carries its 95% interval and N.
    """
    section = Section("generation", "Generation", list(VARIANTS))
    visual = taste_attributes(data, "visual")
    textual = taste_attributes(data, "textual")
    no_tastes = "the dataset has no ground-truth user tastes (users.jsonl)"
    future = future_items(data, split, users)
    history = history_items(data, split, users)
    needed = np.unique(np.concatenate(future)) if future else np.zeros(0, dtype=np.int64)
    # Images: the history's too (CLIP-I against the history); texts are compared with the future only.
    with_history = np.unique(np.concatenate([needed, *history])) if history else needed
    item_vectors = {"image": item_embeddings(data, with_history, judges.embedder, "image"),
                    "text": item_embeddings(data, needed, judges.embedder, "text")}
    references = FieldReferences.of_users(data, history, future, item_vectors["image"])
    # Without ground-truth tastes a multi-label head still says whether an image shows what the
    # user goes on to watch: their favourite values, read off their held-out future items.
    favourites: dict[str, list[tuple[str, ...]]] = {}
    if judges.judge is not None and data.user_tastes is None:
        favourites = {name: favourite_values(data.items, future, name, judges.judge.attributes[name])
                      for name in sorted(judges.judge.multi_label)}
    columns: dict[str, dict[str, Cell]] = {}
    readings: dict[str, list[dict[str, str]] | None] = {}
    for variant in VARIANTS:
        generated = generations[variant]
        if isinstance(generated, str):
            readings[variant] = None
            continue
        cells, readings[variant] = _variant_cells(data, users, generated, judges, visual, textual, consistency_attribute,
                                                  joint_text_attribute, future, item_vectors, references, favourites)
        columns[variant] = cells
    rows = [(f"image_{a}_accuracy", f"image shows the user's {a}", (0.0, 1.0)) for a in visual]
    rows.append(("image_personalization", f"image personalization (mean of {', '.join(visual)})" if visual else "image personalization",
                 (0.0, 1.0)))
    for a in favourites:
        rows += [(f"image_favourite_{a}", f"image shows one of the user's favourite {a} (top {FAVOURITE_COUNT} of their "
                                          "future items)", (0.0, 1.0)),
                 (f"image_favourite_{a}_shuffled", f"baseline: image shows one of another evaluated user's favourite {a}", (0.0, 1.0))]
    rows += [(f"text_{a}_accuracy", f"text names the user's {a}", (0.0, 1.0)) for a in textual]
    rows.append(("text_personalization", f"text personalization (mean of {', '.join(textual)})" if textual else "text personalization",
                 (0.0, 1.0)))
    rows += [("consistency", f"image–text consistency ({consistency_attribute})", (0.0, 1.0)),
             ("joint", f"joint: image shows the user's {consistency_attribute}, text names the user's {joint_text_attribute}, "
                       "and they agree", (0.0, 1.0)),
             ("clip_score", "CLIP image–text score (cosine; the reward optimises this CLIP)", (-1.0, 1.0)),
             ("user_preference_image", "user preference: image vs future items (0.5 = chance)", (0.0, 1.0)),
             ("user_preference_text", "user preference: text vs future items (0.5 = chance)", (0.0, 1.0)),
             *FIELD_ROWS]
    for metric, label, value_range in rows:
        cells = {}
        for variant in VARIANTS:
            generated = generations[variant]
            if isinstance(generated, str):
                cells[variant] = Cell.absent(generated)
            else:
                cells[variant] = columns[variant].get(metric, Cell.absent(no_tastes))
        section.add(metric, label, value_range, cells)
    section.notes.append("each figure: the mean over the users [its 95% bootstrap interval]; the CLIP rows use the zoo CLIP "
                         "that the reward stage optimises, so they are not independent of the reward-tuned variants: "
                         "prefer the judge-based rows")
    for a in favourites:
        section.notes.append(f"favourite {a}: a user's {FAVOURITE_COUNT} {a} most frequent among their held-out future items "
                             "(ties in the order first seen), of those the judge reads; the image counts when the judge's "
                             f"most likely {a} in it is one of them. The baseline compares each image with the next "
                             "evaluated user's favourites instead: what an image that ignores the user (one of the "
                             f"most common {a}) scores too. N: the users with a favourite")
    section.notes.append("the field's rows (CLIP-I to distinct-2, as Pigeon, GNR and UniMP report them) compare the content "
                         "with the user's history (training-split items) or targets (held-out future items), over the users "
                         "who have such an item with an image or text (N); SSIM in grayscale at the generated resolution; "
                         "pixel features: a 64-bin colour histogram and an 8×8 thumbnail, no learned model; FID: the "
                         "variant's images against the pooled target images in the 64-bin colour-histogram space; BLEU-4 "
                         "smoothed by Chen & Cherry's method 1; BLEU and ROUGE-L on lower-case words, the best of the "
                         "user's target items; FID and distinct-n are one figure per variant (N, no interval: "
                         "docs/evaluation.md)")
    return section, readings


def _variant_cells(data: InteractionData, users: list[int], generated: list[UserGeneration], judges: GenerationJudges,
                   visual: Mapping[str, Sequence[str]], textual: Mapping[str, Sequence[str]], consistency_attribute: str,
                   joint_text_attribute: str, future: list[np.ndarray], item_vectors: Mapping[str, dict[int, torch.Tensor]],
                   references: FieldReferences, favourites: Mapping[str, list[tuple[str, ...]]],
                   ) -> tuple[dict[str, Cell], list[dict[str, str]] | None]:
    """Every metric of one variant ({metric: cell}) and the judge's values per user (or None).
    ``favourites``: per multi-label attribute to score, each user's favourite values."""
    cells: dict[str, Cell] = {}
    images = [g.image for g in generated]
    texts = [g.text for g in generated]
    has_images = bool(generated) and all(image is not None for image in images)
    has_texts = bool(generated) and all(g.texts for g in generated)
    no_image = "the run has no image generator (generator.image.enabled=false)"
    no_text = "the run has no text generator (generator.text.enabled=false)"
    readings: list[dict[str, str]] | None = None
    if has_images and judges.judge is not None:
        readings = judges.judge.predict_values(images)
    # Per-user hits of each attribute: the judge reads the user's visual value, the text names the textual one.
    hits: dict[str, np.ndarray] = {}
    for attribute in visual:
        key = f"image_{attribute}_accuracy"
        if not has_images:
            cells[key] = Cell.absent(no_image)
        elif judges.judge is None:
            cells[key] = Cell.absent(judges.judge_missing)
        elif attribute not in judges.judge.attributes:
            cells[key] = Cell.absent(f"the zoo's judge does not read {attribute}")
        else:
            truth = [data.user_tastes[attribute][u] for u in users]  # type: ignore[index]
            hits[attribute] = judge_attribute_hits(images, truth, judges.judge, attribute).numpy().astype(np.float64)
            cells[key] = Cell.of_users(hits[attribute])
    seen = [a for a in visual if a in hits]
    if visual:
        reason = no_image if not has_images else judges.judge_missing if judges.judge is None else "the judge reads no visual taste"
        cells["image_personalization"] = Cell.of_users(np.mean([hits[a] for a in seen], axis=0)) if seen else Cell.absent(reason)
    for attribute, found in favourites.items():
        key = f"image_favourite_{attribute}"
        if readings is None:
            cells[key] = cells[f"{key}_shuffled"] = Cell.absent(no_image if not has_images else judges.judge_missing)
            continue
        own, shuffled = favourite_hits([reading[attribute] for reading in readings], found)
        if len(own) == 0:
            cells[key] = cells[f"{key}_shuffled"] = Cell.absent(
                f"fewer than 2 evaluated users have a held-out future item with a {attribute} value the judge reads")
        else:
            cells[key], cells[f"{key}_shuffled"] = Cell.of_users(own), Cell.of_users(shuffled)
    for attribute, values in textual.items():
        if not has_texts:
            cells[f"text_{attribute}_accuracy"] = Cell.absent(no_text)
            continue
        truth = [data.user_tastes[attribute][u] for u in users]  # type: ignore[index]
        hits[attribute] = text_attribute_hits(texts, truth, values).numpy().astype(np.float64)
        cells[f"text_{attribute}_accuracy"] = Cell.of_users(hits[attribute])
    if textual:
        cells["text_personalization"] = (Cell.of_users(np.mean([hits[a] for a in textual], axis=0)) if has_texts
                                         else Cell.absent(no_text))
    # Consistency: the text names the value the judge reads in the image; joint: that, with both the user's.
    attribute = consistency_attribute
    if not (has_images and has_texts):
        cells["consistency"] = cells["joint"] = Cell.absent("needs both an image and a text generator")
    elif judges.judge is None:
        cells["consistency"] = cells["joint"] = Cell.absent(judges.judge_missing)
    elif attribute not in judges.judge.attributes or attribute not in data.attributes:
        cells["consistency"] = cells["joint"] = Cell.absent(
            f"the dataset or the zoo's judge has no attribute {attribute!r} (evaluate.generation.consistency_attribute)")
    else:
        assert readings is not None
        agree = consistency_hits(texts, [reading[attribute] for reading in readings],
                                 data.attributes[attribute].values).numpy().astype(np.float64)
        cells["consistency"] = Cell.of_users(agree)
        if attribute in hits and joint_text_attribute in hits:
            cells["joint"] = Cell.of_users(agree * hits[attribute] * hits[joint_text_attribute])
        else:
            cells["joint"] = Cell.absent(f"needs ground-truth tastes for {attribute!r} and {joint_text_attribute!r} "
                                         "(evaluate.generation.joint_text_attribute)")
    # CLIP score and the user-preference scores.
    embedder = judges.embedder
    image_vectors = text_vectors = None
    with torch.no_grad():
        if has_images:
            image_vectors = embedder.embed_images(torch.stack([image_tensor(image) for image in images]))
        if has_texts:
            text_vectors = embedder.embed_texts(texts)
    if image_vectors is not None and text_vectors is not None:
        cells["clip_score"] = Cell.of_users((image_vectors * text_vectors).sum(dim=-1).numpy())
    else:
        cells["clip_score"] = Cell.absent("needs both an image and a text generator")
    cells["user_preference_image"] = (_user_preference(image_vectors, future, item_vectors["image"], "an image")
                                      if image_vectors is not None else Cell.absent(no_image))
    cells["user_preference_text"] = (_user_preference(text_vectors, future, item_vectors["text"], "a text")
                                     if text_vectors is not None else Cell.absent(no_text))
    cells.update(field_cells(references, images if has_images else None, image_vectors, texts if has_texts else None,
                             no_image, no_text))
    return cells, readings


def generation_record(generation: UserGeneration, reading: dict[str, str] | None, image_path: str | None) -> dict[str, Any]:
    """What ``generations.json`` keeps of one user's generation in one variant."""
    return {"text_prompt": generation.text_prompt, "texts": generation.texts, "image_prompt": generation.image_prompt,
            "image": image_path, "judge": reading}
