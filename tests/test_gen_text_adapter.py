"""TextPreferenceAdapter on the tiny Qwen2 LM: only LoRA and new rows train, save/load is exact,
a few steps teach token → continuation, soft prompts, cold start, and clear errors."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LogitsProcessorList

from prefgen.prompts import build_text_prompt
from prefgen.soft_prompt import SoftPromptProjector
from prefgen.testing.offline_tokenizers import train_causal_lm_tokenizer
from prefgen.testing.tiny import TinyCausalLMConfig, build_tiny_causal_lm
from prefgen.text_adapter import LoraOptions, PromptOnlyTokenFilter, TextPreferenceAdapter
from prefgen.token_rows import AdapterFileError, PreferenceTokenError, TokenInit

TEXTS = ["User likes a red striped dress", "a blue polka-dot shoe", "Alder casual cotton t-shirt", "great green tone"] * 5
# What the zoo stage does at scale: the base LM knows the catalog phrases, not who wants which.
CORPUS = [f"{who} would love: {t}" for who in ("User", "A shopper") for t in ("a red striped dress", "a blue polka-dot shoe", "a green cotton t-shirt")]
TOKENS = [f"<pt_{level}_{code}>" for level in range(2) for code in range(4)]
LM_SIZE = TinyCausalLMConfig(hidden_size=32, layers=1, heads=2, kv_heads=1, intermediate_size=64, max_position_embeddings=64)


def _pretrain(model: torch.nn.Module, tokenizer, steps: int = 150) -> None:
    batch = tokenizer(CORPUS, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        model(**batch, labels=labels).loss.backward()
        optimizer.step()


@pytest.fixture(scope="module")
def base_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny LM folders (tied and untied output head) sharing one trained tokenizer."""
    tokenizer = train_causal_lm_tokenizer(TEXTS + CORPUS, vocab_size=300, model_max_length=64)
    folders = {}
    for name, tied in (("tied", True), ("untied", False)):
        torch.manual_seed(0)
        model = build_tiny_causal_lm(TinyCausalLMConfig(**{**LM_SIZE.__dict__, "tie_word_embeddings": tied}), tokenizer)
        _pretrain(model, tokenizer)
        folder = tmp_path_factory.mktemp(f"lm_{name}")
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders[name] = folder
    return folders


def _adapter(folder: Path, **options) -> TextPreferenceAdapter:
    options.setdefault("lora", LoraOptions(r=4, alpha=8))
    return TextPreferenceAdapter.from_base(folder, TOKENS, **options)


def _effective_rows(adapter: TextPreferenceAdapter) -> torch.Tensor:
    """The input-embedding matrix the model actually uses [V, d] (trainable-token rows spliced in)."""
    ids = torch.arange(adapter.meta["embedding_rows"])
    with torch.no_grad():
        return adapter.model.get_input_embeddings()(ids.unsqueeze(0))[0].clone()


def _train(adapter: TextPreferenceAdapter, prompts: list[str], targets: list[str], steps: int, lr: float = 3e-2) -> None:
    # AdamW with weight decay on purpose: it would move every row it is given.
    optimizer = torch.optim.AdamW(adapter.trainable_parameters(), lr=lr, weight_decay=0.1)
    adapter.train()
    for _ in range(steps):
        optimizer.zero_grad()
        adapter.sft_loss(prompts, targets).backward()
        optimizer.step()
    adapter.eval()


