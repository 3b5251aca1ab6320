"""Preference tokens: (modality, level, code) <-> strings such as ``<pv_0_17>``.

A token is ``<{prefix}_{level}_{code}>``. Each modality has its own prefix (by default
``pv`` visual, ``pt`` textual, ``pi`` id) and its own number of levels and codebook
sizes, so codes of different quantizers never share a token.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .safetensors_io import atomic_write_bytes

__all__ = ["DEFAULT_PREFIXES", "ModalitySpec", "PreferenceTokenizer", "TokenParseError"]

DEFAULT_PREFIXES: Mapping[str, str] = {"visual": "pv", "textual": "pt", "id": "pi"}

_PREFIX_RE = re.compile(r"[A-Za-z][A-Za-z0-9]*")
# Canonical decimal numbers only (no leading zeros), so that every string has one meaning.
_TOKEN_RE = re.compile(r"<([A-Za-z][A-Za-z0-9]*)_(0|[1-9][0-9]*)_(0|[1-9][0-9]*)>")
_CONFIG_FORMAT = "prefquant.tokenizer"
_CONFIG_VERSION = 1


class TokenParseError(ValueError):
    """A string holds a malformed, unknown-level, out-of-range, duplicate or missing preference token."""


@dataclass(frozen=True)
class ModalitySpec:
    """How one modality's codes become tokens.

    Attributes:
        prefix: token prefix, letters and digits starting with a letter (e.g. ``"pv"``).
        codebook_sizes: codes per level, one entry per level, so ``len(codebook_sizes)``
            is the number of levels L (a semantic-ID disambiguation level may be smaller
            or larger than the quantizer's K).
    """

    prefix: str
    codebook_sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.prefix, str) or not _PREFIX_RE.fullmatch(self.prefix):
            raise ValueError(f"prefix must be letters/digits starting with a letter, got {self.prefix!r}")
        sizes = tuple(self.codebook_sizes)
        if not sizes or not all(isinstance(s, int) and s >= 1 for s in sizes):
            raise ValueError(
                f"codebook_sizes must be a non-empty sequence of positive ints, got {self.codebook_sizes!r}"
            )
        object.__setattr__(self, "codebook_sizes", sizes)

    @property
    def num_levels(self) -> int:
        """Number of levels L."""
        return len(self.codebook_sizes)


class PreferenceTokenizer:
    """Maps codes of each modality to token strings and back.

    Args:
        modalities: modality name -> :class:`ModalitySpec`. The mapping's order is the
            order of :meth:`all_tokens` and :meth:`prompt_fragment`.

    Use :meth:`uniform` for the common case of the same L and K for every modality.
    """

    def __init__(self, modalities: Mapping[str, ModalitySpec]) -> None:
        if not modalities:
            raise ValueError("at least one modality is required")
        prefixes: dict[str, str] = {}
        for name, spec in modalities.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"modality names must be non-empty strings, got {name!r}")
            if not isinstance(spec, ModalitySpec):
                raise TypeError(f"modality {name!r}: expected a ModalitySpec, got {type(spec).__name__}")
            if spec.prefix in prefixes:
                raise ValueError(
                    f"modalities {prefixes[spec.prefix]!r} and {name!r} share the prefix {spec.prefix!r}"
                )
            prefixes[spec.prefix] = name
        self._specs: dict[str, ModalitySpec] = dict(modalities)
        self._modality_by_prefix = prefixes
        # Only '<' followed by one of our prefixes and '_' is ours; other markup passes through parse().
        alternatives = "|".join(re.escape(p) for p in sorted(prefixes, key=len, reverse=True))
        self._start_re = re.compile(rf"<(?:{alternatives})_")

    @classmethod
    def uniform(
        cls,
        num_levels: int,
        codebook_size: int,
        prefixes: Mapping[str, str] = DEFAULT_PREFIXES,
    ) -> PreferenceTokenizer:
        """Tokenizer with L = ``num_levels`` levels of K = ``codebook_size`` codes for each modality.

        Args:
            prefixes: modality name -> prefix; defaults to visual ``pv``, textual ``pt``,
                id ``pi``.
        """
        if not isinstance(num_levels, int) or num_levels < 1:
            raise ValueError(f"num_levels must be a positive int, got {num_levels!r}")
        return cls(
            {name: ModalitySpec(prefix, (codebook_size,) * num_levels) for name, prefix in prefixes.items()}
        )

    # ----------------------------------------------------------------- introspection
    @property
    def modalities(self) -> tuple[str, ...]:
        """Modality names in order."""
        return tuple(self._specs)

    def spec(self, modality: str) -> ModalitySpec:
        """The :class:`ModalitySpec` of ``modality`` (KeyError naming the known ones otherwise)."""
        try:
            return self._specs[modality]
        except KeyError:
            raise KeyError(f"unknown modality {modality!r}; known: {list(self._specs)}") from None

    def __len__(self) -> int:
        return sum(sum(spec.codebook_sizes) for spec in self._specs.values())

    def __repr__(self) -> str:
        inner = ", ".join(f"{m}={s.prefix}:{list(s.codebook_sizes)}" for m, s in self._specs.items())
        return f"PreferenceTokenizer({inner})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PreferenceTokenizer) and self._specs == other._specs

    __hash__ = None  # type: ignore[assignment]

    # ----------------------------------------------------------------- codes -> strings
    def token(self, modality: str, level: int, code: int) -> str:
        """The token string of one code, e.g. ``token("visual", 0, 17) == "<pv_0_17>"``."""
        spec = self.spec(modality)
        if not 0 <= level < spec.num_levels:
            raise ValueError(f"{modality}: level {level} out of range [0, {spec.num_levels})")
        if not 0 <= code < spec.codebook_sizes[level]:
            raise ValueError(
                f"{modality}: level {level} code {code} out of range [0, {spec.codebook_sizes[level]})"
            )
        return f"<{spec.prefix}_{level}_{code}>"

    def all_tokens(self, modalities: Sequence[str] | None = None) -> list[str]:
        """Every token, ordered by modality, level, code: the strings to add to a generator's vocabulary.

        ``modalities`` picks some modalities, in the order given (a generator that reads only
        the visual tokens); ``None`` takes all of them, in the tokenizer's order. An unknown
        name raises ``KeyError`` naming the known ones.
        """
        specs = self._specs.values() if modalities is None else [self.spec(m) for m in modalities]
        return [
            f"<{spec.prefix}_{level}_{code}>"
            for spec in specs
            for level, size in enumerate(spec.codebook_sizes)
            for code in range(size)
        ]

    def _as_code_matrix(
        self, modality: str, codes: Tensor | Sequence[int] | Sequence[Sequence[int]]
    ) -> Tensor:
        spec = self.spec(modality)
        tensor = codes if isinstance(codes, Tensor) else torch.as_tensor(codes)
        if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
            raise TypeError(f"{modality}: codes must be integers, got {tensor.dtype}")
        if tensor.dim() not in (1, 2) or tensor.shape[-1] != spec.num_levels:
            raise ValueError(
                f"{modality}: codes must have shape [{spec.num_levels}] or [N, {spec.num_levels}], got {list(tensor.shape)}"
            )
        matrix = tensor.reshape(-1, spec.num_levels).long().cpu()
        sizes = torch.tensor(spec.codebook_sizes)
        bad = (matrix < 0) | (matrix >= sizes)
        if bool(bad.any()):
            row, level = (int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"{modality}: code {int(matrix[row, level])} at level {level} out of range [0, {spec.codebook_sizes[level]})"
            )
        return matrix

    def to_tokens(
        self, modality: str, codes: Tensor | Sequence[int] | Sequence[Sequence[int]]
    ) -> list[str] | list[list[str]]:
        """Token strings of codes [L] (-> list of L strings) or [N, L] (-> N lists of L strings)."""
        tensor = codes if isinstance(codes, Tensor) else torch.as_tensor(codes)
        matrix = self._as_code_matrix(modality, tensor)
        prefix = self._specs[modality].prefix
        rows = [[f"<{prefix}_{level}_{code}>" for level, code in enumerate(row)] for row in matrix.tolist()]
        return rows[0] if tensor.dim() == 1 else rows

    def prompt_fragment(self, codes_by_modality: Mapping[str, Tensor | Sequence[int]]) -> str:
        """One user's tokens as a string, modalities in tokenizer order: ``"<pv_0_3><pv_1_9><pt_0_5>..."``.

        Args:
            codes_by_modality: modality -> codes [L] (a subset of the modalities is fine).
        """
        unknown = set(codes_by_modality) - set(self._specs)
        if unknown:
            raise KeyError(f"unknown modalities {sorted(unknown)}; known: {list(self._specs)}")
        parts: list[str] = []
        for modality in self._specs:
            if modality in codes_by_modality:
                codes = codes_by_modality[modality]
                tensor = codes if isinstance(codes, Tensor) else torch.as_tensor(codes)
                if tensor.dim() != 1:
                    raise ValueError(
                        f"{modality}: prompt_fragment takes one user's codes [L], got {list(tensor.shape)}"
                    )
                parts.extend(self.to_tokens(modality, tensor))  # type: ignore[arg-type]
        return "".join(parts)

    # ----------------------------------------------------------------- strings -> codes
    def parse_token(self, token: str) -> tuple[str, int, int]:
        """(modality, level, code) of one token string; TokenParseError if it is not one of ours."""
        match = _TOKEN_RE.fullmatch(token)
        if match is None:
            raise TokenParseError(f"malformed preference token {token!r}")
        return self._check_parsed(match, token)

    def _check_parsed(self, match: re.Match[str], shown: str) -> tuple[str, int, int]:
        prefix, level, code = match.group(1), int(match.group(2)), int(match.group(3))
        modality = self._modality_by_prefix.get(prefix)
        if modality is None:
            raise TokenParseError(
                f"unknown prefix {prefix!r} in {shown!r}; known: {sorted(self._modality_by_prefix)}"
            )
        spec = self._specs[modality]
        if level >= spec.num_levels:
            raise TokenParseError(
                f"level {level} out of range [0, {spec.num_levels}) in {shown!r} ({modality})"
            )
        if code >= spec.codebook_sizes[level]:
            raise TokenParseError(
                f"code {code} out of range [0, {spec.codebook_sizes[level]}) at level {level} in {shown!r} ({modality})"
            )
        return modality, level, code

    def parse(self, text: str) -> dict[str, Tensor]:
        """Codes by modality from a string holding one user's tokens.

        Text between tokens and markup that does not start with one of our prefixes is
        ignored. Each modality present must have every level exactly once (in any order).

        Returns:
            modality -> codes [L] (long), for the modalities that appear in ``text``.

        Raises:
            TokenParseError: a malformed token with one of our prefixes (e.g. ``<pv_0_x>``,
                ``<pv_01_3>``), a level or code out of range, a level given twice, or a
                modality with levels missing.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        found: dict[str, dict[int, int]] = {}
        for start in self._start_re.finditer(text):
            match = _TOKEN_RE.match(text, start.start())
            if match is None:
                snippet = text[start.start() : start.start() + 24]
                raise TokenParseError(f"malformed preference token at character {start.start()}: {snippet!r}")
            modality, level, code = self._check_parsed(match, match.group(0))
            levels = found.setdefault(modality, {})
            if level in levels:
                raise TokenParseError(
                    f"{modality}: level {level} appears twice (codes {levels[level]} and {code})"
                )
            levels[level] = code
        result: dict[str, Tensor] = {}
        for modality in self._specs:
            if modality not in found:
                continue
            spec = self._specs[modality]
            missing = [level for level in range(spec.num_levels) if level not in found[modality]]
            if missing:
                raise TokenParseError(
                    f"{modality}: levels {missing} missing (expected {spec.num_levels} levels)"
                )
            result[modality] = torch.tensor([found[modality][level] for level in range(spec.num_levels)])
        return result

    # ----------------------------------------------------------------- persistence
    def to_config(self) -> dict[str, Any]:
        """JSON-serialisable description; :meth:`from_config` rebuilds an equal tokenizer."""
        return {
            "format": _CONFIG_FORMAT,
            "format_version": _CONFIG_VERSION,
            "modalities": [
                {"name": name, "prefix": spec.prefix, "codebook_sizes": list(spec.codebook_sizes)}
                for name, spec in self._specs.items()
            ],
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> PreferenceTokenizer:
        """Inverse of :meth:`to_config`; ValueError on an unknown format or version."""
        if config.get("format") != _CONFIG_FORMAT:
            raise ValueError(f"not a prefquant tokenizer config (format={config.get('format')!r})")
        if config.get("format_version") != _CONFIG_VERSION:
            raise ValueError(
                f"unsupported tokenizer format_version {config.get('format_version')!r} (supported: {_CONFIG_VERSION})"
            )
        return cls(
            {
                entry["name"]: ModalitySpec(entry["prefix"], tuple(entry["codebook_sizes"]))
                for entry in config["modalities"]
            }
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the config as JSON to ``path`` (atomically)."""
        atomic_write_bytes(path, (json.dumps(self.to_config(), indent=2) + "\n").encode("utf-8"))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PreferenceTokenizer:
        """Read a tokenizer written by :meth:`save`; errors name the file."""
        path = Path(path)
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such tokenizer file") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        try:
            return cls.from_config(config)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: invalid tokenizer config: {exc}") from None
