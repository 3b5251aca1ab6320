"""Word-overlap text metrics the published personalized-generation systems report: BLEU, ROUGE-L
and distinct-n, on lower-case word tokens.

    tokens = word_tokens("A red, striped dress")            # ["a", "red", "striped", "dress"]
    sentence_bleu(tokens, [reference], max_order=4)         # BLEU-4, Chen & Cherry (2014) method 1
    rouge_l_f1(tokens, reference)                           # LCS-based F1 (beta = 1)
    distinct_n([tokens, other], 2)                          # distinct bigrams / all bigrams

Written here rather than taken from nltk / rouge-score (neither is in uv.lock): each is a few lines.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

__all__ = ["BLEU_SMOOTHING_EPSILON", "distinct_n", "ngrams", "rouge_l_f1", "sentence_bleu", "word_tokens"]

# Chen & Cherry (2014) method 1: an n-gram order with no match counts epsilon matches, so one
# missing 4-gram does not zero a sentence's BLEU (nltk's SmoothingFunction().method1 default).
BLEU_SMOOTHING_EPSILON = 0.1

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def word_tokens(text: str) -> list[str]:
    """Lower-case word tokens of ``text`` (letters and digits, with an apostrophe suffix kept: "it's")."""
    return _WORD.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """The ``n``-grams of ``tokens`` in order (len(tokens) - n + 1 of them, none if shorter)."""
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def sentence_bleu(candidate: Sequence[str], references: Sequence[Sequence[str]], max_order: int = 4) -> float:
    """Sentence BLEU-``max_order`` of ``candidate`` against ``references`` (token lists), in [0, 1].

    Uniform weights over orders 1..max_order of the clipped n-gram precisions (a candidate n-gram
    counts at most as often as in the reference that has it most), smoothed by Chen & Cherry's
    method 1 (:data:`BLEU_SMOOTHING_EPSILON` for an order with no match), times the brevity
    penalty against the reference length closest to the candidate's (ties: the shorter). 0 for
    an empty candidate, no references, no word in common (smoothing applies only once some word
    matches, as in nltk) or a candidate shorter than ``max_order`` words (no n-gram of that order).
    """
    if max_order < 1:
        raise ValueError(f"max_order must be >= 1, got {max_order}")
    if not candidate or not references:
        return 0.0
    log_precision = 0.0
    for n in range(1, max_order + 1):
        counts = Counter(ngrams(candidate, n))
        total = sum(counts.values())
        if total == 0:
            return 0.0
        most: Counter[tuple[str, ...]] = Counter()
        for reference in references:
            most |= Counter(ngrams(reference, n))
        matches = sum(min(count, most[gram]) for gram, count in counts.items())
        if n == 1 and matches == 0:
            return 0.0
        log_precision += math.log((matches if matches > 0 else BLEU_SMOOTHING_EPSILON) / total) / max_order
    length = len(candidate)
    closest = min((len(r) for r in references), key=lambda r: (abs(r - length), r))
    brevity = 1.0 if length > closest else math.exp(1.0 - closest / length)
    return brevity * math.exp(log_precision)


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of ``a`` and ``b`` (one row of the DP table at a time)."""
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if token == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l_f1(candidate: Sequence[str], reference: Sequence[str]) -> float:
    """ROUGE-L F1 (beta = 1): with L the longest common subsequence, P = L / |candidate|,
    R = L / |reference|, F = 2PR / (P + R); 0 if either is empty or nothing is shared."""
    if not candidate or not reference:
        return 0.0
    common = _lcs_length(candidate, reference)
    if common == 0:
        return 0.0
    precision, recall = common / len(candidate), common / len(reference)
    return 2 * precision * recall / (precision + recall)


def distinct_n(texts: Sequence[Sequence[str]], n: int) -> float:
    """Distinct-n of a set of texts (token lists): the number of distinct n-grams over all texts
    divided by the number of n-grams (Li et al., 2016), in [0, 1]; NaN if there are none."""
    grams = [gram for tokens in texts for gram in ngrams(tokens, n)]
    return len(set(grams)) / len(grams) if grams else math.nan