@pytest.mark.parametrize("head", ["tied", "untied"])
def test_only_lora_and_new_token_rows_change(base_folders: dict[str, Path], head: str) -> None:
    adapter = _adapter(base_folders[head])
    trainable = {n for n, p in adapter.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "trainable_tokens_delta" in n for n in trainable)
    frozen_before = {n: p.detach().clone() for n, p in adapter.model.named_parameters() if not p.requires_grad}
    rows_before = _effective_rows(adapter)
    head_before = adapter.model.get_output_embeddings()(torch.eye(adapter.embedding_width)).T.clone().detach()
    _train(adapter, ["User <pt_0_1> would love:"], [" a red dress"], steps=3)
    for name, p in adapter.model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen_before[name]), f"frozen parameter {name} changed"
    rows_after = _effective_rows(adapter)
    new = adapter.token_ids
    old = torch.ones(rows_after.shape[0], dtype=torch.bool)
    old[new] = False
    assert torch.equal(rows_after[old], rows_before[old]), "old embedding rows changed"
    assert not torch.equal(rows_after[new[[1]]], rows_before[new[[1]]]), "the trained token's row did not move"
    with torch.no_grad():
        head_after = adapter.model.get_output_embeddings()(torch.eye(adapter.embedding_width)).T
    assert torch.equal(head_after[old], head_before[old]), "old output-head rows changed"
    if head == "untied":
        assert not torch.equal(head_after[new], head_before[new]), "untied head rows of the new tokens did not train"


def test_sft_batch_ends_targets_with_eos_and_masks_only_prompt_and_padding(base_folders: dict[str, Path]) -> None:
    adapter = _adapter(base_folders["tied"])
    tok = adapter.tokenizer
    # The tiny tokenizer has no pad token of its own: padding is end of text, the id every target ends with.
    assert tok.pad_token_id == tok.eos_token_id
    prompts = [build_text_prompt("<pt_0_1><pt_1_2>"), build_text_prompt(None, "review:")]
    targets = [" a red striped dress", " shoe"]
    batch = adapter.tokenize_for_sft(prompts, targets)
    for row, (prompt, target) in enumerate(zip(prompts, targets, strict=True)):
        p = tok.encode(prompt)
        t = tok.encode(target, add_special_tokens=False) + [tok.eos_token_id]
        n = len(p) + len(t)
        assert batch["input_ids"][row, :n].tolist() == p + t  # the prompt exactly as generate() sees it
        assert batch["labels"][row, : len(p)].eq(-100).all()
        # Every target token is learnt, end of text included, although padding uses the same id.
        assert batch["labels"][row, len(p) : n].tolist() == t
        assert batch["attention_mask"][row, :n].eq(1).all() and batch["attention_mask"][row, n:].eq(0).all()
        assert batch["labels"][row, n:].eq(-100).all()
    # The target's first word in its mid-text form: one token, no lone space before it.
    assert len(tok.encode(" a", add_special_tokens=False)) == 1


def test_token_rows_and_lora_are_separate_parameter_groups(base_folders: dict[str, Path]) -> None:
    adapter = _adapter(base_folders["untied"])
    groups = adapter.trainable_parameter_groups()
    names = {id(p): n for n, p in adapter.model.named_parameters()}
    assert groups["tokens"] and all("trainable_tokens_delta" in names[id(p)] for p in groups["tokens"])
    assert groups["lora"] and all("lora_" in names[id(p)] for p in groups["lora"])
    assert len(groups["tokens"]) == 2  # input rows and the untied head's rows
    assert {id(p) for p in groups["tokens"] + groups["lora"]} == {id(p) for p in adapter.trainable_parameters()}


def test_min_new_tokens_keeps_end_of_text_out_of_the_first_token(base_folders: dict[str, Path]) -> None:
    adapter = _adapter(base_folders["tied"])
    prompt = build_text_prompt("<pt_0_3>")
    eos = adapter.tokenizer.eos_token_id

    def favour_end_of_text(module: torch.nn.Module, inputs: tuple, logits: torch.Tensor) -> torch.Tensor:
        # What a briefly tuned LM does after a short prompt: end of text is the single most likely token.
        logits = logits.clone()
        logits[..., eos] += 100.0
        return logits

    handle = adapter.model.get_output_embeddings().register_forward_hook(favour_end_of_text)
    try:
        assert adapter.generate([prompt], max_new_tokens=4) == [""]
        [text] = adapter.generate([prompt], max_new_tokens=4, min_new_tokens=1)
    finally:
        handle.remove()
    # The best other first token, then end of text: exactly one token of text.
    assert text and len(adapter.tokenizer.encode(text, add_special_tokens=False)) == 1


