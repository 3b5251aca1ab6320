"""Preference tokens in a Hugging Face causal LM: new token rows + LoRA, trained and saved with peft.

:class:`TextPreferenceAdapter` wraps any ``AutoModelForCausalLM`` (the zoo's tiny Qwen2 LM, a
real Qwen/Llama folder) and its tokenizer:

1. the preference tokens (``PreferenceTokenizer.all_tokens()``) become added tokens, each
   encoding to one id; the embedding matrix grows only when the tokenizer outgrows it
   (real Qwen checkpoints carry spare rows, which must not be cut off);
2. their rows are initialised from the mean embedding or from given vectors (:class:`TokenInit`);
3. peft LoRA on the attention projections, with ``trainable_token_indices`` for the new rows
   (input embeddings, and the output head too when it is not tied), so that *only* LoRA
   weights and the new rows are trainable: the base weights, old rows included, never change;
4. saved as a peft adapter folder (``save_embedding_layers=False``: the new rows travel as
   peft's trainable-token values, not as a whole embedding matrix) plus the tokenizer and a
   small JSON; :meth:`TextPreferenceAdapter.load` resizes the base before
   ``PeftModel.from_pretrained`` and reproduces the logits exactly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F

from prefgen.reproducible_files import sort_peft_config_lists, sort_safetensors_metadata
from prefgen.soft_prompt import DEFAULT_SOFT_PREFIX, SoftPromptInjector, soft_prompt_tokens
from prefgen.token_rows import (
    AdapterFileError,
    AddedTokensView,
    TokenInit,
    add_new_tokens,
    check_safetensors_file,
    initial_token_rows,
    read_json_file,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["DEFAULT_LM_LORA_TARGETS", "LoraOptions", "PromptOnlyTokenFilter", "TextPreferenceAdapter"]

# The attention projections of Qwen2 / Llama / Mistral decoders.
DEFAULT_LM_LORA_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
TEXT_ADAPTER_FILE = "prefgen_text_adapter.json"
TOKENIZER_FOLDER = "tokenizer"
_FORMAT = "prefgen.text_adapter"
_VERSION = 1


class PromptOnlyTokenFilter:
    """A logits processor (transformers' ``LogitsProcessor`` protocol) that gives ``token_ids`` a
    score of -inf, so that they are never generated.

    transformers' ``suppress_tokens`` does the same but rebuilds its vocabulary mask with
    ``isin`` at every decoding step, which on the zoo's LM cost a seventh of the generation
    time; this keeps the [V] mask of the last vocabulary size and device it saw.
    """

    def __init__(self, token_ids: Sequence[int]) -> None:
        self.token_ids = torch.tensor(sorted(int(i) for i in token_ids), dtype=torch.long)
        self._mask: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """``scores`` [B, V] with the filtered ids at -inf (a new tensor; ``input_ids`` unused)."""
        mask = self._mask
        if mask is None or mask.shape[0] != scores.shape[-1] or mask.device != scores.device:
            mask = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
            mask[self.token_ids[self.token_ids < scores.shape[-1]].to(scores.device)] = True
            self._mask = mask
        return scores.masked_fill(mask, float("-inf"))


@dataclass
class LoraOptions:
    """LoRA settings (peft ``LoraConfig``); ``target_modules`` are module-name suffixes or a regex string."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] | str = field(default_factory=lambda: list(DEFAULT_LM_LORA_TARGETS))


def _module_name(model: nn.Module, module: nn.Module) -> str:
    for name, candidate in model.named_modules():
        if candidate is module:
            return name
    raise ValueError(f"module {type(module).__name__} is not part of the model")


def _weights_tied(model: PreTrainedModel) -> bool:
    head = model.get_output_embeddings()
    return head is None or head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


class TextPreferenceAdapter(AddedTokensView, nn.Module):
    """A causal LM with preference tokens: only LoRA weights and the new token rows train.

    Build with ``TextPreferenceAdapter(model, tokenizer, tokens, ...)`` (or
    :meth:`from_base` for a folder), train through :meth:`sft_loss` / ``forward`` with
    ``trainable_parameters()`` in the optimizer, :meth:`save` to a folder, :meth:`load` back.

    Args:
        model: a causal LM (``forward(input_ids [B, T]) → logits [B, T, V]``); it is modified
            in place (resized, wrapped by peft).
        tokenizer: its tokenizer; the tokens are added to it in place.
        tokens: the new tokens, e.g. ``PreferenceTokenizer.all_tokens()``; none may exist yet.
        init: how their rows start (:class:`TokenInit`; vectors [N, k] for ``method="vectors"``).
        lora: LoRA options, or ``None`` to train the new token rows alone.
        soft_prompt_slots: number of placeholder tokens reserved for the soft-prompt baseline.
        soft_prompt_prefix: their names are ``<{prefix}_{k}>``.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        tokens: Sequence[str],
        *,
        init: TokenInit | None = None,
        lora: LoraOptions | None = None,
        soft_prompt_slots: int = 0,
        soft_prompt_prefix: str = DEFAULT_SOFT_PREFIX,
    ) -> None:
        super().__init__()
        # Here, not at the top: importing prefgen loads no diffusers, transformers or peft (seconds each).
        from peft import LoraConfig, TrainableTokensConfig, get_peft_model

        init = init if init is not None else TokenInit()
        if soft_prompt_slots < 0:
            raise ValueError(f"soft_prompt_slots must be >= 0, got {soft_prompt_slots}")
        known_rows = len(tokenizer)  # rows the tokenizer can produce: the trained part of the matrix
        token_ids = add_new_tokens(tokenizer, tokens, what="LM tokenizer")
        soft_tokens = soft_prompt_tokens(soft_prompt_slots, soft_prompt_prefix)
        soft_ids = add_new_tokens(tokenizer, soft_tokens, what="LM tokenizer") if soft_tokens else []
        if tokenizer.pad_token is None:
            # Batched SFT and generation pad; the end-of-text token is the usual stand-in.
            tokenizer.pad_token = tokenizer.eos_token
        embedding = model.get_input_embeddings()
        if len(tokenizer) > embedding.weight.shape[0]:
            # mean_resizing=False: the new rows are set below; the covariance fit is slow on real vocabularies.
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
            embedding = model.get_input_embeddings()
        tied = _weights_tied(model)
        with torch.no_grad():
            weight = embedding.weight
            rows = initial_token_rows(weight[:known_rows], len(token_ids), init, what="LM input embeddings")
            weight[token_ids] = rows.to(weight)
            if not tied:
                head = model.get_output_embeddings().weight
                head_rows = initial_token_rows(head[:known_rows], len(token_ids), TokenInit(seed=init.seed), what="LM head")
                head[token_ids] = head_rows.to(head)
        _set_placeholder_rows(model, soft_ids, known_rows)
        embedding_name = _module_name(model, embedding)
        if tied:
            token_targets: list[int] | dict[str, list[int]] = list(token_ids)
            targets = [embedding_name]
        else:
            head_name = _module_name(model, model.get_output_embeddings())
            token_targets = {embedding_name: list(token_ids), head_name: list(token_ids)}
            targets = [embedding_name, head_name]
        if lora is not None:
            config: Any = LoraConfig(
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=lora.target_modules,
                trainable_token_indices=token_targets,
                bias="none",
                task_type="CAUSAL_LM",
            )
        else:
            config = TrainableTokensConfig(target_modules=targets, token_indices=list(token_ids))
        peft_model = get_peft_model(model, config)
        self._setup(
            peft_model,
            tokenizer,
            {
                "format": _FORMAT,
                "version": _VERSION,
                "tokens": list(tokens),
                "token_ids": token_ids,
                "soft_prompt_tokens": soft_tokens,
                "soft_prompt_ids": soft_ids,
                "embedding_rows": int(embedding.weight.shape[0]),
                "embedding_width": int(embedding.weight.shape[1]),
                "tied_output_head": tied,
                "known_rows": known_rows,
                "lora": asdict(lora) if lora is not None else None,
            },
        )

    def _setup(self, peft_model: nn.Module, tokenizer: PreTrainedTokenizerBase, meta: dict[str, Any]) -> None:
        self.model = peft_model
        self.tokenizer = tokenizer
        self.meta = meta
        self._soft = SoftPromptInjector(self.model.get_input_embeddings(), meta["soft_prompt_ids"]) if meta["soft_prompt_ids"] else None
        self._merged = False
        self.prompt_only_filter = PromptOnlyTokenFilter(self.prompt_only_token_ids)

    # ----------------------------------------------------------------------------------------------------------------
    # Construction from folders

    @classmethod
    def from_base(
        cls,
        path: str | Path,
        tokens: Sequence[str],
        *,
        torch_dtype: torch.dtype | None = None,
        trust_remote_code: bool = False,
        local_files_only: bool = True,
        **options: Any,
    ) -> TextPreferenceAdapter:
        """Load a base causal LM and its tokenizer from ``path`` (a ``save_pretrained`` folder) and add ``tokens``.

        ``options`` are the keyword arguments of the constructor (init, lora, soft_prompt_slots, …).
        """
        model, tokenizer = _load_base(path, torch_dtype, trust_remote_code, local_files_only, with_tokenizer=True)
        return cls(model, tokenizer, tokens, **options)

    @classmethod
    def load(
        cls,
        folder: str | Path,
        base: str | Path | PreTrainedModel,
        *,
        is_trainable: bool = False,
        torch_dtype: torch.dtype | None = None,
        trust_remote_code: bool = False,
        local_files_only: bool = True,
    ) -> TextPreferenceAdapter:
        """Reload an adapter written by :meth:`save` onto ``base`` (a folder or a fresh, unmodified model).

        The tokenizer comes from the adapter folder (it holds the added tokens); the base is
        resized to the saved number of rows before ``PeftModel.from_pretrained``. Raises
        :class:`AdapterFileError` naming the file that is missing, corrupt or inconsistent.
        """
        # Here, not at the top: importing prefgen loads no diffusers, transformers or peft (seconds each).
        from peft import PeftModel
        from transformers import AutoTokenizer

        folder = Path(folder)
        meta = read_json_file(
            folder / TEXT_ADAPTER_FILE,
            ["format", "version", "tokens", "token_ids", "embedding_rows", "known_rows", "soft_prompt_tokens", "soft_prompt_ids"],
        )
        if meta["format"] != _FORMAT or meta["version"] != _VERSION:
            raise AdapterFileError(f"adapter file {folder / TEXT_ADAPTER_FILE} has format {meta['format']!r} v{meta['version']}, expected {_FORMAT!r} v{_VERSION}")
        read_json_file(folder / "adapter_config.json", ["peft_type"])
        check_safetensors_file(folder / "adapter_model.safetensors")
        tokenizer_dir = folder / TOKENIZER_FOLDER
        if not tokenizer_dir.is_dir():
            raise AdapterFileError(f"adapter tokenizer folder {tokenizer_dir} is missing")
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True, trust_remote_code=trust_remote_code)
        except (OSError, ValueError, json.JSONDecodeError) as err:
            raise AdapterFileError(f"adapter tokenizer folder {tokenizer_dir} cannot be loaded: {err}") from err
        ids = [int(i) for i in tokenizer.convert_tokens_to_ids(meta["tokens"])]
        if ids != [int(i) for i in meta["token_ids"]]:
            raise AdapterFileError(f"the tokenizer in {tokenizer_dir} maps the preference tokens to other ids than {folder / TEXT_ADAPTER_FILE} records")
        if isinstance(base, (str, Path)):
            model, _ = _load_base(base, torch_dtype, trust_remote_code, local_files_only, with_tokenizer=False)
        else:
            model = base
        rows = model.get_input_embeddings().weight.shape[0]
        if rows > meta["embedding_rows"]:
            raise AdapterFileError(f"the base model has {rows} embedding rows, more than the {meta['embedding_rows']} the adapter in {folder} was trained with: a different base?")
        if rows < meta["embedding_rows"]:
            # The trained rows themselves come from the adapter (trainable-token values); the base only needs the shape.
            model.resize_token_embeddings(meta["embedding_rows"], mean_resizing=False)
        _set_placeholder_rows(model, meta["soft_prompt_ids"], int(meta["known_rows"]))
        try:
            peft_model = PeftModel.from_pretrained(model, str(folder), is_trainable=is_trainable)
        except Exception as err:  # peft raises many types for mismatched/corrupt adapters
            raise AdapterFileError(f"cannot load the peft adapter in {folder} (adapter_config.json / adapter_model.safetensors): {err}") from err
        adapter = cls.__new__(cls)
        nn.Module.__init__(adapter)
        adapter._setup(peft_model, tokenizer, meta)
        return adapter

    def save(self, folder: str | Path) -> Path:
        """Write the peft adapter (LoRA + new token rows), the tokenizer and ``prefgen_text_adapter.json``."""
        self._require_unmerged("saved")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        # Only the new rows changed, and they are saved as trainable-token values: never the whole matrix.
        self.model.save_pretrained(str(folder), save_embedding_layers=False)
        sort_peft_config_lists(folder / "adapter_config.json")
        for written in sorted(folder.glob("*.safetensors")):
            sort_safetensors_metadata(written)
        # A fast tokenizer's backend keeps the padding and truncation of its last call and would save
        # them: the file would depend on what ran before. Every call sets its own, so clearing is free.
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            backend.no_padding()
            backend.no_truncation()
        self.tokenizer.save_pretrained(str(folder / TOKENIZER_FOLDER))
        (folder / TEXT_ADAPTER_FILE).write_text(json.dumps(self.meta, indent=2), encoding="utf-8")
        return folder

    def merge_for_inference(self) -> TextPreferenceAdapter:
        """Fold the LoRA weights and the new token rows into the base weights and drop peft's
        wrappers (peft ``merge_and_unload``): :attr:`model` becomes the plain transformers model.

        Unmerged, every LoRA projection adds two small matmuls to each decoding step, which
        on a small LM costs a third of the generation time, and peft's wrapper modules cost a
        few percent more even once merged; unloaded, generating with preference tokens costs
        what the plain LM costs. The logits agree with the unmerged adapter's to float
        rounding. One way only: a merged adapter is frozen and can no longer be trained or
        saved (reload it from its folder for that). Returns ``self``.
        """
        if not self._merged:
            self.model = self.model.merge_and_unload()
            for parameter in self.model.parameters():
                parameter.requires_grad_(False)
            if self._soft is not None:  # the hook's module was peft's wrapper, now gone
                self._soft = SoftPromptInjector(self.model.get_input_embeddings(), self.meta["soft_prompt_ids"])
            self._merged = True
        return self

    @property
    def merged(self) -> bool:
        """Whether :meth:`merge_for_inference` has folded the adapter into the base weights."""
        return self._merged

    def _require_unmerged(self, action: str) -> None:
        if self._merged:
            raise RuntimeError(f"this text adapter was merged for inference and cannot be {action}; reload it from its folder")

    # ----------------------------------------------------------------------------------------------------------------
    # Introspection

    @property
    def embedding_width(self) -> int:
        return int(self.meta["embedding_width"])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def prompt_only_token_ids(self) -> list[int]:
        """Ids the LM reads in prompts but must never write: the preference tokens and the
        soft-prompt placeholders. Their head rows are trained (or tied to trained input rows),
        so unrestricted decoding can emit them, e.g. a title ending in ``<pt_0_29>`` repeated."""
        return [int(i) for i in self.meta["token_ids"]] + [int(i) for i in self.meta["soft_prompt_ids"]]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """LoRA weights and the new token rows: what the optimizer should get."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def trainable_rows(self) -> list[tuple[nn.Parameter, torch.Tensor | None]]:
        """Each of :meth:`trainable_parameters` with the rows of it that train: None (all of it) for
        every one, LoRA and peft's token-row deltas [N, d] alike; the form of
        ``ImagePreferenceAdapter.trainable_rows``, for a checkpoint that keeps only what trains."""
        return [(p, None) for p in self.trainable_parameters()]

    def trainable_parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """:meth:`trainable_parameters` split into ``"tokens"`` (the new rows: peft's trainable-token
        deltas, [N, d] per embedding layer) and ``"lora"`` (every other trainable weight), so that
        the rows can have a learning rate of their own: each row gets a gradient only from the
        examples whose prompt holds its token, while LoRA learns from every example."""
        groups: dict[str, list[nn.Parameter]] = {"tokens": [], "lora": []}
        for name, parameter in self.model.named_parameters():  # each shared (tied) parameter once
            if parameter.requires_grad:
                groups["tokens" if "trainable_tokens_delta" in name else "lora"].append(parameter)
        return groups

    def token_embeddings(self) -> torch.Tensor:
        """The current input-embedding rows of the preference tokens [N, d] (detached)."""
        with torch.no_grad():
            rows = self.model.get_input_embeddings()(self.token_ids.to(self.device).unsqueeze(0))[0]
        return rows.detach().clone()

    def embedding_center_and_spread(self) -> tuple[torch.Tensor, float]:
        """The mean of the original rows [d] and their mean distance to it (to scale a :class:`SoftPromptProjector`)."""
        with torch.no_grad():
            ids = torch.arange(self.meta["known_rows"], device=self.device)
            old = self.model.get_input_embeddings()(ids.unsqueeze(0))[0].float()
        center = old.mean(0)
        return center, float((old - center).norm(dim=1).mean())

    # ----------------------------------------------------------------------------------------------------------------
    # Training

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """The wrapped model's forward: ``input_ids`` [B, T] → output with ``logits`` [B, T, V] (and ``loss`` given ``labels``)."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)

    def tokenize_for_sft(self, prompts: Sequence[str], targets: Sequence[str], *, append_eos: bool = True, max_length: int | None = None) -> dict[str, torch.Tensor]:
        """A right-padded batch for supervised fine-tuning: loss only on the target tokens.

        Prompt and target are tokenized separately and concatenated, so the prompt's tokens
        (and the user's preference tokens in it) are exactly those :meth:`generate` sees.
        With byte-level BPE tokenizers (Qwen, Llama 3) a target continues a prompt naturally
        when it starts with a space (``"User <pt_0_1> would love:"`` + ``" a red dress"``).
        Returns ``input_ids``, ``attention_mask``, ``labels`` [B, T] (``-100`` on prompt and padding).
        """
        if len(prompts) != len(targets):
            raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
        tok = self.tokenizer
        rows: list[tuple[list[int], list[int]]] = []
        for prompt, target in zip(prompts, targets, strict=True):
            p = tok.encode(prompt, add_special_tokens=True)
            t = tok.encode(target, add_special_tokens=False)
            if append_eos and tok.eos_token_id is not None:
                t = t + [tok.eos_token_id]
            ids = (p + t)[:max_length] if max_length else p + t
            rows.append((ids, ([-100] * len(p) + t)[: len(ids)]))
        width = max(len(ids) for ids, _ in rows)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (ids, lab) in enumerate(rows):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, : len(lab)] = torch.tensor(lab)
            mask[i, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}

    def sft_loss(self, prompts: Sequence[str], targets: Sequence[str], *, soft_prompt: torch.Tensor | None = None) -> torch.Tensor:
        """Mean next-token cross-entropy of ``targets`` given ``prompts`` (scalar, differentiable).

        ``soft_prompt`` [B, S, d] fills the placeholder tokens of the prompts (soft-prompt baseline).
        """
        self._require_unmerged("trained")
        batch = {k: v.to(self.device) for k, v in self.tokenize_for_sft(prompts, targets).items()}
        with self.soft_prompt(soft_prompt):
            return self.model(**batch).loss

    @contextmanager
    def soft_prompt(self, vectors: torch.Tensor | None) -> Iterator[None]:
        """While active, placeholder ``k`` in prompt ``b`` embeds as ``vectors[b, k]`` ([B, S, d]); ``None`` does nothing."""
        if vectors is None:
            yield
            return
        if self._soft is None:
            raise ValueError("this adapter reserved no soft-prompt slots: build it with soft_prompt_slots > 0")
        with self._soft(vectors):
            yield

    def completion_logprobs(self, sequences: torch.Tensor, attention: torch.Tensor, prompt_length: int, *,
                            temperature: float = 1.0) -> torch.Tensor:
        """Per-token log-probabilities [N, C] of the completion part of ``sequences`` [N, P + C] under the sampler.

        ``sequences`` are left-padded prompts of length P followed by sampled completions of
        length C (what ``model.generate`` returns); ``attention`` [N, P + C] is 0 on the prompt
        padding and after a completion ended. Positions count real tokens only, as ``generate``
        gives them with left padding. The logits are divided by the sampling ``temperature`` and
        the :attr:`prompt_only_token_ids` masked out, since :attr:`prompt_only_filter` keeps the
        sampler from ever drawing them: the result is the sampler's log-probability of each
        token (GRPO's ratio and KL terms), differentiable w.r.t. the trainable parameters.
        """
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        logits = self.model(input_ids=sequences, attention_mask=attention, position_ids=positions).logits
        logits = logits[:, prompt_length - 1 : -1].float() / temperature  # [N, C, V]: the prediction of each completion token
        logits = self.prompt_only_filter(sequences, logits)  # the sampler's own mask ([V], broadcast)
        return F.log_softmax(logits, dim=-1).gather(-1, sequences[:, prompt_length:, None]).squeeze(-1)

    # ----------------------------------------------------------------------------------------------------------------
    # Inference

    @torch.no_grad()
    def logits(self, prompts: Sequence[str]) -> torch.Tensor:
        """Logits [B, T, V] of right-padded ``prompts`` (eval helper)."""
        batch = self.tokenizer(list(prompts), return_tensors="pt", padding=True).to(self.device)
        return self.model(**batch).logits

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 32,
        min_new_tokens: int = 0,
        do_sample: bool = False,
        seed: int | None = None,
        temperature: float = 1.0,
        top_p: float = 1.0,
        soft_prompt: torch.Tensor | None = None,
        skip_special_tokens: bool = True,
        **generate_kwargs: Any,
    ) -> list[str]:
        """Continue each prompt; returns the generated text only (prompt removed).

        Greedy by default (deterministic); with ``do_sample=True`` a ``seed`` makes it
        reproducible (the global RNG is forked, not disturbed). Prompts are left-padded.
        ``min_new_tokens`` keeps end of text out of the first tokens: after a short SFT the
        first-token distribution is flat over many words while end of text, which the base LM
        predicts after every short text, stands alone, so greedy decoding would end at once.
        The :attr:`prompt_only_token_ids` are never generated (:attr:`prompt_only_filter`), unless
        ``suppress_tokens`` is given, which then says what is suppressed (``None``: nothing).
        """
        # Here, not at the top: importing prefgen loads no diffusers, transformers or peft (seconds each).
        from transformers import LogitsProcessorList

        was_training = self.model.training
        if was_training:  # a merged model is already in eval mode: walking its modules costs per call
            self.model.eval()
        tok = self.tokenizer
        batch = tok(list(prompts), return_tensors="pt", padding=True, padding_side="left").to(self.device)
        options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "min_new_tokens": min_new_tokens, "do_sample": do_sample,
                                   "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id}
        if do_sample:
            options.update(temperature=temperature, top_p=top_p)
        options.update(generate_kwargs)
        if "suppress_tokens" not in generate_kwargs:
            options["logits_processor"] = LogitsProcessorList([*options.get("logits_processor", []), self.prompt_only_filter])
        devices = [self.device] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices), self.soft_prompt(soft_prompt):
                if seed is not None:
                    torch.manual_seed(seed)
                out = self.model.generate(**batch, **options)
        finally:
            if was_training:
                self.model.train()
        new = out[:, batch["input_ids"].shape[1] :]
        return tok.batch_decode(new, skip_special_tokens=skip_special_tokens)


def _set_placeholder_rows(model: PreTrainedModel, ids: Sequence[int], known_rows: int) -> None:
    """Soft-prompt placeholder rows = the mean of the original rows (input and untied output).

    They are overridden per batch and never trained; being a function of the base alone,
    they are identical after a reload without being saved.
    """
    if not ids:
        return
    with torch.no_grad():
        for layer in (model.get_input_embeddings(), model.get_output_embeddings()):
            if layer is not None:
                weight = layer.weight
                weight[list(ids)] = weight[:known_rows].float().mean(0).to(weight)


def _load_base(path: str | Path, torch_dtype: torch.dtype | None, trust_remote_code: bool, local_files_only: bool, *, with_tokenizer: bool) -> tuple[Any, Any]:
    # Here, not at the top: importing prefgen loads no diffusers, transformers or peft (seconds each).
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(path)
    if str(path).startswith((".", "/", "~")) and not folder.expanduser().is_dir():
        raise AdapterFileError(f"base model folder {folder} does not exist")
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "local_files_only": local_files_only}
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype, **kwargs) if torch_dtype else AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs) if with_tokenizer else None
    return model, tokenizer
