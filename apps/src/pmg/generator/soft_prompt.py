"""The continuous soft-prompt baseline of the generator stage: no quantization, no tokens.

Each user's preference vector (the preference stage's ``user_preferences.safetensors``, the
generator's modalities concatenated, [U, k]) is standardised with the users' per-dimension mean
and spread and mapped by one trained linear map per embedding space (the LM's input embeddings,
or each CLIP text encoder of the SDXL pipeline) to ``S`` soft-prompt vectors. They fill the
adapter's placeholder tokens (``prefgen.SoftPromptInjector``), where the discrete variant has
the user's preference tokens; everything else (prompts, LoRA, steps, batches) is the same.

Saved as one safetensors file (the maps' weights, centres, the standardisation) whose metadata
holds the JSON config; :meth:`SoftPromptBaseline.load` rebuilds it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from prefgen import AdapterFileError, SoftPromptProjector

__all__ = ["SoftPromptBaseline", "preference_inputs"]

_FORMAT = "pmg-soft-prompt-baseline"


def preference_inputs(preferences: Mapping[str, torch.Tensor], modalities: Sequence[str]) -> torch.Tensor:
    """The users' preference vectors of ``modalities`` side by side: float [U, sum of d_m]."""
    missing = [m for m in modalities if m not in preferences]
    if missing or not modalities:
        raise ValueError(f"the preference stage has no user vectors for {missing or '(no modality)'}; it has {sorted(preferences)}")
    return torch.cat([preferences[m].float() for m in modalities], dim=1)


class SoftPromptBaseline(nn.Module):
    """User preference vectors [B, k] → soft-prompt vectors, one [B, S, d_e] per embedding space.

    Args:
        modalities: whose preference vectors are the input (for the record and for loading).
        mean, std: [k] standardisation of the input (the users' statistics), so that the
            projectors' calibrated initialisation (``SoftPromptProjector``) applies.
        num_slots: S, the adapter's soft-prompt placeholders.
        spaces: per embedding space, (centre [d_e], spread) of its original rows
            (``adapter.embedding_center_and_spread()``): outputs start near an average word.
    """

    def __init__(self, modalities: Sequence[str], mean: torch.Tensor, std: torch.Tensor, num_slots: int,
                 spaces: Sequence[tuple[torch.Tensor, float]], init_scale: float = 0.1) -> None:
        super().__init__()
        if mean.shape != std.shape or mean.ndim != 1:
            raise ValueError(f"mean and std must both be [k], got {tuple(mean.shape)} and {tuple(std.shape)}")
        self.modalities = list(modalities)
        self.num_slots = int(num_slots)
        self.register_buffer("mean", mean.detach().float().clone())
        self.register_buffer("std", std.detach().float().clone())
        self.projectors = nn.ModuleList(
            SoftPromptProjector(len(mean), num_slots, len(center), center=center, spread=spread, init_scale=init_scale)
            for center, spread in spaces
        )

    @classmethod
    def for_users(cls, modalities: Sequence[str], preferences: torch.Tensor, num_slots: int,
                  spaces: Sequence[tuple[torch.Tensor, float]]) -> SoftPromptBaseline:
        """Standardised by the statistics of ``preferences`` [U, k] (constant dimensions keep std 1)."""
        std = preferences.float().std(dim=0)
        return cls(modalities, preferences.float().mean(dim=0), torch.where(std > 1e-8, std, torch.ones_like(std)),
                   num_slots, spaces)

    @property
    def widths(self) -> list[int]:
        return [p.out_dim for p in self.projectors]

    def forward(self, preferences: torch.Tensor) -> list[torch.Tensor]:
        """preferences [B, k] → one [B, S, d_e] per embedding space."""
        if preferences.ndim != 2 or preferences.shape[1] != len(self.mean):
            raise ValueError(f"preference vectors must be [B, {len(self.mean)}], got {tuple(preferences.shape)}")
        standard = (preferences.float() - self.mean) / self.std
        return [projector(standard) for projector in self.projectors]

    def save(self, path: str | Path) -> Path:
        """One safetensors file; its metadata holds modalities, slots, input size and widths."""
        path = Path(path)
        config = {"format": _FORMAT, "modalities": self.modalities, "num_slots": self.num_slots,
                  "in_dim": len(self.mean), "widths": self.widths}
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(path), metadata={"config": json.dumps(config)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> SoftPromptBaseline:
        """Rebuild a baseline written by :meth:`save`; ``AdapterFileError`` naming the file otherwise."""
        path = Path(path)
        if not path.is_file():
            raise AdapterFileError(f"soft-prompt baseline file {path} is missing")
        try:
            with safe_open(str(path), framework="pt") as handle:
                config = json.loads((handle.metadata() or {}).get("config", "{}"))
            state = load_file(str(path))
        except (SafetensorError, OSError, json.JSONDecodeError) as err:
            raise AdapterFileError(f"soft-prompt baseline file {path} is damaged: {err}") from err
        if config.get("format") != _FORMAT:
            raise AdapterFileError(f"{path} is not a soft-prompt baseline (format {config.get('format')!r}, expected {_FORMAT!r})")
        k = int(config["in_dim"])
        spaces = [(torch.zeros(width), 1.0) for width in config["widths"]]
        baseline = cls(config["modalities"], torch.zeros(k), torch.ones(k), int(config["num_slots"]), spaces)
        try:
            baseline.load_state_dict(state)
        except RuntimeError as err:
            raise AdapterFileError(f"soft-prompt baseline file {path} does not match its own config: {err}") from err
        return baseline