@pytest.mark.parametrize("head", ["tied", "untied"])
def test_preference_tokens_are_read_but_never_generated(base_folders: dict[str, Path], head: str) -> None:
    adapter = _adapter(base_folders[head], soft_prompt_slots=2)
    unwritable = adapter.prompt_only_token_ids
    assert sorted(unwritable) == sorted(adapter.tokenizer.convert_tokens_to_ids(TOKENS + adapter.soft_prompt_tokens))

    def favour_preference_tokens(module: torch.nn.Module, inputs: tuple, logits: torch.Tensor) -> torch.Tensor:
        # What trained (or tied) head rows of the new tokens can do: outscore every word.
        logits = logits.clone()
        logits[..., unwritable] += 100.0
        return logits

    prompts = [build_text_prompt(TOKENS[:2]), build_text_prompt(None)]
    handle = adapter.model.get_output_embeddings().register_forward_hook(favour_preference_tokens)
    try:
        texts = adapter.generate(prompts, max_new_tokens=6) + adapter.generate(prompts, max_new_tokens=6, do_sample=True, seed=0)
        allowed = adapter.generate(prompts, max_new_tokens=6, suppress_tokens=None)
    finally:
        handle.remove()
    assert all(text.strip() and "<p" not in text for text in texts), texts
    assert all(any(t in text for t in TOKENS + adapter.soft_prompt_tokens) for text in allowed), allowed  # unsuppressed, they win


def test_completion_logprobs_are_the_samplers(base_folders: dict[str, Path]) -> None:
    adapter = _adapter(base_folders["untied"], soft_prompt_slots=1)
    adapter.eval()
    tok = adapter.tokenizer
    prompts = [build_text_prompt(TOKENS[:2]), build_text_prompt(None)]
    batch = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
    torch.manual_seed(0)
    with torch.no_grad():
        # top_k=0: no top-k cut, so that each step's scores are the whole distribution the sampler draws from.
        out = adapter.model.generate(**batch, do_sample=True, temperature=2.0, top_p=1.0, top_k=0, max_new_tokens=6,
                                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                     logits_processor=LogitsProcessorList([adapter.prompt_only_filter]),
                                     output_scores=True, return_dict_in_generate=True)
    prompt_length = batch["input_ids"].shape[1]
    completion = out.sequences[:, prompt_length:]
    is_end = completion == tok.eos_token_id
    alive = (is_end.long().cumsum(-1) - is_end.long()) == 0  # up to and including the first end token
    attention = torch.cat([batch["attention_mask"], alive.long()], dim=1)
    with torch.no_grad():
        logprobs = adapter.completion_logprobs(out.sequences, attention, prompt_length, temperature=2.0)
    sampler = torch.stack(out.scores, dim=1).log_softmax(-1).gather(-1, completion[..., None]).squeeze(-1)
    assert logprobs.shape == completion.shape and bool(alive[:, 0].all())
    torch.testing.assert_close(logprobs[alive], sampler[alive], rtol=1e-4, atol=1e-4)
    assert logprobs.requires_grad is False
    logprobs = adapter.completion_logprobs(out.sequences, attention, prompt_length, temperature=2.0)
    logprobs[alive].sum().backward()
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in adapter.trainable_parameters())


