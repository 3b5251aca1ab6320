"""The shared personalization checks (``pmg.generator.evaluation``) and the soft-prompt baseline's
projector (``pmg.generator.soft_prompt``): what counts as a hit, save/load round trip, clear errors."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pmg.generator.evaluation import (
    image_taste_hits,
    judge_attribute_hits,
    judge_colour_accuracy,
    named_value,
    taste_attributes,
    text_attribute_accuracy,
    text_attribute_hits,
    text_taste_hits,
)
from pmg.generator.soft_prompt import SoftPromptBaseline, preference_inputs
from pmg.zoo.judge import AttributeJudge
from prefgen import AdapterFileError

MATERIALS = ("cotton", "silk", "wool", "denim")


def test_named_value_is_the_first_whole_word_value() -> None:
    assert named_value("Soft WOOL, not silk", MATERIALS) == "wool"
    assert named_value("a woollen silky thing", MATERIALS) is None  # whole words only
    assert named_value("silk-wool blend", MATERIALS) == "silk"
    assert named_value("wool blend jacket", ("wool", "wool blend")) == "wool blend"  # the longer value wins
    with pytest.raises(ValueError, match="at least one"):
        named_value("x", ())


def test_text_hits_need_the_true_value_named_first() -> None:
    texts = ["cotton shirt", "silk and cotton", "a shirt", "denim"]
    hits = text_attribute_hits(texts, ["cotton", "cotton", "wool", "denim"], MATERIALS)
    assert hits.tolist() == [True, False, False, True]
    scores = text_attribute_accuracy(texts, {"material": ["cotton", "cotton", "wool", "denim"], "style": ["casual"] * 4},
                                     {"material": MATERIALS, "style": ("casual", "formal")})
    assert scores == {"material": 0.5, "style": 0.0, "mean": 0.25}
    with pytest.raises(ValueError, match="not among the candidates"):
        text_attribute_hits(["x"], ["velvet"], MATERIALS)
    with pytest.raises(ValueError, match="no true values"):
        text_attribute_accuracy(texts, {}, {"material": MATERIALS})


def _colour_judge() -> AttributeJudge:
    """A judge whose colour head reads the mean red channel: red images → "red", others → "blue"."""
    judge = AttributeJudge({"colour": ("red", "blue")}, channels=[3], image_size=8)
    with torch.no_grad():
        for param in judge.parameters():
            param.zero_()
        conv = judge.features[0]
        for c in range(3):
            conv.weight[c, c, 1, 1] = 1.0  # identity on the centre pixel of each channel
        judge.features[1].weight.fill_(1.0)  # GroupNorm scale (it normalises across the image)
        judge.heads["colour"].weight[0, 0] = 1.0  # red minus the rest
        judge.heads["colour"].weight[1, 2] = 1.0
    return judge


def test_judge_hits_compare_the_judges_reading_with_the_truth() -> None:
    judge = _colour_judge()
    red = torch.full((1, 3, 8, 8), -1.0)
    red[:, 0] = 1.0
    red[:, :, :4] = -1.0  # half the image dark, so that GroupNorm keeps a contrast
    blue = red[:, [2, 1, 0]]
    images = torch.cat([red, blue, red])
    read = [v["colour"] for v in judge.predict_values(images)]
    assert read == ["red", "blue", "red"]
    assert judge_attribute_hits(images, ["red", "red", "red"], judge).tolist() == [True, False, True]
    assert judge_colour_accuracy(images, ["red", "blue", "blue"], judge) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="not among the judge's"):
        judge_colour_accuracy(images, ["red", "red", "mauve"], judge)
    with pytest.raises(ValueError, match="not 'pattern'"):
        judge_attribute_hits(images, ["red"] * 3, judge, "pattern")


def test_taste_hits_are_the_share_of_a_users_tastes_shown() -> None:
    def attribute(modality: str, values: tuple[str, ...]) -> SimpleNamespace:
        return SimpleNamespace(modality=modality, values=values)

    data = SimpleNamespace(
        attributes={"material": attribute("textual", MATERIALS), "style": attribute("textual", ("casual", "formal")),
                    "colour": attribute("visual", ("red", "blue")), "pattern": attribute("visual", ("plain", "dots"))},
        user_tastes={"material": ["wool", "silk", "denim"], "style": ["formal", "casual", "casual"],
                     "colour": ["red", "blue", "red"], "pattern": ["dots", "dots", "plain"]},
    )
    texts = ["a formal wool coat", "silk, formal", "nothing named"]
    # Users 0, 1, 2 in a different order than the rows of ``data``: the truth follows ``users``.
    assert text_taste_hits(texts, [0, 1, 2], data).tolist() == [1.0, 0.5, 0.0]  # type: ignore[arg-type]
    assert text_taste_hits(texts[:1], [1], data).tolist() == [0.0]  # type: ignore[arg-type]
    judge = _colour_judge()  # reads colour only: pattern is not counted
    red = torch.full((1, 3, 8, 8), -1.0)
    red[:, 0] = 1.0
    red[:, :, :4] = -1.0
    blue = red[:, [2, 1, 0]]
    hits = image_taste_hits(torch.cat([red, red, blue]), [0, 1, 2], data, judge)  # type: ignore[arg-type]
    assert hits.tolist() == [1.0, 0.0, 0.0]
    data.attributes = {"pattern": data.attributes["pattern"]}
    with pytest.raises(ValueError, match="reads none"):
        image_taste_hits(red, [0], data, judge)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no ground-truth textual"):
        text_taste_hits(["x"], [0], data)  # type: ignore[arg-type]


def test_taste_attributes_of_the_catalog(small_catalog: Path) -> None:
    from pmg.data import read_dataset

    data = read_dataset(small_catalog)
    assert sorted(taste_attributes(data, "textual")) == ["material", "style"]
    assert sorted(taste_attributes(data, "visual")) == ["colour", "pattern"]
    assert "wool" in taste_attributes(data, "textual")["material"]


def test_soft_prompt_baseline_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    preferences = {"visual": torch.randn(10, 4) * 3 + 1, "textual": torch.randn(10, 6)}
    inputs = preference_inputs(preferences, ["visual", "textual"])
    assert inputs.shape == (10, 10)
    spaces = [(torch.randn(16), 2.0), (torch.randn(24), 3.0)]
    baseline = SoftPromptBaseline.for_users(["visual", "textual"], inputs, 2, spaces)
    with torch.no_grad():
        baseline.projectors[0].linear.weight.add_(0.5)  # as if trained
    out = baseline(inputs[:3])
    assert [tuple(v.shape) for v in out] == [(3, 2, 16), (3, 2, 24)]
    assert not torch.allclose(out[0][0], out[0][1])  # users get different vectors
    again = SoftPromptBaseline.load(baseline.save(tmp_path / "p.safetensors"))
    assert again.modalities == ["visual", "textual"] and again.widths == [16, 24]
    assert all(torch.equal(a, b) for a, b in zip(again(inputs[:3]), out, strict=True))
    with pytest.raises(ValueError, match=r"must be \[B, 10\]"):
        baseline(inputs[:, :4])
    with pytest.raises(ValueError, match="no user vectors for \\['id'\\]"):
        preference_inputs(preferences, ["id"])


def test_soft_prompt_baseline_load_names_the_bad_file(tmp_path: Path) -> None:
    with pytest.raises(AdapterFileError, match="missing"):
        SoftPromptBaseline.load(tmp_path / "none.safetensors")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(AdapterFileError, match="broken.safetensors"):
        SoftPromptBaseline.load(broken)
