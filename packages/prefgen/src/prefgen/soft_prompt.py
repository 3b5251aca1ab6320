"""Soft-prompt baseline: continuous per-user vectors in place of discrete preference tokens.

Both adapters reserve a few placeholder tokens (``<pmg_soft_0>``, ``<pmg_soft_1>``, …) whose
rows are never trained. While a :class:`SoftPromptInjector` context is active, the input
embedding of placeholder ``k`` in batch row ``b`` is replaced by ``vectors[b, k]``, so the
same prompt text, tokenization, encoder and generation code serve both the discrete-token
and the continuous baseline; gradients flow into ``vectors`` (e.g. from a
:class:`SoftPromptProjector` mapping a user's preference embedding into the embedding space).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["DEFAULT_SOFT_PREFIX", "SoftPromptInjector", "SoftPromptProjector", "soft_prompt_tokens"]

DEFAULT_SOFT_PREFIX = "pmg_soft"


def soft_prompt_tokens(num_slots: int, prefix: str = DEFAULT_SOFT_PREFIX) -> list[str]:
    """The placeholder token strings ``<prefix_0>`` … ``<prefix_{num_slots-1}>``."""
    return [f"<{prefix}_{k}>" for k in range(num_slots)]


class SoftPromptInjector:
    """Overrides the input embeddings of placeholder ids with per-batch vectors.

    ``embedding`` is the module that maps ids [B, T] to embeddings [B, T, d] (a text
    encoder's or LM's input embedding, possibly wrapped by peft); ``slot_ids`` the S
    placeholder ids. Inside ``with injector(vectors):`` (vectors [B, S, d]) every call of
    that module whose ids contain a placeholder gets it replaced; calls without any
    placeholder (negative prompts, later decoding steps) are left untouched.
    """

    def __init__(self, embedding: nn.Module, slot_ids: Sequence[int]) -> None:
        self.embedding = embedding
        self.slot_ids = [int(i) for i in slot_ids]
        self._vectors: torch.Tensor | None = None

    @property
    def num_slots(self) -> int:
        return len(self.slot_ids)

    def _hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        ids = args[0] if args else None
        vectors = self._vectors
        if vectors is None or not isinstance(ids, torch.Tensor) or ids.ndim != 2:
            return output
        slots = torch.tensor(self.slot_ids, device=ids.device)
        hits = ids.unsqueeze(-1) == slots  # [B, T, S]
        if not bool(hits.any()):
            return output
        if ids.shape[0] != vectors.shape[0]:
            raise ValueError(
                f"soft prompt vectors are for {vectors.shape[0]} prompts but the encoder got a batch of {ids.shape[0]} "
                "containing placeholder tokens"
            )
        # [B, T, d]: for each position, the vector of the slot found there (zero where none).
        replacement = torch.einsum("bts,bsd->btd", hits.to(vectors.dtype), vectors.to(output.device))
        return torch.where(hits.any(-1, keepdim=True), replacement.to(output.dtype), output)

    @contextmanager
    def __call__(self, vectors: torch.Tensor) -> Iterator[None]:
        """Activate with ``vectors`` [B, S, d] (S = number of slots, d = embedding width)."""
        width = _embedding_width(self.embedding)
        if vectors.ndim != 3 or vectors.shape[1] != self.num_slots or (width is not None and vectors.shape[2] != width):
            raise ValueError(
                f"soft prompt vectors must be [B, {self.num_slots}, {width}] (slots, embedding width), got {tuple(vectors.shape)}"
            )
        handle = self.embedding.register_forward_hook(self._hook)
        self._vectors = vectors
        try:
            yield
        finally:
            self._vectors = None
            handle.remove()


def _embedding_width(module: nn.Module) -> int | None:
    weight = getattr(module, "weight", None)
    if weight is None and hasattr(module, "get_base_layer"):
        weight = getattr(module.get_base_layer(), "weight", None)
    if weight is None and hasattr(module, "original_module"):
        weight = getattr(module.original_module, "weight", None)
    return int(weight.shape[-1]) if weight is not None else None


class SoftPromptProjector(nn.Module):
    """Maps a user's preference vector [B, k] to soft-prompt vectors [B, S, d].

    ``center`` [d] (e.g. the mean embedding row) is added so that outputs start near
    ordinary token embeddings; the linear map starts small (``init_scale`` times the
    rows' typical spread ``spread``, the mean distance of a row to the mean row) so that
    training starts near "an average word".
    """

    def __init__(
        self,
        in_dim: int,
        num_slots: int,
        out_dim: int,
        *,
        center: torch.Tensor | None = None,
        spread: float = 1.0,
        init_scale: float = 0.1,
    ) -> None:
        super().__init__()
        self.num_slots, self.out_dim = num_slots, out_dim
        self.linear = nn.Linear(in_dim, num_slots * out_dim)
        with torch.no_grad():
            # Unit-variance inputs give per-dimension outputs of std init_scale * spread / sqrt(d),
            # i.e. rows whose norm is about init_scale times the rows' typical spread.
            self.linear.weight.normal_(0.0, init_scale * spread / (in_dim * out_dim) ** 0.5)
            self.linear.bias.zero_()
        self.register_buffer("center", center.detach().float().clone() if center is not None else torch.zeros(out_dim))

    def forward(self, preference: torch.Tensor) -> torch.Tensor:
        """preference [B, k] → vectors [B, S, d]."""
        out = self.linear(preference).view(preference.shape[0], self.num_slots, self.out_dim)
        return out + self.center.to(out.dtype)