@pytest.mark.parametrize("head", ["tied", "untied"])
def test_save_load_round_trip_gives_identical_logits(base_folders: dict[str, Path], head: str, tmp_path: Path) -> None:
    adapter = _adapter(base_folders[head], soft_prompt_slots=1)
    _train(adapter, ["User <pt_0_2><pt_1_3> would love:"], [" blue shoe"], steps=2)
    adapter.save(tmp_path / "adapter")
    saved = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "prefgen_text_adapter.json", "tokenizer"} <= saved
    from safetensors.torch import load_file

    tensors = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    # The new rows travel as trainable-token values, never as a whole embedding matrix.
    assert all(t.shape[0] < 50 for n, t in tensors.items() if "embed" in n or "lm_head" in n), list(tensors)
    assert any("trainable_tokens_delta" in n for n in tensors)

    reloaded = TextPreferenceAdapter.load(tmp_path / "adapter", base_folders[head])
    prompts = ["User <pt_0_2><pt_1_3> would love: blue", "A shopper would love: a red dress <pt_0_0>"]
    torch.testing.assert_close(reloaded.logits(prompts), adapter.logits(prompts), rtol=0, atol=0)
    torch.testing.assert_close(reloaded.token_embeddings(), adapter.token_embeddings(), rtol=0, atol=0)
    assert reloaded.tokens == TOKENS and torch.equal(reloaded.token_ids, adapter.token_ids)
    assert reloaded.generate(prompts, max_new_tokens=4) == adapter.generate(prompts, max_new_tokens=4)
    # A fresh in-memory base works as well as a folder.
    fresh = AutoModelForCausalLM.from_pretrained(base_folders[head])
    again = TextPreferenceAdapter.load(tmp_path / "adapter", fresh)
    torch.testing.assert_close(again.logits(prompts), adapter.logits(prompts), rtol=0, atol=0)


def test_an_adapter_saved_by_another_process_has_the_same_bytes(base_folders: dict[str, Path], tmp_path: Path) -> None:
    """peft's target modules (a set) and safetensors metadata come out in one order (prefgen.reproducible_files)."""
    import os
    import subprocess
    import sys

    adapter = _adapter(base_folders["tied"])
    _train(adapter, ["User <pt_0_2><pt_1_3> would love:"], [" blue shoe"], steps=1)
    here = adapter.save(tmp_path / "here")
    worker = ("import sys; from prefgen.text_adapter import TextPreferenceAdapter; "
              "TextPreferenceAdapter.load(sys.argv[1], sys.argv[2]).save(sys.argv[3])")
    files = sorted(p.relative_to(here) for p in here.rglob("*") if p.is_file())
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {f.name for f in files}
    for seed in (1, 2, 3):
        there = tmp_path / f"there{seed}"
        subprocess.run([sys.executable, "-c", worker, str(here), str(base_folders["tied"]), str(there)], check=True, timeout=300,
                       env={**os.environ, "PYTHONHASHSEED": str(seed)})
        assert files == sorted(p.relative_to(there) for p in there.rglob("*") if p.is_file())
        for name in files:
            assert (here / name).read_bytes() == (there / name).read_bytes(), name


@pytest.mark.parametrize("head", ["tied", "untied"])
def test_merged_for_inference_generates_as_the_adapter_does_and_is_frozen(base_folders: dict[str, Path], head: str, tmp_path: Path) -> None:
    adapter = _adapter(base_folders[head], soft_prompt_slots=1)
    _train(adapter, ["User <pt_0_2><pt_1_3> would love:", "User <pt_0_1> would love:"], [" blue shoe", " red dress"], steps=5)
    adapter.save(tmp_path / "adapter")
    prompts = ["User <pt_0_2><pt_1_3> would love:", "User <pt_0_1> would love:", "A shopper would love:"]
    vectors = torch.randn(3, 1, adapter.embedding_width)
    soft_prompts = [build_text_prompt(adapter.soft_prompt_tokens)] * 3
    unmerged = adapter.logits(prompts), adapter.generate(prompts, max_new_tokens=6), adapter.generate(soft_prompts, max_new_tokens=6, soft_prompt=vectors)

    merged = TextPreferenceAdapter.load(tmp_path / "adapter", base_folders[head]).merge_for_inference()
    assert merged.merged and not merged.trainable_parameters()
    # The LoRA deltas and the new rows now live in the base weights: no peft module is left to run.
    assert type(merged.model) is type(AutoModelForCausalLM.from_pretrained(base_folders[head]))
    assert not [name for name, m in merged.model.named_modules() if "lora" in name or type(m).__module__.startswith("peft")]
    torch.testing.assert_close(merged.logits(prompts), unmerged[0], rtol=0, atol=1e-4)
    assert merged.generate(prompts, max_new_tokens=6) == unmerged[1]
    assert merged.generate(soft_prompts, max_new_tokens=6, soft_prompt=vectors) == unmerged[2]
    with pytest.raises(RuntimeError, match="merged for inference"):
        merged.sft_loss(prompts[:1], [" blue"])
    with pytest.raises(RuntimeError, match="merged for inference"):
        merged.save(tmp_path / "again")
    assert merged.merge_for_inference() is merged  # idempotent


