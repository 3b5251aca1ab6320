"""History keywords (the PMG-style baseline): what a user's training history names, and nothing else."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest

from pmg.data import AttributeSpec, CatalogConfig, InteractionData, Item, generate_catalog
from pmg.data.keywords import _ValueMatcher, history_keywords, keyword_attributes
from pmg.data.ratings import InteractionWeight, interaction_weights, rating_weights
from pmg.data.split import temporal_split
from pmg.generator.config import GeneratorConfig, KeywordConfig
from pmg.generator.prompts import prompt_keywords


def _history() -> InteractionData:
    items = [
        Item("i0", "Striped silk scarf", "A red scarf with a striped pattern.", attributes={"colour": "red", "shade": "dark"}),
        Item("i1", "Wool coat", "Warm and plain.", attributes={"colour": "blue", "shade": "dark"}),
        Item("i2", "Silk blouse", "Light as air.", attributes={"colour": "red", "shade": "dark"}),
        Item("i3", "Denim jacket", "Rugged.", attributes={"colour": "green", "shade": "light"}),
    ]
    # user 0: i0, i1, i2 in training, i3 later; user 1: only i3 and i1.
    rows = [(0, 0, "Love the silk."), (0, 1, ""), (0, 2, "Silk again, lovely."), (0, 3, "Denim denim denim, in green!"),
            (1, 3, "Solid denim."), (1, 1, "")]
    return InteractionData(
        name="hand-made",
        user_ids=["u0", "u1"],
        items=items,
        user=np.array([r[0] for r in rows]),
        item=np.array([r[1] for r in rows]),
        timestamp=np.arange(len(rows)),
        rating=np.full(len(rows), np.nan),
        review=[r[2] for r in rows],
        attributes={"colour": AttributeSpec("visual", ("red", "blue", "green")),
                    "pattern": AttributeSpec("visual", ("plain", "stripes"), aliases={"plain": ("solid", "plain"),
                                                                                      "stripes": ("striped",)}),
                    "material": AttributeSpec("textual", ("silk", "wool", "denim")),
                    "shade": AttributeSpec("visual", ("light", "dark"), hidden=True)},
        # Ground truth the extractor must never read: it contradicts every history below.
        user_tastes={"colour": ["green", "red"], "material": ["denim", "silk"], "shade": ["light", "dark"]},
    )


def test_keywords_name_what_the_training_history_names_and_nothing_else() -> None:
    data = _history()
    train = np.array([0, 1, 2, 4, 5])  # user 0's denim/green interaction (row 3) is after the training period
    first, second = history_keywords(data, train, [0, 1])
    # User 0: silk in 3 documents (titles, reviews), red by metadata in 2 of 3; striped / plain once each, the alias
    # "striped" counts for "stripes" and the tie goes to IDF (plain is also user 1's, so rarer stripes wins).
    assert first.values == {"colour": "red", "pattern": "stripes", "material": "silk"}
    assert first.words(data) == ["red", "striped", "silk"]  # the prompt word of a pattern is its alias
    assert first.words(data, ["material"]) == ["silk"]
    # Nothing from the later row (denim, green), from users.jsonl, or from the hidden shade.
    assert "shade" not in first.values and "shade" not in keyword_attributes(data)
    assert second.values["material"] == "denim" and second.values["pattern"] == "plain"  # "Solid" names plain
    # Reading every row instead lets user 0's later denim interaction in.
    assert history_keywords(data, np.arange(len(data.user)), [0])[0].values["material"] == "silk"  # 3 silk docs vs 1 denim
    assert history_keywords(data, np.array([3]), [0])[0].values == {"colour": "green", "material": "denim"}


def test_a_user_without_history_gets_no_keywords_and_free_terms_without_a_vocabulary() -> None:
    data = _history()
    assert history_keywords(data, np.array([0]), [1])[0].values == {}
    plain = InteractionData(name="no vocabulary", user_ids=["a"], items=[Item("m0", "Alien (1979)", "Genres: Horror, Sci-Fi."),
                                                                          Item("m1", "Aliens (1986)", "Genres: Action, Sci-Fi.")],
                            user=np.array([0, 0]), item=np.array([0, 1]), timestamp=np.array([0, 1]),
                            rating=np.array([4.0, 5.0]), review=["", ""])
    terms = history_keywords(plain, np.array([0, 1]), [0], top_terms=2)[0]
    assert terms.values == {} and terms.terms[0] == "sci-fi" and len(terms.terms) == 2
    assert "genres" not in terms.terms  # a field label, not a taste


def test_catalog_keywords_mostly_find_the_true_taste() -> None:
    data, _ = generate_catalog(CatalogConfig(seed=1, num_users=60, num_items=200, interactions_per_user=20))
    split = temporal_split(data)
    users = list(range(data.num_users))
    found = history_keywords(data, split.train, users)
    assert data.user_tastes is not None
    for attribute in ("colour", "pattern", "material", "style"):
        hits = np.mean([k.values.get(attribute) == data.user_tastes[attribute][u] for k, u in zip(found, users, strict=True)])
        assert hits > 0.6, (attribute, hits)  # chance is 1/4 to 1/8


def test_weighted_rows_decide_the_vote_and_all_zero_weights_count_alike() -> None:
    data = _history()
    rows = np.arange(len(data.user))
    # User 0's one denim row outweighs three silk rows; user 1's rows weigh nothing, so each counts once.
    weights = np.array([0.5, 0.0, 0.5, 3.0, 0.0, 0.0])
    first, second = history_keywords(data, rows, [0, 1], weights=weights)
    assert first.values["material"] == "denim" and first.values["colour"] == "green"
    assert second.values == history_keywords(data, rows, [1])[0].values
    with pytest.raises(ValueError, match="one per row"):
        history_keywords(data, rows, [0], weights=weights[:3])
    with pytest.raises(ValueError, match="finite values >= 0"):
        history_keywords(data, rows, [0], weights=-weights)


def test_rating_weights_count_what_was_rated_above_the_offset() -> None:
    data = _history()
    data.rating[:] = [5.0, 2.0, 1.0, np.nan, 4.0, 3.0]
    # max(rating - 2, 0); the unrated row takes the median of the known weights (0, 0, 1, 2, 3 -> 1)
    assert rating_weights(data, np.arange(6)).tolist() == [3.0, 0.0, 0.0, 1.0, 2.0, 1.0]
    assert rating_weights(data, np.array([0, 4]), offset=3.0).tolist() == [2.0, 1.0]
    data.rating[:] = np.nan
    with pytest.raises(ValueError, match="no ratings"):
        rating_weights(data, np.arange(6))


def test_the_prompts_read_keywords_as_generator_keywords_says_and_without_ratings_by_a_plain_vote() -> None:
    data = _history()
    rows = np.arange(len(data.user))
    # User 0 rated the silk/red rows 4 and 4 and the one denim/green row 5. A plain majority says silk;
    # a rating vote with offset 3.5 (0.5 + 0.5 against 1.5) says denim and green, with offset 2 (2 + 2 against 3) silk.
    data.rating[:] = [4.0, 1.0, 4.0, 5.0, 4.0, 4.0]
    plain = GeneratorConfig(keywords=KeywordConfig(weight=InteractionWeight.binary))
    rated = GeneratorConfig(keywords=KeywordConfig(weight=InteractionWeight.rating, rating_offset=3.5))
    assert prompt_keywords(data, plain, rows, [0])[0].values["material"] == "silk"
    found = prompt_keywords(data, rated, rows, [0, 1])
    assert (found[0].values["material"], found[0].values["colour"]) == ("denim", "green")
    assert found[1].values == prompt_keywords(data, plain, rows, [1])[0].values  # user 1's rows weigh alike
    rated_at_2 = GeneratorConfig(keywords=KeywordConfig(weight=InteractionWeight.rating))
    assert prompt_keywords(data, rated_at_2, rows, [0])[0].values["material"] == "silk"
    assert interaction_weights(InteractionWeight.binary, data, rows) is None
    data.rating[:] = np.nan  # implicit feedback: a rating vote falls back to the plain one
    assert [k.values for k in prompt_keywords(data, rated, rows, [0, 1])] == [k.values for k in prompt_keywords(data, plain, rows, [0, 1])]
    with pytest.raises(ValueError, match="preference.edge_weight is rating, but .*no ratings"):  # where ratings are required
        interaction_weights(InteractionWeight.rating, data, rows, key="preference.edge_weight")
    with pytest.raises(ValueError, match="generator.keywords.weight must be one of"):
        KeywordConfig(weight="ratings").validate()  # type: ignore[arg-type]


def test_a_value_is_named_exactly_when_a_search_for_its_words_finds_one() -> None:
    """The one-pass matcher against the plain rule, a search of the whole text for each value's
    words: overlapping words ("navy blue" beside "blue", "light" inside "light blue"), words that
    share a start, case, punctuation and word characters on either side."""
    spec = AttributeSpec("visual", ("blue", "navy", "light", "red", "t-shirt"),
                         aliases={"navy": ("navy blue", "navy"), "light": ("light blue", "pale"), "t-shirt": ("tee", "t-shirt")})
    data = InteractionData(name="overlap", user_ids=["u"], items=[Item("i", "x", "")], user=np.array([0]), item=np.array([0]),
                           timestamp=np.array([0]), rating=np.array([np.nan]), review=[""], attributes={"colour": spec})
    matcher = _ValueMatcher.of(data, ["colour"])

    def named(text: str) -> set[str]:
        return matcher.named(text).get("colour", set())

    def searched(text: str) -> set[str]:
        return {value for value in spec.values
                if re.search(r"(?<!\w)(" + "|".join(re.escape(w) for w in spec.words(value)) + r")(?!\w)", text, re.IGNORECASE)}

    pieces = ["navy blue", "Navy", "blue", "BLUE.", "light blue", "light", "lightblue", "pale", "reddish", "red", "tee", "t-shirt",
              "t-shirts", "tees", "x-red", "red-ish", "(blue)", "navy-blue", "_red", "a", ",", "  ", "é"]
    rng = random.Random(0)
    texts = [" ".join(rng.choice(pieces) for _ in range(rng.randint(0, 6))) for _ in range(3000)]
    texts += ["navy blue", "light blue", "pale navy", "x-red", "t-shirt", "redblue", ""]
    mismatches = [(t, named(t), searched(t)) for t in texts if named(t) != searched(t)]
    assert not mismatches, mismatches[:5]
    assert named("a navy blue tee") == {"navy", "blue", "t-shirt"}  # "blue" inside "navy blue" counts, as a search finds it
    assert named("LIGHT BLUE") == {"light", "blue"}  # "light" is named by "light blue", "blue" by its own word
    assert named("x-red reddish") == {"red"}  # "-" is not a word character; "reddish" is a different word
