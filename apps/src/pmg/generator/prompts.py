"""How each user is put into the generators' prompts: tokens, history keywords, or both.

One place builds, per data user, what every stage and command prompts with, so that the
generator trains on the prompts that the reward stage, ``pmg generate`` and ``pmg evaluate``
then use (``generator.prompt``, :class:`pmg.generator.config.PromptMode`):

    prompts = user_prompts(data, config, tokens, split.train)
    prompts.text[u]            # "Loom dress red striped silk bohemian <pv_0_3><pv_1_9><pt_0_5><pt_1_2>" or None
    prompts.image[u]           # "<pv_0_3><pv_1_9>" or None (the subject takes the words)
    prompts.subject_words[u]   # {"colour": "red", "pattern": "stripes"} or None

and, once a user's texts are generated, the image prompt that shows what they name
(:func:`user_image_prompt`: the subject, described by the text's and the history's words, then
the user's visual tokens).

The templates around them are the dataset's (:func:`prompt_templates`): the embedded catalog's
"a red dress for <pv_0_3>" and "A shopper would love:", MovieLens's "a movie poster, drama,
comedy for <pv_0_3>" and "A viewer would love:" (``generator.image.prompt_form=noun_first``: "a
product for <pv_0_3>: a red dress", "a movie poster for <pv_0_3>: a movie poster, drama, comedy").
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from pmg.data.format import InteractionData
from pmg.data.keywords import HistoryKeywords, history_keywords, keyword_attributes
from pmg.data.ratings import interaction_weights
from pmg.data.subjects import caption_words, image_subject, item_subject, liked_caption_words, subject_caption
from pmg.generator.config import GeneratorConfig, ImagePromptForm, PromptMode
from pmg.generator.evaluation import named_value
from pmg.quantize.stage import UserTokens
from pmg.runs import RunError
from prefgen import PromptTemplates, build_image_prompt, describe_subject

__all__ = ["DEFAULT_AUDIENCE", "ItemWords", "UserPrompts", "described_subject", "item_image_prompt", "joined_fragment", "keyword_prompts",
           "liked_subject", "prompt_attributes", "prompt_keywords", "prompt_templates", "subject_attributes", "text_named_values", "token_rows", "training_item_words",
           "user_fragments", "user_image_prompt", "user_prompts"]

# Who would love an item in a no-token text prompt, where the dataset does not say (prefgen's default template's).
DEFAULT_AUDIENCE = "A shopper"


def _literal(phrase: str) -> str:
    # A dataset's words go into a str.format template: braces in them are text, not fields.
    return phrase.strip().replace("{", "{{").replace("}", "}}")


def prompt_templates(data: InteractionData, subject: str | None = None, audience: str | None = None,
                     form: ImagePromptForm = ImagePromptForm.subject_first) -> PromptTemplates:
    """The dataset's prompt templates: for images, by ``form`` (``generator.image.prompt_form``),
    ``"{subject} for {tokens}"`` and the subject alone without tokens (``subject_first``), or
    ``"<noun> for {tokens}: {subject}"`` and ``"<noun>: {subject}"`` (``noun_first``, prefgen's
    defaults for the embedded catalog, byte for byte); for texts ``"<audience> would love:
    {context}"`` for a user without tokens ("User {tokens} would love: {context}" with tokens, as
    for every dataset).

    ``subject`` / ``audience`` are the config's overrides (``generator.image.default_subject``,
    ``generator.text.audience``); when None, the dataset's ``item_kind`` says
    (:func:`pmg.data.subjects.image_subject`), else "a product" / "A shopper".
    """
    who = _literal(audience or data.item_kind.audience or DEFAULT_AUDIENCE)
    if form == ImagePromptForm.subject_first:
        return PromptTemplates(image="{subject} for {tokens}", image_no_tokens="{subject}", text_no_tokens=f"{who} would love: {{context}}")
    noun = _literal(image_subject(data, subject))
    return PromptTemplates(image=f"{noun} for {{tokens}}: {{subject}}", image_no_tokens=f"{noun}: {{subject}}",
                           text_no_tokens=f"{who} would love: {{context}}")


def described_subject(data: InteractionData, subject: str, values: Mapping[str, str]) -> str:
    """``subject`` described by the prompt words of ``values`` ({attribute: value}) in schema
    order, as the zoo's captions put them ("a dress", {colour: red, pattern: stripes} → "a red
    striped dress"); a clear error for an attribute the dataset does not have."""
    unknown = sorted(set(values) - set(data.attributes))
    if unknown:
        raise ValueError(f"image-subject words for attributes {unknown} the dataset does not have")
    return describe_subject(subject, [spec.prompt_word(values[a]) for a, spec in data.attributes.items() if a in values])