def test_a_few_dozen_steps_teach_each_user_token_its_continuation(base_folders: dict[str, Path]) -> None:
    # Seeded: with the random state the tests before it happened to leave, the rows and LoRA once
    # started where 60 steps taught nothing (margin 0.0005); from seeds 0-5 the margin was 0.47-1.28.
    torch.manual_seed(0)
    adapter = _adapter(base_folders["tied"], lora=LoraOptions(r=4, alpha=8))
    prompts = [build_text_prompt("<pt_0_0>"), build_text_prompt("<pt_0_1>")]
    targets = [" a red striped dress", " a blue polka-dot shoe"]

    def margin() -> float:
        # How much more likely each user's own target is than the other user's (summed log-prob ratio).
        with torch.no_grad():
            own = adapter.sft_loss(prompts, targets)
            swapped = adapter.sft_loss(prompts, targets[::-1])
        return float(swapped - own)

    before = margin()
    _train(adapter, prompts, targets, steps=60, lr=3e-2)
    after = margin()
    # Mean cross-entropy per target token: own continuation now clearly more likely than the other user's.
    assert abs(before) < 0.05 and after > 0.3, (before, after)
    outputs = adapter.generate(prompts, max_new_tokens=8)
    assert "red" in outputs[0] and "blue" in outputs[1], outputs


