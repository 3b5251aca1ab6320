"""What the zoo trains on: the held-out split, attribute captions, images and texts.

Text-to-image and CLIP learn from *attribute captions* built from the ground truth ("a red
striped dress"), since catalog texts name colour and pattern in only about half the items; an
item without them (MovieLens) is captioned by its dataset's subject, its title and its caption
words ("a movie poster of Heat (1995), action, crime", :func:`pmg.data.subjects.subject_caption`,
the form the generators' image prompts take too);
CLIP also sees the real titles and descriptions, the LM sees titles, descriptions and
training-split reviews. CLIP's captions never name a hidden attribute (the sparse catalog's
shade); the text-to-image captions may (``zoo.sdxl.unet.hidden_visual_words``), since a pretrained
SDXL knows what "light" and "dark" look like. No item text a stage reads names it either way.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import numpy as np
import torch

from pmg.data.catalog import PATTERN_WORDS
from pmg.data.format import InteractionData
from pmg.data.images import load_image_tensor
from pmg.data.split import Split
from pmg.data.subjects import caption_words, image_subject, item_subject, subject_caption
from pmg.zoo.config import HoldoutConfig
from prefgen import build_text_prompt

__all__ = ["CAPTION_TEMPLATES", "attribute_caption", "ZooCorpus", "build_corpus", "copy_warmup_documents", "keyword_prompted_texts"]

# Template 0 is the canonical prompt used for evaluation and by later stages.
CAPTION_TEMPLATES = (
    "a {colour} {pattern} {category}",
    "a {category} in {colour}, {pattern}",
    "{pattern} {colour} {category}",
)


def attribute_caption(attributes: dict[str, str], template: int = 0, colour_words: tuple[str, ...] = ()) -> str | None:
    """The caption naming an item's colour, pattern and category, or None if one is unknown.

    ``colour_words``: the attributes whose values qualify the colour ("a light red striped dress").
    """
    if not all(attributes.get(k) for k in ("category", "colour", "pattern")):
        return None
    pattern = PATTERN_WORDS.get(attributes["pattern"], attributes["pattern"])
    colour = " ".join([attributes[k] for k in colour_words if attributes.get(k)] + [attributes["colour"]])
    text = CAPTION_TEMPLATES[template % len(CAPTION_TEMPLATES)].format(
        colour=colour, pattern=pattern, category=attributes["category"]
    )
    return re.sub(r"\ba ([aeiou])", r"an \1", text)


@dataclass
class ZooCorpus:
    """Training material for every zoo model, with the held-out items removed.

    ``images`` float32 [I, 3, S, S] in [-1, 1] for every item (zeros where ``has_image`` is
    False); ``train_items`` / ``heldout_items`` int64 item indices; ``combo`` int64 [I] an
    id per distinct combination of the holdout attributes (item index when unknown), used
    as the contrastive positive groups; ``heldout_combos`` the held-out combinations.
    ``lm_texts`` / ``lm_sources``: the LM's training texts; ``heldout_lm_texts`` /
    ``heldout_lm_sources`` the same kinds of text of the held-out items (titles, descriptions and
    their reviews in every split row: no model read any of them).
    """

    data: InteractionData
    images: torch.Tensor
    has_image: np.ndarray
    train_items: np.ndarray
    heldout_items: np.ndarray
    heldout_combos: list[dict[str, str]]
    combo: np.ndarray
    lm_texts: list[str]
    # Per LM text: (item index, kind) with kind 0 title, 1 description, 2 review.
    lm_sources: list[tuple[int, int]]
    heldout_lm_texts: list[str]
    heldout_lm_sources: list[tuple[int, int]]

    def caption(self, item: int, template: int = 0, colour_words: tuple[str, ...] = ()) -> str:
        """Item ``item``'s attribute caption (``colour_words`` as in :func:`attribute_caption`),
        or, when attributes are unknown, its subject with its title and caption words ("a movie
        poster of Heat (1995), action, crime"): the dataset's subject, as the generators' prompts
        say it (:func:`pmg.data.subjects.subject_caption`)."""
        found = attribute_caption(self.data.items[item].attributes, template, colour_words)
        if found is not None:
            return found
        subject = item_subject(self.data, item, image_subject(self.data))
        return subject_caption(subject, self.data.items[item].title, caption_words(self.data, item))

    def catalog_texts(self, item: int) -> list[str]:
        """The item's own texts: title, description and both joined (non-empty ones)."""
        it = self.data.items[item]
        return [t for t in (it.title, it.description, it.text) if t]

    def image_items(self, items: np.ndarray) -> np.ndarray:
        """The subset of ``items`` that have an image."""
        return items[self.has_image[items]]


def _holdout_combos(data: InteractionData, config: HoldoutConfig, rng: np.random.Generator) -> list[dict[str, str]]:
    names = config.attributes
    if config.combos == 0 or not all(n in data.attributes for n in names):
        return []
    space = list(itertools.product(*(data.attributes[n].values for n in names)))
    chosen = rng.choice(len(space), size=min(config.combos, len(space)), replace=False)
    return [dict(zip(names, space[int(i)], strict=True)) for i in sorted(chosen)]


def build_corpus(data: InteractionData, split: Split, config: HoldoutConfig, image_size: int) -> ZooCorpus:
    """Split items into train / held-out and load every image at ``image_size``."""
    config.validate()
    rng = np.random.default_rng(config.seed)
    combos = _holdout_combos(data, config, rng)
    names = config.attributes
    keys = [tuple(it.attributes.get(n, "") for n in names) for it in data.items]
    held_keys = {tuple(c[n] for n in names) for c in combos}
    in_held_combo = np.array([k in held_keys for k in keys], dtype=bool)
    extra = rng.random(data.num_items) < config.item_fraction
    heldout = in_held_combo | extra
    known = [all(k) for k in keys]
    lookup: dict[tuple[str, ...], int] = {}
    combo = np.array(
        [lookup.setdefault(k, len(lookup)) if ok else -1 - i for i, (k, ok) in enumerate(zip(keys, known, strict=True))],
        dtype=np.int64,
    )
    has_image = data.has_image
    images = torch.zeros(data.num_items, 3, image_size, image_size)
    for i, it in enumerate(data.items):
        if it.image is not None:
            images[i] = load_image_tensor(it.image, image_size, data.image_read_fit)
    train_items = np.flatnonzero(~heldout)
    if len(train_items) == 0:
        raise ValueError("zoo.holdout leaves no training items; lower holdout.combos or holdout.item_fraction")
    heldout_items = np.flatnonzero(heldout)
    texts, sources = _item_texts(data, train_items, split.train)
    heldout_texts, heldout_sources = _item_texts(data, heldout_items, np.arange(data.num_interactions))
    return ZooCorpus(
        data=data,
        images=images,
        has_image=has_image,
        train_items=train_items,
        heldout_items=heldout_items,
        heldout_combos=combos,
        combo=combo,
        lm_texts=texts,
        lm_sources=sources,
        heldout_lm_texts=heldout_texts,
        heldout_lm_sources=heldout_sources,
    )


def _item_texts(data: InteractionData, items: np.ndarray, rows: np.ndarray) -> tuple[list[str], list[tuple[int, int]]]:
    """The non-empty titles and descriptions of ``items``, then the reviews of interaction
    ``rows`` on them; with each its (item index, kind: 0 title, 1 description, 2 review)."""
    texts: list[str] = []
    sources: list[tuple[int, int]] = []
    for i in items:
        for kind, text in enumerate((data.items[i].title, data.items[i].description)):
            if text:
                texts.append(text)
                sources.append((int(i), kind))
    wanted = set(items.tolist())
    for row in rows:
        item, review = int(data.item[row]), data.review[row]
        if review and item in wanted:
            texts.append(review)
            sources.append((item, 2))
    return texts, sources


def _attribute_words(data: InteractionData) -> list[str]:
    # The words a generator's prompt uses (AttributeSpec.prompt_word: "striped"), and the values.
    # Not a hidden attribute's: a prompt never names them, so the LM need not copy them.
    return sorted({form for spec in data.attributes.values() if not spec.hidden
                   for value in spec.values for form in (value, spec.prompt_word(value))})


def _named_attributes(data: InteractionData, attributes: dict[str, str], text: str) -> list[str]:
    """The prompt words (:meth:`AttributeSpec.prompt_word`) of an item's attribute values that its text names."""
    low = text.lower()
    found = []
    for name, value in attributes.items():
        spec = data.attributes.get(name)
        if not value or spec is None or spec.hidden:
            continue
        forms = {value.lower(), PATTERN_WORDS.get(value, value).lower(), *(w.lower() for w in spec.words(value))}
        if any(re.search(rf"\b{re.escape(form)}\b", low) for form in forms):
            found.append(spec.prompt_word(value))
    return found


def keyword_prompted_texts(corpus: ZooCorpus, fraction: float, contexts: list[str], seed: int) -> list[str]:
    """``corpus.lm_texts`` with about ``fraction`` of them behind a prompt holding their own attribute words.

    ``"I like the silk fabric."`` (a review of a silk item) becomes ``"User silk would love:
    review: I like the silk fabric."`` (the generator's prompt; ``contexts`` per title,
    description, review). A random non-empty subset of the named values is used, shuffled;
    texts that name none stay plain.
    """
    rng = np.random.default_rng(seed)
    out = []
    for text, (item, kind) in zip(corpus.lm_texts, corpus.lm_sources, strict=True):
        words = _named_attributes(corpus.data, corpus.data.items[item].attributes, text) if rng.random() < fraction else []
        if words:
            words = [words[int(k)] for k in rng.permutation(len(words))[: int(rng.integers(1, len(words) + 1))]]
            text = f"{build_text_prompt(' '.join(words), contexts[kind])} {text}"
        out.append(text)
    return out


def copy_warmup_documents(corpus: ZooCorpus, count: int, seed: int) -> list[str]:
    """``count`` synthetic documents: ``"User <word> would love: <a catalog title> <word>"`` and,
    every other one, ``"User <word> would love: <Word> <the title less its first word>"``.

    The word is an attribute value or its prompt word; predicting it needs a look back at the
    prompt, the in-context copying a pretrained LLM brings and a tiny LM otherwise never learns.
    The capitalised copy teaches what a title needs: catalog titles often open with the
    attribute ("Minimalist silk hat in pink"), and a byte-level BPE writes " Minimalist" with
    other tokens than the prompt's " minimalist".
    Empty when the dataset has no attributes or no titles.
    """
    words = _attribute_words(corpus.data)
    titles = [corpus.data.items[int(i)].title for i in corpus.train_items if corpus.data.items[int(i)].title]
    if not words or not titles or count <= 0:
        return []
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(words), size=count)
    title_picks = rng.integers(0, len(titles), size=count)
    documents = []
    for n, (w, t) in enumerate(zip(picks.tolist(), title_picks.tolist(), strict=True)):
        word, title = words[w], titles[t]
        if n % 2:
            rest = title.partition(" ")[2]
            documents.append(f"{build_text_prompt(word)} {word[:1].upper()}{word[1:]} {rest}".rstrip())
        else:
            documents.append(f"{build_text_prompt(word)} {title} {word}")
    return documents
