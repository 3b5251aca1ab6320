"""What an item's image shows, in words: the subject noun and the caption both the zoo's
text-to-image model and the generators are prompted with.

The words come from the dataset (:class:`pmg.data.format.ItemKind`): the embedded catalog's
items are "a dress", "a shoe" (their ``category``), a MovieLens item is "a movie poster" described
by its genres. One function builds the caption every image prompt ends in, so that the generators
are prompted in the form the zoo trained on:

    subject_caption("a movie poster", "Heat (1995)", ["action", "crime"])
    # "a movie poster of Heat (1995), action, crime"   (the zoo's caption of an item)
    subject_caption("a movie poster", "", ["action", "crime"])
    # "a movie poster, action, crime"                   (a generator's prompt: no title)
    subject_caption("a red striped dress")
    # "a red striped dress"                             (the catalog: no caption attributes)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from pmg.data.format import DEFAULT_SUBJECT, InteractionData

__all__ = ["caption_words", "image_subject", "item_subject", "liked_caption_words", "subject_caption"]


def image_subject(data: InteractionData, configured: str | None = None) -> str:
    """The image subject of an item without a subject of its own, in this order: ``configured``
    (``generator.image.default_subject``) when set, else the dataset's ``item_kind.subject``
    (written by its loader, or by ``data.item_kind.subject``), else :data:`DEFAULT_SUBJECT`
    ("a product", what the embedded catalog has always said)."""
    return configured or data.item_kind.subject or DEFAULT_SUBJECT


def item_subject(data: InteractionData, item: int, default: str) -> str:
    """The image subject of item ``item``: ``"a <value>"`` of the dataset's subject attribute
    (``item_kind.subject_attribute``, the catalog's ``category``: "a dress") when the item has
    one, else ``default`` (:func:`image_subject`)."""
    attribute = data.item_kind.subject_attribute
    value = data.items[item].attributes.get(attribute, "") if attribute else ""
    return f"a {value}" if value else default


def caption_words(data: InteractionData, item: int) -> list[str]:
    """The words describing item ``item`` in captions: its values of the dataset's
    ``item_kind.caption_attributes``, ``|``-separated values split, lower-case, in order
    ("Action|Crime|Thriller" → ["action", "crime", "thriller"]); [] for the catalog."""
    words = [w.lower() for a in data.item_kind.caption_attributes for w in data.items[item].value_set(a)]
    return list(dict.fromkeys(words))


def liked_caption_words(data: InteractionData, history: np.ndarray, user: int | None, count: int = 3) -> list[str]:
    """The ``count`` caption words (:func:`caption_words`) most often among the items ``user``
    interacted with in ``history`` (interaction rows; None: every user's, for a cold start), ties
    in first-seen order; [] for a dataset without caption attributes."""
    if not data.item_kind.caption_attributes:
        return []
    rows = np.asarray(history, dtype=np.int64)
    items = data.item[rows] if user is None else data.item[rows[data.user[rows] == user]]
    counts = Counter(w for i in items.tolist() for w in caption_words(data, int(i)))
    return [w for w, _ in counts.most_common(count)]


def subject_caption(subject: str, title: str = "", words: Sequence[str] = ()) -> str:
    """The caption of an image of ``subject`` (already described: "a red striped dress"), of the
    item titled ``title`` (none when generating for a user), with ``words`` after it:
    ``("a movie poster", "Heat (1995)", ["action", "crime"])`` → "a movie poster of Heat (1995),
    action, crime". Without a title and words it is ``subject`` unchanged."""
    parts = [f"{subject.strip()} of {title.strip()}" if title.strip() else subject.strip()]
    return ", ".join(parts + [w.strip() for w in words if w.strip()])