@dataclass(frozen=True)
class UserPrompts:
    """Per data user (list index): the text prompt's keywords and tokens, the image prompt's
    fragment and the image subject's words ({attribute: value}); None where the user has none."""

    text_words: list[str | None]
    text_tokens: list[str | None]
    image: list[str | None]
    subject_words: list[dict[str, str] | None]

    @property
    def text(self) -> list[str | None]:
        """Per data user, the text prompt's fragment: the keywords, then the tokens (None: the no-token prompt)."""
        return [joined_fragment(words, tokens) for words, tokens in zip(self.text_words, self.text_tokens, strict=True)]

    def of(self, users: Sequence[int | None]) -> UserPrompts:
        """The prompts of ``users`` in order (None: an unknown user, who gets the no-token prompt)."""
        def pick(values: list) -> list:
            return [values[u] if u is not None else None for u in users]

        return UserPrompts(pick(self.text_words), pick(self.text_tokens), pick(self.image), pick(self.subject_words))


def token_rows(data: InteractionData, tokens: UserTokens, users: Sequence[int | None]) -> list[int | None]:
    """The quantize stage's row of each of ``users`` (data user indices); None for a user it
    has no codes for (added after it: a cold start) and for None (an unknown user)."""
    position = {user_id: row for row, user_id in enumerate(tokens.user_ids)}
    return [position.get(data.user_ids[u]) if u is not None else None for u in users]


def _fragments(tokens: UserTokens, rows: Sequence[int | None], modalities: Sequence[str]) -> list[str | None]:
    chosen = tuple(m for m in modalities if m in tokens.codes)
    if not chosen:
        return [None] * len(rows)
    return [tokens.prompt_fragment(row, chosen) if row is not None else None for row in rows]


def user_fragments(data: InteractionData, tokens: UserTokens, modalities: Sequence[str],
                   users: Sequence[int | None] | None = None) -> list[str | None]:
    """Per data user (or per entry of ``users``), the token fragment of those of ``modalities``
    the quantize stage coded; None for a user it has no codes for (cold start)."""
    return _fragments(tokens, token_rows(data, tokens, range(data.num_users) if users is None else users), modalities)


def prompt_attributes(data: InteractionData, config: GeneratorConfig) -> tuple[list[str], list[str]]:
    """The attributes whose words go into the text prompt (the text modalities') and into the
    image subject (the image modalities' but the subject's own), schema order; never a hidden one."""
    def attributes(modalities: Sequence[str], *, subject: bool) -> list[str]:
        own = data.item_kind.subject_attribute
        return [a for a in keyword_attributes(data) if data.attributes[a].modality in modalities and (subject or a != own)]

    return attributes(config.text.modalities, subject=True), attributes(config.image.modalities, subject=False)


