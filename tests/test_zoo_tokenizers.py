"""Offline tokenizers: trained with `tokenizers`, real transformers classes, save/load round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer, CLIPTokenizer, PreTrainedTokenizerBase, Qwen2Tokenizer

from prefgen.testing.offline_tokenizers import (
    CLIP_EOS,
    TokenizerError,
    load_tokenizer,
    train_causal_lm_tokenizer,
    train_clip_tokenizer,
)

TEXTS = [
    "Alder red striped cotton dress",
    "A casual t-shirt made of wool. The blue polka-dot pattern gives it character.",
    "Love the red colour. Great green tone!",
    "Birchwood formal leather shoe, checked, brown",
] * 20


@pytest.fixture(scope="module")
def clip_tokenizer() -> CLIPTokenizer:
    return train_clip_tokenizer(TEXTS, vocab_size=700, model_max_length=24)


def test_clip_tokenizer_is_a_clip_tokenizer_with_clip_conventions(clip_tokenizer: CLIPTokenizer) -> None:
    assert isinstance(clip_tokenizer, CLIPTokenizer)
    ids = clip_tokenizer("A Red striped dress")["input_ids"]
    tokens = clip_tokenizer.convert_ids_to_tokens(ids)
    assert tokens[0] == "<|startoftext|>" and tokens[-1] == CLIP_EOS
    # Lower-cased, whole frequent words merged, each word closed by the end-of-word suffix.
    assert tokens[1:-1] == ["a</w>", "red</w>", "striped</w>", "dress</w>"]
    assert clip_tokenizer.decode(ids, skip_special_tokens=True) == "a red striped dress"
    padded = clip_tokenizer("red", padding="max_length", max_length=24)["input_ids"]
    assert len(padded) == 24 and padded[-1] == clip_tokenizer.pad_token_id == clip_tokenizer.eos_token_id


def test_tokenizers_trained_twice_on_the_same_texts_are_identical() -> None:
    # Ties between equally frequent pairs must not be broken by hash order (the zoo's cache
    # promises that the same inputs give the same models).
    def bpe(tokenizer: PreTrainedTokenizerBase) -> dict:
        return json.loads(tokenizer.backend_tokenizer.to_str())["model"]  # vocabulary and merges

    clip = [train_clip_tokenizer(TEXTS, vocab_size=700, model_max_length=24) for _ in range(3)]
    assert bpe(clip[0]) == bpe(clip[1]) == bpe(clip[2])
    assert len(clip[0]) <= 700  # merges stop early once every word is one token
    lm = [train_causal_lm_tokenizer(TEXTS, vocab_size=400) for _ in range(2)]
    assert bpe(lm[0]) == bpe(lm[1])


def test_clip_tokenizer_covers_characters_never_seen_in_training(clip_tokenizer: CLIPTokenizer) -> None:
    ids = clip_tokenizer("zebra quiz café 7")["input_ids"]
    inner = ids[1:-1]
    assert clip_tokenizer.eos_token_id not in inner  # the unknown token is end-of-text in CLIP
    assert clip_tokenizer.decode(ids, skip_special_tokens=True) == "zebra quiz café 7"


def test_clip_tokenizer_save_load_round_trip(clip_tokenizer: CLIPTokenizer, tmp_path: Path) -> None:
    clip_tokenizer.save_pretrained(tmp_path)
    text = "A checked wool jacket, 2 pockets"
    for loaded in (CLIPTokenizer.from_pretrained(tmp_path), load_tokenizer(tmp_path), AutoTokenizer.from_pretrained(tmp_path)):
        assert isinstance(loaded, CLIPTokenizer)
        assert loaded(text)["input_ids"] == clip_tokenizer(text)["input_ids"]
        assert loaded.model_max_length == 24
        assert len(loaded) == len(clip_tokenizer)


def test_lm_tokenizer_round_trips_text_exactly(tmp_path: Path) -> None:
    tokenizer = train_causal_lm_tokenizer(TEXTS, vocab_size=400, model_max_length=128)
    assert isinstance(tokenizer, Qwen2Tokenizer)
    text = "A Red striped dress, café 42!\nSecond line."
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(tokenizer("Alder red striped cotton dress")["input_ids"]) <= 8  # frequent words are merged
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, Qwen2Tokenizer)
    assert loaded(text)["input_ids"] == ids and loaded.decode(ids) == text


def test_bad_tokenizer_inputs_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="vocab_size"):
        train_clip_tokenizer(TEXTS, vocab_size=300)
    with pytest.raises(TokenizerError, match="no text"):
        train_causal_lm_tokenizer(["", "  "], vocab_size=400)
    with pytest.raises(TokenizerError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(TokenizerError, match="holds no tokenizer"):
        load_tokenizer(tmp_path)
