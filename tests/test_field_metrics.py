"""The field's generation metrics on cases with known answers: BLEU, ROUGE-L and distinct-n on word
tokens (pmg.evaluate.overlap), SSIM and the Fréchet distance (pmg.evaluate.image_similarity)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from pmg.evaluate.field_metrics import FieldReferences
from pmg.evaluate.image_similarity import (
    frechet_distance,
    gaussian_window,
    grayscale_tensor,
    structural_similarity,
)
from pmg.evaluate.overlap import distinct_n, rouge_l_f1, sentence_bleu, word_tokens
from pmg.features import colour_histogram, pixel_features


def test_word_tokens_are_lower_case_words() -> None:
    assert word_tokens("A Red, striped DRESS -- it's 100% cotton!") == ["a", "red", "striped", "dress", "it's", "100", "cotton"]
    assert word_tokens("") == []


def test_bleu_is_one_for_identical_texts_and_zero_for_disjoint_ones() -> None:
    text = word_tokens("a red striped dress in soft cotton")
    assert sentence_bleu(text, [text], max_order=4) == pytest.approx(1.0)
    assert sentence_bleu(text, [text], max_order=1) == pytest.approx(1.0)
    assert sentence_bleu(text, [word_tokens("blue woollen coat")], max_order=4) == 0.0
    assert sentence_bleu([], [text]) == 0.0 and sentence_bleu(text, []) == 0.0
    assert sentence_bleu(word_tokens("red dress"), [text], max_order=4) == 0.0  # no 3- or 4-gram to score


def test_bleu_clips_counts_smooths_missing_orders_and_penalises_brevity() -> None:
    # The classic clipping example: 4 × "the" against one "the" → unigram precision 1/4, no brevity penalty.
    assert sentence_bleu(["the"] * 4, [["the", "cat"]], max_order=1) == pytest.approx(0.25)
    # Orders 1-4 match 4/5, 2/4, 1/3 and 0/2 (smoothed to 0.1/2); same lengths: no penalty.
    expected = (0.8 * 0.5 * (1 / 3) * (0.1 / 2)) ** 0.25
    assert sentence_bleu(list("abcde"), [list("abcxe")], max_order=4) == pytest.approx(expected)
    # A candidate shorter than its reference pays exp(1 - r / c): 2 words against 4.
    assert sentence_bleu(["a", "b"], [list("abcd")], max_order=1) == pytest.approx(math.exp(1 - 4 / 2))
    # The reference closest in length sets the penalty; any reference's n-grams count.
    assert sentence_bleu(["a", "b"], [list("abcd"), ["a", "x"]], max_order=1) == pytest.approx(1.0)


def test_rouge_l_is_the_lcs_f1() -> None:
    candidate = word_tokens("the cat sat on the mat")
    reference = word_tokens("the cat is on the mat today")
    # LCS "the cat on the mat" = 5: P = 5/6, R = 5/7, F = 2PR / (P + R) = 10/13.
    assert rouge_l_f1(candidate, reference) == pytest.approx(10 / 13)
    assert rouge_l_f1(candidate, candidate) == pytest.approx(1.0)
    assert rouge_l_f1(candidate, word_tokens("blue woollen coat")) == 0.0
    assert rouge_l_f1([], reference) == 0.0
    # A subsequence, not a substring: "a c e" in "a b c d e" → P = 1, R = 3/5.
    assert rouge_l_f1(list("ace"), list("abcde")) == pytest.approx(2 * 0.6 / 1.6)


def test_distinct_n_counts_distinct_ngrams_over_every_text() -> None:
    texts = [["a", "b", "a", "b"], ["a", "c"]]
    assert distinct_n(texts, 1) == pytest.approx(3 / 6)  # a b a b a c
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)  # ab ba ab ac
    assert distinct_n([["a", "b"], ["a", "b"]], 2) == pytest.approx(1 / 2)  # the same text twice halves it
    assert math.isnan(distinct_n([["a"]], 2))


def test_ssim_is_one_for_identical_images_and_falls_with_noise() -> None:
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 1, 32, 32, generator=generator)
    assert structural_similarity(image, image).item() == pytest.approx(1.0, abs=1e-5)
    scores = [structural_similarity(image, (image + sigma * torch.randn(image.shape, generator=generator)).clamp(0, 1)).item()
              for sigma in (0.05, 0.2, 0.5)]
    assert 1.0 > scores[0] > scores[1] > scores[2]
    # A batch gives one score per pair; a constant shift leaves structure but changes luminance.
    pair = structural_similarity(torch.cat([image, image]), torch.cat([image, (image * 0.5 + 0.25)]))
    assert pair.shape == (2,) and pair[0] == pytest.approx(1.0, abs=1e-5) and 0.0 < pair[1] < 1.0
    # Images under 11 pixels a side use a smaller odd window.
    small = torch.rand(2, 3, 6, 6, generator=generator)
    assert structural_similarity(small, small) == pytest.approx(torch.ones(2), abs=1e-5)
    window = gaussian_window(11, 1.5)
    assert window.sum().item() == pytest.approx(1.0) and window.argmax().item() == 5


def test_ssim_matches_torchmetrics_on_the_window_positions_inside_the_image() -> None:
    # torchmetrics (in the lock file through lightning, not a pmg dependency) pads by reflection
    # and averages every pixel's window; inside the 5-pixel border its map is the standard one.
    torchmetrics = pytest.importorskip("torchmetrics.functional.image")
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 40, 40, generator=generator)
    y = (x + 0.2 * torch.randn(x.shape, generator=generator)).clamp(0, 1)
    _, full = torchmetrics.structural_similarity_index_measure(y, x, gaussian_kernel=True, sigma=1.5, kernel_size=11,
                                                               data_range=1.0, reduction="none", return_full_image=True)
    assert structural_similarity(x, y) == pytest.approx(full[..., 5:-5, 5:-5].flatten(1).mean(dim=1), abs=1e-5)


def test_grayscale_tensor_is_luma_at_the_asked_size() -> None:
    red = Image.new("RGB", (8, 8), (255, 0, 0))
    gray = grayscale_tensor(red, (4, 6))
    assert gray.shape == (1, 6, 4) and gray.flatten().unique().tolist() == [pytest.approx(76 / 255)]  # 0.299 × 255


def test_frechet_distance_is_zero_on_itself_and_the_squared_mean_shift_under_a_shift() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, 8)) @ rng.normal(size=(8, 8))  # correlated dimensions
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-8)
    shift = rng.normal(size=8)
    assert frechet_distance(features, features + shift) == pytest.approx(float(shift @ shift), rel=1e-6)
    # Scaling by 2: Σb = 4Σa, tr (Σa^½ Σb Σa^½)^½ = 2 tr Σa, so the distance is ‖μa‖² + tr Σa.
    expected = float(features.mean(axis=0) @ features.mean(axis=0) + np.trace(np.cov(features, rowvar=False)))
    assert frechet_distance(features, 2 * features) == pytest.approx(expected, rel=1e-6)
    # Fewer samples than dimensions: singular covariances, still defined and >= 0.
    assert frechet_distance(features[:4], features[4:9]) >= 0.0
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance(features[:1], features)


def test_pixel_features_start_with_a_colour_histogram_that_sums_to_one() -> None:
    rgb = np.zeros((32, 32, 3), dtype=np.float32)
    rgb[8:24, 8:24] = (0.9, 0.1, 0.1)  # a red square on black: the corner is background
    histogram = colour_histogram(rgb)
    assert histogram.shape == (64,) and histogram.sum() == pytest.approx(1.0)
    assert histogram[3 * 16 + 0 * 4 + 0] == pytest.approx(1.0)  # every foreground pixel in the (red, -, -) bin
    features = pixel_features(rgb)
    assert features.shape == (256,) and np.array_equal(features[:64], histogram)


def test_user_similarities_average_each_users_reference_cosines_and_mark_users_without_one() -> None:
    unit = torch.nn.functional.normalize
    clip = {item: unit(torch.tensor(v), dim=0) for item, v in {1: [1.0, 0.0], 2: [0.0, 1.0], 3: [1.0, 1.0]}.items()}
    references = FieldReferences(None, history_images=[[1, 2], [], [3]], target_images=[[], [], []], target_texts=[[], [], []],  # type: ignore[arg-type]
                                 clip=clip)
    generated = unit(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), dim=1)  # one per user
    found = references.user_similarities("history", "clip", generated)
    assert found[0].item() == pytest.approx(0.5)  # cosines 1 and 0
    assert torch.isnan(found[1]) and found[2].item() == pytest.approx(2**-0.5)
    assert torch.isnan(references.user_similarities("target", "clip", generated)).all()
