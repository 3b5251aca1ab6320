"""Words that describe a user, read from their history alone: the keyword baseline (PMG-style).

A user's history is their training interactions (the split's training rows): each is one
document made of the item's title and description, the user's review of it, and the item's
metadata values (attributes that are not ``hidden``: a colour field, MovieLens genres). Nothing
is read from the users' ground truth (``users.jsonl``) or from hidden attributes.

- Where the dataset has an attribute vocabulary (attributes with values), each attribute's
  keyword is its value named by the most history documents, weighted by the value's inverse
  document frequency over every history in the rows given (TF-IDF; ties go to the schema order).
  A value is named by any of its words (:meth:`pmg.data.format.AttributeSpec.words`).
- Otherwise the user's keywords are the ``top_terms`` words of highest TF-IDF in their
  history's texts (lower-case words of three letters or more, common English words left out).

    keywords = history_keywords(data, split.train, users)
    keywords[0].values          # {"colour": "red", "pattern": "stripes", "material": "silk", ...}
    keywords[0].words(data)     # ["red", "striped", "silk", ...]: what a prompt says
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pmg.data.format import InteractionData

__all__ = ["HistoryKeywords", "history_keywords", "keyword_attributes"]

_WORD = re.compile(r"[a-z][a-z'-]{2,}")
# Words too common to say anything about a taste; the vocabulary path never needs them.
_STOPWORDS = frozenset(
    "the and for with this that from are was were has have had its it's not but you your our all any can "
    "one very just really made great good nice love like likes genres tags arrived time okay fine nothing special".split())


@dataclass(frozen=True)
class HistoryKeywords:
    """One user's keywords: ``values`` {attribute: value} on the attribute vocabulary (attributes
    no history document names are absent) and ``terms``, free words for datasets without one."""

    values: dict[str, str]
    terms: tuple[str, ...] = ()

    def words(self, data: InteractionData, attributes: Sequence[str] | None = None) -> list[str]:
        """The prompt words of ``attributes`` (None: every attribute found, schema order), then the free terms."""
        names = [a for a in data.attributes if a in self.values and (attributes is None or a in attributes)]
        return [data.attributes[a].prompt_word(self.values[a]) for a in names] + list(self.terms)


def keyword_attributes(data: InteractionData) -> list[str]:
    """The attributes keywords may name: those with values that are not hidden (schema order)."""
    return [name for name, spec in data.attributes.items() if spec.values and not spec.hidden]


@dataclass(frozen=True)
class _ValueMatcher:
    """Which attribute values a text names: a value is named when one of its words
    (:meth:`pmg.data.format.AttributeSpec.words`) occurs as a whole word (no word character on
    either side), case-insensitively.

    One pass over the text finds, at every position where some word starts on a word boundary,
    the longest word that ends on one there (``pattern``: a look-ahead, so overlapping words are
    all seen; one group per word). Any shorter word that also matches at that position is a
    prefix of it ending where it has a non-word character, so ``named_by[group]`` holds the
    values of the word and of those prefixes. This names exactly the values that searching the
    whole text once per value would, at a fraction of the cost: a history has one text per
    interaction, and those searches took most of the keywords' time.
    """

    pattern: re.Pattern[str]
    named_by: dict[int, frozenset[tuple[str, str]]]  # group index -> {(attribute, value)}

    @classmethod
    def of(cls, data: InteractionData, attributes: Sequence[str]) -> _ValueMatcher:
        owners: dict[str, set[tuple[str, str]]] = {}  # lower-case word -> the values it names
        for name in attributes:
            spec = data.attributes[name]
            for value in spec.values:
                for word in spec.words(value):
                    owners.setdefault(word.lower(), set()).add((name, value))
        words = sorted(owners, key=lambda w: (-len(w), w))  # longest first: the alternation keeps the first that fits
        named_by = {}
        for group, word in enumerate(words, start=1):
            named = set(owners[word])
            for shorter in words:
                if len(shorter) < len(word) and word.startswith(shorter) and not re.match(r"\w", word[len(shorter)]):
                    named |= owners[shorter]
            named_by[group] = frozenset(named)
        alternation = "|".join(f"({re.escape(w)})" for w in words)
        return cls(re.compile(r"(?<!\w)(?=(?:" + alternation + r")(?!\w))", re.IGNORECASE), named_by)

    def named(self, text: str) -> dict[str, set[str]]:
        """{attribute: the values ``text`` names} (attributes it names none of are absent)."""
        out: dict[str, set[str]] = {}
        for match in self.pattern.finditer(text):
            group = match.lastindex
            assert group is not None  # the look-ahead always captures the word it found
            for attribute, value in self.named_by[group]:
                out.setdefault(attribute, set()).add(value)
        return out


def _documents(data: InteractionData, rows: np.ndarray, attributes: Sequence[str]) -> list[str]:
    """One text per interaction row: the item's title, description, the review and its metadata values."""
    documents = []
    for row in rows.tolist():
        item = data.items[int(data.item[row])]
        metadata = " ".join(item.attributes[a] for a in attributes if item.attributes.get(a))
        documents.append(" ".join(part for part in (item.title, item.description, data.review[row], metadata) if part))
    return documents


