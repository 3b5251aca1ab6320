"""PreferenceTokenizer, semantic-ID disambiguation and code metrics of prefquant."""

from __future__ import annotations

import math

import pytest
import torch

from prefquant import (
    ModalitySpec,
    PreferenceTokenizer,
    ResidualQuantizer,
    TokenParseError,
    append_disambiguation,
    code_perplexity,
    code_usage,
    homogeneity,
    normalized_mutual_information,
    tuple_ids,
)


@pytest.fixture
def tokenizer() -> PreferenceTokenizer:
    return PreferenceTokenizer.uniform(num_levels=3, codebook_size=20)


def test_token_strings_and_all_tokens_order(tokenizer):
    assert tokenizer.token("visual", 0, 17) == "<pv_0_17>"
    assert tokenizer.token("textual", 1, 3) == "<pt_1_3>"
    assert tokenizer.token("id", 2, 0) == "<pi_2_0>"
    tokens = tokenizer.all_tokens()
    assert len(tokens) == len(set(tokens)) == 3 * 3 * 20 == len(tokenizer)
    assert tokens[:3] == ["<pv_0_0>", "<pv_0_1>", "<pv_0_2>"]
    assert tokens[20] == "<pv_1_0>" and tokens[60] == "<pt_0_0>" and tokens[-1] == "<pi_2_19>"
    assert tokens == PreferenceTokenizer.uniform(3, 20).all_tokens()  # deterministic
    for token in tokens:
        modality, level, code = tokenizer.parse_token(token)
        assert tokenizer.token(modality, level, code) == token


def test_all_tokens_of_some_modalities_in_the_order_given(tokenizer):
    everything = tokenizer.all_tokens()
    assert tokenizer.all_tokens(["visual", "textual", "id"]) == everything
    # A generator reading the textual and id tokens gets them in its own order, level-major.
    assert tokenizer.all_tokens(["id", "textual"]) == everything[120:] + everything[60:120]
    assert tokenizer.all_tokens([]) == []
    with pytest.raises(KeyError, match="unknown modality 'audio'"):
        tokenizer.all_tokens(["audio"])


def test_custom_prefixes_and_heterogeneous_levels():
    tok = PreferenceTokenizer(
        {"item": ModalitySpec("sid", (256, 256, 7)), "visual": ModalitySpec("img", (8,))}
    )
    assert tok.modalities == ("item", "visual")
    assert tok.to_tokens("item", [255, 0, 6]) == ["<sid_0_255>", "<sid_1_0>", "<sid_2_6>"]
    assert tok.all_tokens()[-1] == "<img_0_7>"
    assert len(tok.all_tokens()) == 256 + 256 + 7 + 8
    with pytest.raises(ValueError, match=r"out of range \[0, 7\)"):
        tok.to_tokens("item", [0, 0, 7])
    with pytest.raises(ValueError, match="share the prefix"):
        PreferenceTokenizer({"a": ModalitySpec("p", (2,)), "b": ModalitySpec("p", (2,))})
    for bad in ("p_v", "1p", "", "p v"):
        with pytest.raises(ValueError, match="prefix"):
            ModalitySpec(bad, (2,))


def test_codes_tokens_round_trip(tokenizer):
    gen = torch.Generator().manual_seed(0)
    codes = {m: torch.randint(20, (3,), generator=gen) for m in ("visual", "textual", "id")}
    text = tokenizer.prompt_fragment(codes)
    assert text.startswith("<pv_0_") and "<pt_0_" in text and text.endswith(">")
    assert text.count("<") == 9
    back = tokenizer.parse(f"A user who likes {text}. Describe the item.")
    assert set(back) == set(codes)
    for modality, value in codes.items():
        assert torch.equal(back[modality], value)
        assert back[modality].dtype == torch.long
    batch = torch.randint(20, (5, 3), generator=gen)
    rows = tokenizer.to_tokens("textual", batch)
    assert len(rows) == 5 and all(len(r) == 3 for r in rows)
    for row, expected in zip(rows, batch, strict=True):
        assert torch.equal(tokenizer.parse("".join(row))["textual"], expected)


def test_prompt_fragment_uses_tokenizer_order_and_subsets(tokenizer):
    text = tokenizer.prompt_fragment({"textual": [1, 2, 3], "visual": torch.tensor([4, 5, 6])})
    assert text == "<pv_0_4><pv_1_5><pv_2_6><pt_0_1><pt_1_2><pt_2_3>"
    assert tokenizer.prompt_fragment({}) == ""
    with pytest.raises(KeyError, match="audio"):
        tokenizer.prompt_fragment({"audio": [1, 2, 3]})
    with pytest.raises(ValueError, match=r"one user's codes \[L\]"):
        tokenizer.prompt_fragment({"visual": torch.zeros(2, 3, dtype=torch.long)})


def test_parse_ignores_foreign_markup_and_accepts_level_order(tokenizer):
    assert tokenizer.parse("<s> plain text <px_0_1> <pad>") == {}
    out = tokenizer.parse("<pv_2_9> <pv_0_1><pv_1_5>")
    assert out["visual"].tolist() == [1, 5, 9]


