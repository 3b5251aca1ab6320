"""New vocabulary rows shared by both adapters: adding tokens, initialising their rows.

A preference token such as ``<pv_0_17>`` becomes one new row in a text model's input
embedding matrix (and, for an untied causal LM, in its output head). This module checks the
tokens, adds them to a tokenizer so that each encodes to exactly one id, and initialises the
new rows either from the mean embedding (plus small noise) or from given vectors, e.g. the
quantizer's code vectors mapped into the embedding space.

It also holds the checks both adapters run on saved folders (:func:`check_safetensors_file`,
:func:`read_json_file`), which raise :class:`AdapterFileError` naming the offending file.

Only torch and safetensors are imported at module level (no transformers); tokenizers are duck-typed
(:class:`TokenizerLike`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from safetensors import safe_open
from safetensors.torch import load_file

__all__ = [
    "AdapterFileError",
    "AddedTokensView",
    "PreferenceTokenError",
    "TokenInit",
    "TokenizerLike",
    "add_new_tokens",
    "check_safetensors_file",
    "initial_token_rows",
    "read_json_file",
]


class AddedTokensView:
    """What both adapters report about the tokens they added, read from their saved ``meta``."""

    meta: dict[str, Any]

    @property
    def tokens(self) -> list[str]:
        """The preference tokens, in the order given."""
        return list(self.meta["tokens"])

    @property
    def token_ids(self) -> torch.Tensor:
        """Their ids [N] (long); the same in every tokenizer the adapter extended."""
        return torch.tensor(self.meta["token_ids"], dtype=torch.long)

    @property
    def soft_prompt_tokens(self) -> list[str]:
        """The soft-prompt placeholder tokens (empty when none were reserved)."""
        return list(self.meta["soft_prompt_tokens"])


class PreferenceTokenError(ValueError):
    """Tokens that cannot be added (empty, duplicated, already known) or rows that cannot be initialised."""


@runtime_checkable
class TokenizerLike(Protocol):
    """The part of a transformers tokenizer the adapters use."""

    def get_vocab(self) -> dict[str, int]: ...
    def add_tokens(self, new_tokens: list[str], special_tokens: bool = False) -> int: ...
    def convert_tokens_to_ids(self, tokens: list[str]) -> list[int]: ...
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...
    def __len__(self) -> int: ...


def _check_new_tokens(tokens: Sequence[str]) -> list[str]:
    tokens = list(tokens)
    if not tokens:
        raise PreferenceTokenError("no tokens to add: the token list is empty")
    for token in tokens:
        if not isinstance(token, str) or not token or token != token.strip():
            raise PreferenceTokenError(f"invalid token {token!r}: tokens must be non-empty strings without surrounding spaces")
    seen: set[str] = set()
    duplicates = sorted({t for t in tokens if t in seen or seen.add(t)})  # type: ignore[func-returns-value]
    if duplicates:
        raise PreferenceTokenError(f"duplicate tokens in the list to add: {duplicates[:5]}")
    return tokens


def add_new_tokens(tokenizer: TokenizerLike, tokens: Sequence[str], *, what: str = "tokenizer") -> list[int]:
    """Add ``tokens`` to ``tokenizer`` as added (non-special) tokens; returns their ids in order.

    Raises :class:`PreferenceTokenError` when a token is already in the vocabulary: it would
    then keep its existing meaning (a trained row, or another run's preference code) while
    the caller believes it is new. Each token is checked to encode to exactly its one id,
    also when glued to other tokens (``"<pv_0_1><pv_1_3>"``), as prompt fragments write them.
    """
    tokens = _check_new_tokens(tokens)
    vocab = tokenizer.get_vocab()
    present = [(t, vocab[t]) for t in tokens if t in vocab]
    if present:
        shown = ", ".join(f"{t!r} (id {i})" for t, i in present[:5])
        raise PreferenceTokenError(
            f"{len(present)} token(s) already in the {what} vocabulary with a meaning of their own: {shown}; "
            "choose another token prefix, or load the saved adapter instead of adding the tokens again"
        )
    tokenizer.add_tokens(tokens, special_tokens=False)
    ids = [int(i) for i in tokenizer.convert_tokens_to_ids(tokens)]
    glued = "".join(tokens[:3])
    if tokenizer.encode(glued, add_special_tokens=False) != ids[:3]:
        raise PreferenceTokenError(f"the {what} does not encode {glued!r} as the added token ids {ids[:3]}")
    for token, token_id in zip(tokens, ids, strict=True):
        if tokenizer.encode(token, add_special_tokens=False) != [token_id]:
            raise PreferenceTokenError(f"the {what} does not encode {token!r} as its single added id {token_id}")
    return ids


@dataclass
class TokenInit:
    """How new token rows are initialised.

    ``method="mean"``: the mean of the existing rows plus Gaussian noise of ``noise`` times
    their per-dimension standard deviation (tokens start as "an average word", distinct).

    ``method="vectors"``: one given vector per token, ``vectors`` [N, k]. With k equal to the
    embedding width d and ``projection=None`` the vectors are used as they are. Otherwise
    they are mapped by ``projection`` ([k, d] matrix, e.g. from ``prefquant.fit_linear_map``, or
    ``"random"`` for a seeded Gaussian map) and then re-centred on the mean row with their
    spread scaled to the existing rows' spread, so that relative geometry (which users'
    codes are close) is kept while the rows look like ordinary token embeddings. For
    several text encoders of different widths (SDXL), pass ``projection="random"`` or a
    dict of per-encoder ``TokenInit``.
    """

    method: Literal["mean", "vectors"] = "mean"
    vectors: torch.Tensor | None = None
    projection: torch.Tensor | Literal["random"] | None = None
    noise: float = 0.1
    seed: int = 0


def initial_token_rows(existing: torch.Tensor, num_new: int, init: TokenInit, *, what: str = "embeddings") -> torch.Tensor:
    """Initial values [num_new, d] for new rows of an embedding matrix whose old rows are ``existing`` [V, d]."""
    reference = existing.detach().float()
    width = reference.shape[1]
    mean = reference.mean(0)
    generator = torch.Generator().manual_seed(init.seed)
    if init.method == "mean":
        std = reference.std(0)
        return mean + init.noise * std * torch.randn(num_new, width, generator=generator)
    if init.method != "vectors":
        raise PreferenceTokenError(f"unknown TokenInit.method {init.method!r} (use 'mean' or 'vectors')")
    if init.vectors is None:
        raise PreferenceTokenError("TokenInit(method='vectors') needs vectors [N, k]")
    vectors = init.vectors.detach().float().cpu()
    if vectors.ndim != 2 or vectors.shape[0] != num_new:
        raise PreferenceTokenError(f"init vectors must be [{num_new}, k] (one per new token), got {tuple(vectors.shape)}")
    if init.projection is None:
        if vectors.shape[1] != width:
            raise PreferenceTokenError(
                f"init vectors have width {vectors.shape[1]} but the {what} have width {width}; "
                "pass TokenInit(projection='random') or a [k, d] matrix (e.g. from prefquant.fit_linear_map)"
            )
        return vectors.clone()
    if isinstance(init.projection, str):
        if init.projection != "random":
            raise PreferenceTokenError(f"unknown projection {init.projection!r} (use 'random' or a [k, d] tensor)")
        matrix = torch.randn(vectors.shape[1], width, generator=generator) / vectors.shape[1] ** 0.5
    else:
        matrix = init.projection.detach().float().cpu()
        if matrix.shape != (vectors.shape[1], width):
            raise PreferenceTokenError(
                f"projection must be [{vectors.shape[1]}, {width}] for init vectors of width {vectors.shape[1]} "
                f"and {what} of width {width}, got {tuple(matrix.shape)}"
            )
    projected = vectors @ matrix
    centred = projected - projected.mean(0)
    spread = (reference - mean).norm(dim=1).mean()
    scale = spread / centred.norm(dim=1).mean().clamp_min(1e-12)
    return mean + centred * scale


class AdapterFileError(ValueError):
    """A saved adapter folder with a missing, unreadable or inconsistent file (the message names it)."""


def check_safetensors_file(path: object) -> list[str]:
    """The tensor names of a readable safetensors file; :class:`AdapterFileError` naming it otherwise."""
    file = Path(str(path))
    if not file.is_file():
        raise AdapterFileError(f"adapter file {file} is missing")
    try:
        with safe_open(str(file), framework="pt") as handle:
            names = list(handle.keys())
            for name in names:
                handle.get_slice(name)  # reads the header entry; truncated files fail here or below
        if not names:
            raise AdapterFileError(f"adapter file {file} holds no tensors")
        # A cheap full read: catches truncation that the header alone does not reveal.
        load_file(str(file))
    except AdapterFileError:
        raise
    except Exception as err:  # safetensors raises its own error types for corrupt headers/data
        raise AdapterFileError(f"adapter file {file} is not a readable safetensors file: {err}") from err
    return names


def read_json_file(path: object, required: Sequence[str]) -> dict:
    """A JSON object with the ``required`` keys; :class:`AdapterFileError` naming the file otherwise."""
    file = Path(str(path))
    if not file.is_file():
        raise AdapterFileError(f"adapter file {file} is missing")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AdapterFileError(f"adapter file {file} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise AdapterFileError(f"adapter file {file} must hold a JSON object")
    missing = [k for k in required if k not in data]
    if missing:
        raise AdapterFileError(f"adapter file {file} lacks the keys {missing}")
    return data