def history_keywords(data: InteractionData, rows: np.ndarray, users: Sequence[int], *, top_terms: int = 3,
                     weights: np.ndarray | None = None) -> list[HistoryKeywords]:
    """Keywords of each of ``users`` (data user indices) from their interactions among ``rows``
    (int64 interaction rows, the split's training rows: never a later one). One per user, in order;
    a user without a history row gets empty keywords.

    ``weights`` (float [len(rows)], e.g. :func:`pmg.data.ratings.rating_weights`): how much each
    row's document counts in the vote (None: each counts once); a user whose rows all weigh 0
    falls back to counting them once each."""
    attributes = keyword_attributes(data)
    rows = np.asarray(rows, dtype=np.int64)
    documents = _documents(data, rows, attributes)
    owners = data.user[rows]
    if weights is None:
        weight = np.ones(len(rows))
    else:
        weight = np.asarray(weights, dtype=np.float64)
        if weight.shape != (len(rows),) or not np.isfinite(weight).all() or (weight < 0).any():
            raise ValueError(f"weights must be {len(rows)} finite values >= 0, one per row")
        weighted_total = np.bincount(owners, weights=weight, minlength=data.num_users)
        weight = np.where(weighted_total[owners] > 0, weight, 1.0)
    wanted = set(int(u) for u in users)
    by_user: dict[int, list[int]] = {u: [] for u in wanted}
    for position, owner in enumerate(owners.tolist()):
        if owner in wanted:
            by_user[owner].append(position)
    if attributes:
        matcher = _ValueMatcher.of(data, attributes)
        named = [matcher.named(doc) for doc in documents]
        frequency = Counter((a, v) for doc in named for a, values in doc.items() for v in values)
        idf = {key: math.log((1 + len(documents)) / (1 + count)) + 1 for key, count in frequency.items()}
        out = []
        for user in users:
            chosen: dict[str, str] = {}
            for a in attributes:
                counts: Counter[str] = Counter()
                for position in by_user[int(user)]:
                    for v in named[position].get(a, ()):
                        counts[v] += weight[position]
                if counts:
                    order = data.attributes[a].values
                    chosen[a] = max(counts, key=lambda v: (counts[v] * idf[(a, v)], -order.index(v)))  # noqa: B023
            out.append(HistoryKeywords(chosen))
        return out
    tokens = [[w for w in _WORD.findall(doc.lower()) if w not in _STOPWORDS] for doc in documents]
    frequency = Counter(w for doc in tokens for w in set(doc))
    out = []
    for user in users:
        counts = Counter()
        for position in by_user[int(user)]:
            for w in tokens[position]:
                counts[w] += weight[position]
        score = {w: c * (math.log((1 + len(documents)) / (1 + frequency[w])) + 1) for w, c in counts.items()}
        out.append(HistoryKeywords({}, tuple(sorted(score, key=lambda w: (-score[w], w))[:top_terms])))
    return out