class ItemWords:
    """Training prompts' words for ``keywords_and_tokens``: a liked item's own values of
    ``attributes``, each kept with probability ``keep`` (seeded).

    The generators are trained to write a liked item's text and draw its image; with the item's
    own words in the prompt they learn to follow words exactly (what the history keywords then
    say at generation time), and with some words left out they learn to read those tastes from
    the user's tokens.
    """

    def __init__(self, data: InteractionData, attributes: Sequence[str], keep: float, seed: int) -> None:
        if not 0.0 <= keep <= 1.0:
            raise ValueError(f"the share of item words kept must be in [0, 1], got {keep}")
        self.data, self.attributes, self.keep, self.rng = data, list(attributes), keep, random.Random(seed)

    def values(self, item: int) -> dict[str, str]:
        """{attribute: value} of item ``item`` (data item index), each kept with probability ``keep``."""
        own = self.data.items[item].attributes
        return {a: own[a] for a in self.attributes if own.get(a) and self.rng.random() < self.keep}

    def text(self, item: int) -> str | None:
        """:meth:`values` as prompt words (schema order), None when none is kept."""
        values = self.values(item)
        return " ".join(self.data.attributes[a].prompt_word(v) for a, v in values.items()) or None


def training_item_words(data: InteractionData, config: GeneratorConfig, kind: Literal["text", "image"]) -> ItemWords | None:
    """The item words of the ``kind`` generator's training prompts: its prompt attributes kept with
    ``generator.item_word_keep`` (the image adapter's own ``generator.image.item_word_keep`` when
    set), seeded by the trainer's seed; None with ``prompt=tokens``, whose prompts carry no words."""
    if config.prompt is PromptMode.tokens:
        return None
    text_attributes, image_attributes = prompt_attributes(data, config)
    if kind == "text":
        return ItemWords(data, text_attributes, config.item_word_keep, config.trainer.seed)
    keep = config.item_word_keep if config.image.item_word_keep is None else config.image.item_word_keep
    return ItemWords(data, image_attributes, keep, config.trainer.seed)


def keyword_prompts(data: InteractionData, keywords: Sequence[HistoryKeywords | None], config: GeneratorConfig,
                    ) -> tuple[list[str | None], list[dict[str, str] | None]]:
    """Per entry of ``keywords``: the text fragment (the keywords of the text modalities'
    attributes, then the free terms) and the image subject's words (the image modalities'
    attributes but the subject's own); None where there are none."""
    text_attributes, image_attributes = prompt_attributes(data, config)
    text = [(" ".join(k.words(data, text_attributes)) or None) if k is not None else None for k in keywords]
    image = [{a: v for a, v in k.values.items() if a in image_attributes} or None if k is not None else None for k in keywords]
    return text, image


def joined_fragment(*parts: str | None) -> str | None:
    """The non-empty ``parts`` joined by spaces; None when all are empty."""
    kept = [part for part in parts if part]
    return " ".join(kept) if kept else None


def prompt_keywords(data: InteractionData, config: GeneratorConfig, history: np.ndarray,
                    users: Sequence[int]) -> list[HistoryKeywords]:
    """The history keywords of each of ``users`` (data user indices) from the interaction rows
    ``history``, read as ``config.keywords`` says (a plain or a rating-weighted vote): the one
    reading that the prompts and the keyword baselines share. A dataset without a rating on any
    of ``history`` (implicit feedback) is read by a plain vote whatever the weight."""
    weights = None
    if np.isfinite(data.rating[np.asarray(history, dtype=np.int64)]).any():
        weights = interaction_weights(config.keywords.weight, data, history, config.keywords.rating_offset)
    return history_keywords(data, history, users, weights=weights)


def user_prompts(data: InteractionData, config: GeneratorConfig, tokens: UserTokens, history: np.ndarray,
                 mode: PromptMode | None = None, *, users: Sequence[int | None] | None = None) -> UserPrompts:
    """The prompts under ``mode`` (None: ``config.prompt``) of every data user, or of ``users``
    in order (data user indices; None: an unknown user, who gets the no-token prompt).

    ``history``: the interaction rows keywords are read from (the split's training rows, so no
    later item leaks into a prompt). With ``keywords_and_tokens`` the keywords come before the
    tokens in the text prompt and describe the image subject; a user without tokens but with a
    history gets the keywords alone. A user's prompts do not depend on which others are asked for.
    """
    mode = PromptMode(mode if mode is not None else config.prompt)
    users = list(range(data.num_users)) if users is None else list(users)
    rows = token_rows(data, tokens, users)
    text = _fragments(tokens, rows, config.text.modalities)
    image = _fragments(tokens, rows, config.image.modalities)
    if mode is PromptMode.tokens:
        return UserPrompts([None] * len(users), text, image, [None] * len(users))
    found = iter(prompt_keywords(data, config, history, [u for u in users if u is not None]))
    words, subject = keyword_prompts(data, [next(found) if u is not None else None for u in users], config)
    return UserPrompts(words, text, image, subject)