@pytest.mark.parametrize(
    "text, message",
    [
        ("<pv_0_x>", "malformed"),
        ("<pv_0_1", "malformed"),
        ("<pv_01_3><pv_1_0><pv_2_0>", "malformed"),
        ("<pv_0_20><pv_1_0><pv_2_0>", r"code 20 out of range \[0, 20\)"),
        ("<pv_3_0><pv_1_0><pv_2_0><pv_0_0>", r"level 3 out of range"),
        ("<pv_0_1><pv_0_2><pv_1_0><pv_2_0>", "appears twice"),
        ("<pv_0_1><pv_2_0>", r"levels \[1\] missing"),
    ],
)
def test_parse_errors(tokenizer, text, message):
    with pytest.raises(TokenParseError, match=message):
        tokenizer.parse(text)


def test_to_tokens_errors(tokenizer):
    with pytest.raises(ValueError, match=r"shape \[3\] or \[N, 3\]"):
        tokenizer.to_tokens("visual", [1, 2])
    with pytest.raises(ValueError, match="out of range"):
        tokenizer.to_tokens("visual", [1, 2, -1])
    with pytest.raises(TypeError, match="integers"):
        tokenizer.to_tokens("visual", torch.zeros(3))
    with pytest.raises(KeyError, match="known"):
        tokenizer.to_tokens("audio", [1, 2, 3])
    with pytest.raises(TokenParseError, match="unknown prefix"):
        tokenizer.parse_token("<zz_0_0>")


def test_tokenizer_save_load(tmp_path, tokenizer):
    tokenizer.save(tmp_path / "tok.json")
    loaded = PreferenceTokenizer.load(tmp_path / "tok.json")
    assert loaded == tokenizer
    assert loaded.all_tokens() == tokenizer.all_tokens()
    assert loaded != PreferenceTokenizer.uniform(3, 21)
    (tmp_path / "bad.json").write_text('{"format": "prefquant.tokenizer", "format_version": 7}')
    with pytest.raises(ValueError, match="bad.json.*format_version"):
        PreferenceTokenizer.load(tmp_path / "bad.json")


def test_disambiguation_makes_codes_unique():
    codes = torch.tensor([[1, 2], [1, 2], [0, 5], [1, 2], [0, 5], [3, 3]])
    unique = append_disambiguation(codes)
    assert unique[:, :2].tolist() == codes.tolist()
    assert unique[:, 2].tolist() == [0, 1, 0, 2, 1, 0]
    assert torch.unique(unique, dim=0).shape[0] == len(codes)
    assert torch.unique(codes, dim=0).shape[0] < len(codes)


def test_disambiguation_continues_after_existing_ids():
    existing = torch.tensor([[1, 2, 0], [1, 2, 1], [0, 5, 0]])
    new = torch.tensor([[1, 2], [7, 7], [0, 5], [1, 2]])
    ids = append_disambiguation(new, existing=existing)
    assert ids.tolist() == [[1, 2, 2], [7, 7, 0], [0, 5, 1], [1, 2, 3]]
    everything = torch.cat([existing, ids])
    assert torch.unique(everything, dim=0).shape[0] == len(everything)
    with pytest.raises(ValueError, match=r"\[M, 3\]"):
        append_disambiguation(new, existing=existing[:, :2])
    assert append_disambiguation(torch.zeros(0, 2, dtype=torch.long)).shape == (0, 3)


def test_encode_unique_on_colliding_items():
    torch.manual_seed(0)
    base = torch.randn(10, 4)
    items = base.repeat(4, 1)  # 40 items, every embedding four times: plain codes must collide
    rq = ResidualQuantizer(4, num_levels=2, codebook_size=8)
    rq.train()
    rq(items)
    plain = rq.encode(items)
    ids = rq.encode_unique(items)
    assert torch.unique(plain, dim=0).shape[0] <= 10
    assert ids.shape == (40, 3)
    assert torch.unique(ids, dim=0).shape[0] == 40
    assert torch.equal(ids[:, :2], plain)


def test_usage_and_perplexity():
    codes = torch.tensor([[0, 1], [1, 1], [2, 1], [3, 1]])
    assert code_usage(codes, 8).tolist() == [0.5, 0.125]
    perplexity = code_perplexity(codes, 8)
    assert perplexity[0].item() == pytest.approx(4.0)
    assert perplexity[1].item() == pytest.approx(1.0)


def test_nmi_and_homogeneity_against_hand_computed_values():
    a = torch.tensor([0, 0, 1, 1])
    assert normalized_mutual_information(a, torch.tensor([5, 5, 9, 9])) == pytest.approx(1.0)
    assert normalized_mutual_information(a, torch.tensor([0, 1, 0, 1])) == pytest.approx(0.0, abs=1e-12)
    # a = [0,0,1,1], b = [0,1,2,2]: I = H(a) = ln 2, H(b) = 1.5 ln 2 -> NMI = ln2 / (1.25 ln2) = 0.8
    b = torch.tensor([0, 1, 2, 2])
    assert normalized_mutual_information(a, b) == pytest.approx(0.8)
    assert homogeneity(b, a) == pytest.approx(1.0)  # each code holds one label
    assert homogeneity(a, b) == pytest.approx(1 / 1.5)
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(4, (4000,), generator=gen)
    noise = torch.randint(4, (4000,), generator=gen)
    assert normalized_mutual_information(labels, noise) < 0.01
    assert math.isclose(normalized_mutual_information(labels, labels), 1.0)
    assert tuple_ids(torch.tensor([[1, 2], [3, 4], [1, 2]])).tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="equal length"):
        normalized_mutual_information(a, b[:3])
