"""Personalization of generated content, measured against the users' ground-truth tastes.

One place for the checks that ``benchmarks/generation.py``, ``benchmarks/reward.py`` and
``pmg evaluate`` share, so that every figure means the same thing:

- **image**: the zoo's attribute judge (``load_zoo(run).load_judge()``) reads an attribute
  (colour by default) off each generated image; a hit is the judge naming the user's true value.
- **text**: a generated text *names* a value of an attribute when the value occurs as a whole
  word (case-insensitive). A hit is the first value the text names being the user's true one,
  so a text that lists every material does not score, and a text that names none misses.
- **cross-modal consistency**: the first value of an attribute (colour) that the text names is
  the one the judge reads off the image generated with it; a text that names none is inconsistent.

Ground truth comes from the dataset (``InteractionData.user_tastes``: attribute → one value per
user); :func:`taste_attributes` lists the attributes of a modality that have it.

    from pmg.generator.evaluation import judge_colour_accuracy, taste_attributes, text_attribute_accuracy

    judge = load_zoo(run).load_judge()
    colour = judge_colour_accuracy(images, [data.user_tastes["colour"][u] for u in users], judge)
    attributes = taste_attributes(data, "textual")            # {"material": (...), "style": (...)}
    tastes = {a: [data.user_tastes[a][u] for u in users] for a in attributes}
    text = text_attribute_accuracy(texts, tastes, attributes)  # {"material": .., "style": .., "mean": ..}
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from pmg.zoo.errors import ZooError

if TYPE_CHECKING:
    from PIL.Image import Image

    from pmg.data.format import InteractionData
    from pmg.zoo.judge import AttributeJudge
    from pmg.zoo.manifest import Zoo

__all__ = [
    "consistency_hits",
    "image_taste_hits",
    "judge_attribute_hits",
    "judge_colour_accuracy",
    "named_value",
    "taste_attributes",
    "text_attribute_accuracy",
    "text_attribute_hits",
    "text_taste_hits",
    "visual_taste_judge",
]


def taste_attributes(data: InteractionData, modality: str) -> dict[str, tuple[str, ...]]:
    """The attributes shown by ``modality`` ("visual", "textual") for which ``data`` has each
    user's ground-truth taste, with their possible values (schema order). Empty without tastes."""
    if data.user_tastes is None:
        return {}
    return {name: spec.values for name, spec in data.attributes.items()
            if spec.modality == modality and name in data.user_tastes}


def judge_attribute_hits(images: Sequence[Image] | torch.Tensor, true_values: Sequence[str], judge: AttributeJudge,
                         attribute: str = "colour", readings: Sequence[dict[str, str]] | None = None) -> torch.Tensor:
    """Bool [B]: the judge reads ``true_values[b]`` as ``attribute`` of image ``b``.

    ``images``: PIL images or a tensor [B, 3, S, S] in [-1, 1]. A true value the judge does
    not know is an error (a judge trained on another dataset), not a silent miss. ``readings``:
    ``judge.predict_values(images)`` if already computed (several attributes of one batch).
    """
    if len(images) != len(true_values):
        raise ValueError(f"{len(images)} images but {len(true_values)} true values")
    if attribute not in judge.attributes:
        raise ValueError(f"the judge reads {sorted(judge.attributes)}, not {attribute!r}")
    unknown = sorted(set(true_values) - set(judge.attributes[attribute]))
    if unknown:
        raise ValueError(f"true {attribute} values {unknown} are not among the judge's {list(judge.attributes[attribute])}")
    if len(images) == 0:
        return torch.zeros(0, dtype=torch.bool)
    read = judge.predict_values(images) if readings is None else readings
    return torch.tensor([found[attribute] == truth for found, truth in zip(read, true_values, strict=True)])


def judge_colour_accuracy(images: Sequence[Image] | torch.Tensor, true_colours: Sequence[str], judge: AttributeJudge) -> float:
    """Share of images whose colour the judge reads as the user's true colour (NaN for none)."""
    hits = judge_attribute_hits(images, true_colours, judge, "colour")
    return float(hits.float().mean()) if len(hits) else float("nan")


def _value_pattern(values: Sequence[str]) -> re.Pattern[str]:
    # Longest first, so that "wool blend" wins over "wool" where both are values.
    alternatives = "|".join(re.escape(v) for v in sorted(values, key=len, reverse=True))
    return re.compile(rf"(?<!\w)({alternatives})(?!\w)", re.IGNORECASE)