def text_named_values(text: str, attributes: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """{attribute: the value ``text`` names first} for each of ``attributes`` ({name: values}) it names."""
    return {a: value for a, values in attributes.items() if (value := named_value(text, values))}


def liked_subject(data: InteractionData, history: np.ndarray, user: int | None, default: str) -> str:
    """The subject a user most often liked in ``history`` (interaction rows: the split's training
    rows, so that no later item leaks into a prompt), ``"a <category>"``, or ``default``
    (:func:`pmg.data.subjects.item_subject`)."""
    owners = data.user[history]
    # A cold-start user (None) gets the catalog's most liked subject.
    items = (data.item[history] if user is None else data.item[history[owners == user]]).tolist()
    counts = Counter(item_subject(data, int(i), default) for i in items)
    return counts.most_common(1)[0][0] if counts else default


def subject_attributes(data: InteractionData, config: GeneratorConfig) -> dict[str, Sequence[str]]:
    """{attribute: its values} for ``config.image.subject_from_text``; a clear error for one the dataset lacks."""
    unknown = [a for a in config.image.subject_from_text if a not in data.attributes]
    if unknown:
        raise RunError(f"generator.image.subject_from_text names {unknown}, which the dataset does not have (its attributes: "
                       f"{sorted(data.attributes)}); name some of those or set generator.image.subject_from_text=[]")
    return {a: tuple(data.attributes[a].values) for a in config.image.subject_from_text}


def item_image_prompt(data: InteractionData, item: int, values: Mapping[str, str], fragment: str | None,
                      templates: PromptTemplates, default_subject: str | None = None) -> str:
    """The generator's training prompt for the image of item ``item``: its subject
    (:func:`pmg.data.subjects.item_subject`, ``default_subject`` the config's override) described by
    ``values`` ({attribute: value}), then its caption words (MovieLens genres; the zoo's caption less
    the title, :func:`pmg.data.subjects.subject_caption`), in ``templates`` with ``fragment``."""
    subject = described_subject(data, item_subject(data, item, image_subject(data, default_subject)), values)
    return build_image_prompt(subject_caption(subject, "", caption_words(data, item)), fragment, templates)


def user_image_prompt(data: InteractionData, config: GeneratorConfig, user: int | None, text: str, fragment: str | None,
                      described: Mapping[str, Sequence[str]], history: np.ndarray, subject: str | None = None,
                      keywords: Mapping[str, str] | None = None) -> str:
    """The image prompt for ``user``: ``subject`` (None: the user's most liked one in ``history``)
    described by the values of ``described`` attributes that ``text`` names and by ``keywords``
    ({attribute: value} from the user's history; where both give a value of one attribute the
    keyword's wins: it is the user's evidence, the text a generated guess prompted with the same
    words), then the caption words the user's history holds most (MovieLens genres; none for the
    catalog) as :func:`item_image_prompt` trains them, then the user's tokens ``fragment``, in the
    dataset's templates (:func:`prompt_templates`)."""
    subject = subject or liked_subject(data, history, user, image_subject(data, config.image.default_subject))
    chosen = text_named_values(text, described)
    chosen.update(keywords or {})
    caption = subject_caption(described_subject(data, subject, chosen), "", liked_caption_words(data, history, user))
    return build_image_prompt(caption, fragment, prompt_templates(data, config.image.default_subject, config.text.audience,
                                                                  config.image.prompt_form))