def test_cold_start_user_and_seeded_sampling_generate(base_folders: dict[str, Path]) -> None:
    adapter = _adapter(base_folders["tied"])
    cold = build_text_prompt(None)
    assert "<pt_" not in cold and cold.strip()
    [greedy] = adapter.generate([cold], max_new_tokens=4)
    assert isinstance(greedy, str) and adapter.generate([cold], max_new_tokens=4) == [greedy]
    sampled = [adapter.generate([cold, build_text_prompt(TOKENS[:2])], max_new_tokens=6, do_sample=True, seed=3) for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_soft_prompt_replaces_placeholder_embeddings_and_trains_a_projector(base_folders: dict[str, Path]) -> None:
    adapter = _adapter(base_folders["tied"], soft_prompt_slots=2)
    fragment = "".join(adapter.soft_prompt_tokens)
    prompts = [build_text_prompt(fragment)] * 2
    center, spread = adapter.embedding_center_and_spread()
    projector = SoftPromptProjector(6, 2, adapter.embedding_width, center=center, spread=spread, init_scale=1.0)
    users = torch.randn(2, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        vectors = projector(users)
        with adapter.soft_prompt(vectors):
            logits = adapter.logits(prompts)
    # Different users' vectors give different predictions for the same prompt text.
    assert not torch.allclose(logits[0], logits[1])
    # Outside the context the placeholders embed as their fixed rows again (both rows equal).
    plain = adapter.logits(prompts)
    torch.testing.assert_close(plain[0], plain[1])
    loss = adapter.sft_loss(prompts, ["a red dress", "a blue shoe"], soft_prompt=projector(users))
    loss.backward()
    assert projector.linear.weight.grad is not None and projector.linear.weight.grad.abs().sum() > 0
    outputs = adapter.generate(prompts, max_new_tokens=3, soft_prompt=vectors)
    assert len(outputs) == 2
    with pytest.raises(ValueError, match=r"\[B, 2, 32\]"):
        with adapter.soft_prompt(torch.zeros(2, 3, 32)):
            pass
    no_slots = _adapter(base_folders["tied"])
    with pytest.raises(ValueError, match="soft_prompt_slots"):
        no_slots.sft_loss(prompts, ["x", "y"], soft_prompt=vectors)


def test_init_from_vectors_exact_width_and_projected(base_folders: dict[str, Path]) -> None:
    vectors = torch.randn(len(TOKENS), 32, generator=torch.Generator().manual_seed(1))
    adapter = _adapter(base_folders["tied"], init=TokenInit(method="vectors", vectors=vectors))
    torch.testing.assert_close(adapter.token_embeddings(), vectors)
    codes = torch.randn(len(TOKENS), 5, generator=torch.Generator().manual_seed(2))
    projected = _adapter(base_folders["tied"], init=TokenInit(method="vectors", vectors=codes, projection="random"))
    rows = projected.token_embeddings()
    center, spread = projected.embedding_center_and_spread()
    assert torch.allclose(rows.mean(0), center, atol=1e-5)
    assert abs(float((rows - center).norm(dim=1).mean()) - spread) < 1e-3 * max(spread, 1.0)
    # Closer codes stay closer rows under a linear map.
    assert rows.shape == (len(TOKENS), 32) and torch.isfinite(rows).all()


def test_clear_errors(base_folders: dict[str, Path], tmp_path: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(base_folders["tied"])
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_folders["tied"])
    with pytest.raises(PreferenceTokenError, match="already in the LM tokenizer vocabulary"):
        TextPreferenceAdapter(copy.deepcopy(model), copy.deepcopy(tokenizer), ["<|endoftext|>"])
    with pytest.raises(PreferenceTokenError, match="duplicate"):
        TextPreferenceAdapter(copy.deepcopy(model), copy.deepcopy(tokenizer), ["<a>", "<a>"])
    with pytest.raises(PreferenceTokenError, match="width 7 but the LM input embeddings have width 32"):
        _adapter(base_folders["tied"], init=TokenInit(method="vectors", vectors=torch.zeros(len(TOKENS), 7)))
    adapter = _adapter(base_folders["tied"])
    with pytest.raises(PreferenceTokenError, match="already in the LM tokenizer"):
        # Adding the same tokens again to an adapted tokenizer would silently re-initialise trained rows.
        TextPreferenceAdapter(AutoModelForCausalLM.from_pretrained(base_folders["tied"]), adapter.tokenizer, TOKENS)

    folder = adapter.save(tmp_path / "adapter")
    weights = folder / "adapter_model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(AdapterFileError, match="adapter_model.safetensors"):
        TextPreferenceAdapter.load(folder, base_folders["tied"])
    weights.write_bytes(good)
    (folder / "prefgen_text_adapter.json").write_text("{not json")
    with pytest.raises(AdapterFileError, match="prefgen_text_adapter.json"):
        TextPreferenceAdapter.load(folder, base_folders["tied"])
    (folder / "prefgen_text_adapter.json").unlink()
    with pytest.raises(AdapterFileError, match="prefgen_text_adapter.json is missing"):
        TextPreferenceAdapter.load(folder, base_folders["tied"])
    with pytest.raises(AdapterFileError, match="does not exist"):
        TextPreferenceAdapter.from_base(tmp_path / "no_such_model", TOKENS)


def test_prompt_only_filter_masks_as_transformers_suppress_tokens_does() -> None:
    from transformers.generation.logits_process import SuppressTokensLogitsProcessor

    ids = [3, 7, 11, 40]  # 40 lies beyond a 32-row head: ignored, as transformers ignores it
    scores = torch.randn(4, 32)
    ours = PromptOnlyTokenFilter(ids)
    expected = SuppressTokensLogitsProcessor(ids)(torch.zeros(4, 1, dtype=torch.long), scores)
    assert torch.equal(ours(torch.zeros(4, 1, dtype=torch.long), scores), expected)
    # The mask follows a new vocabulary size rather than reusing the old one.
    wider = torch.randn(2, 48)
    assert torch.isinf(ours(torch.zeros(2, 1, dtype=torch.long), wider)[:, 40]).all()
    assert torch.equal(ours(torch.zeros(2, 1, dtype=torch.long), wider)[:, :3], wider[:, :3])