def named_value(text: str, values: Sequence[str]) -> str | None:
    """The first of ``values`` that ``text`` names as a whole word (case-insensitive), or None."""
    if not values:
        raise ValueError("named_value needs at least one candidate value")
    match = _value_pattern(values).search(text)
    if match is None:
        return None
    found = match.group(1).lower()
    return next(v for v in values if v.lower() == found)


def text_attribute_hits(texts: Sequence[str], true_values: Sequence[str], values: Sequence[str]) -> torch.Tensor:
    """Bool [B]: the first of ``values`` that ``texts[b]`` names is ``true_values[b]``."""
    if len(texts) != len(true_values):
        raise ValueError(f"{len(texts)} texts but {len(true_values)} true values")
    unknown = sorted(set(true_values) - set(values))
    if unknown:
        raise ValueError(f"true values {unknown} are not among the candidates {list(values)}")
    return torch.tensor([named_value(text, values) == truth for text, truth in zip(texts, true_values, strict=True)],
                        dtype=torch.bool)


def text_attribute_accuracy(texts: Sequence[str], tastes: Mapping[str, Sequence[str]],
                            attributes: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Per attribute, the share of ``texts`` whose first named value is the true one, and their ``"mean"``.

    ``tastes[a][b]`` is the true value of attribute ``a`` for the user of ``texts[b]``;
    ``attributes[a]`` its possible values (e.g. :func:`taste_attributes` of "textual").
    To judge several texts of one user together (a title and a review), join them first.
    """
    missing = sorted(set(attributes) - set(tastes))
    if missing or not attributes:
        raise ValueError(f"no true values for attributes {missing or '(none given)'}")
    scores = {name: float(text_attribute_hits(texts, tastes[name], values).float().mean()) if texts else float("nan")
              for name, values in attributes.items()}
    scores["mean"] = sum(scores.values()) / len(scores)
    return scores


def consistency_hits(texts: Sequence[str], read_values: Sequence[str], values: Sequence[str]) -> torch.Tensor:
    """Bool [B]: the first of ``values`` that ``texts[b]`` names is ``read_values[b]``, the value the
    judge read off the image generated beside that text (a text naming none is inconsistent)."""
    if len(texts) != len(read_values):
        raise ValueError(f"{len(texts)} texts but {len(read_values)} judged images")
    return torch.tensor([named_value(text, values) == seen for text, seen in zip(texts, read_values, strict=True)],
                        dtype=torch.bool)


def text_taste_hits(texts: Sequence[str], users: Sequence[int], data: InteractionData) -> torch.Tensor:
    """Float [B]: the share of ``data``'s textual taste attributes whose user's value ``texts[b]``
    names first (``users[b]`` its data user); what ``text_personalization`` averages."""
    attributes = taste_attributes(data, "textual")
    if not attributes:
        raise ValueError("the dataset has no ground-truth textual tastes")
    tastes = data.user_tastes
    assert tastes is not None
    hits = [text_attribute_hits(texts, [tastes[name][u] for u in users], values) for name, values in attributes.items()]
    return torch.stack(hits).float().mean(dim=0)


def image_taste_hits(images: Sequence[Image] | torch.Tensor, users: Sequence[int], data: InteractionData,
                     judge: AttributeJudge) -> torch.Tensor:
    """Float [B]: the share of ``data``'s visual taste attributes that ``judge`` reads (and
    reads as ``users[b]``'s value) off image ``b``; what ``image_personalization`` averages."""
    attributes = [name for name in taste_attributes(data, "visual") if name in judge.attributes]
    if not attributes:
        raise ValueError("the judge reads none of the dataset's ground-truth visual tastes")
    tastes = data.user_tastes
    assert tastes is not None
    readings = judge.predict_values(images) if len(images) else []  # once for every attribute
    hits = [judge_attribute_hits(images, [tastes[name][u] for u in users], judge, name, readings) for name in attributes]
    return torch.stack(hits).float().mean(dim=0)


def visual_taste_judge(data: InteractionData, zoo: Zoo) -> AttributeJudge | None:
    """The zoo's judge when it reads one of ``data``'s ground-truth visual tastes, else None."""
    visual = taste_attributes(data, "visual")
    if not visual:
        return None
    try:
        judge = zoo.load_judge()
    except ZooError:
        return None
    return judge if set(visual) & set(judge.attributes) else None
