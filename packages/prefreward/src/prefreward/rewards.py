"""Rewards for personalized multimodal generation: consistency, personalization, their sum.

Every reward returns one value per sample, shape [B], bounded, and differentiable w.r.t.
whatever continuous input it was given (images, content embeddings, a learned map).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F

from prefreward._clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ClipEmbedder, ImageRange

if TYPE_CHECKING:
    from transformers import CLIPModel, PreTrainedTokenizerBase

__all__ = [
    "ConsistencyReward",
    "PersonalizationReward",
    "RankingPersonalizationReward",
    "CombinedReward",
]


def _to_unit_interval(cosine: torch.Tensor) -> torch.Tensor:
    return (cosine + 1.0) / 2.0


class ConsistencyReward(nn.Module):
    """CLIP agreement between a generated image and a generated text.

    ``forward(images [N, 3, H, W], texts: B strings, image_index [B] | None) -> [B]``: text
    ``b`` is scored against ``images[image_index[b]]`` (default: ``image_index = arange(B)``,
    one image per text; several texts may share an image, e.g. a GRPO group), as

    - ``"cosine"``: the cosine of the two CLIP embeddings, in [-1, 1], or ``(cosine + 1) / 2``
      in [0, 1] with ``unit_interval=True``;
    - ``"contrastive"``: the probability, in [0, 1], that the text picks its own image among
      the N images: ``softmax_k(logit_scale · cos(text_b, image_k))[image_index[b]]``. A text
      that says nothing distinctive ("a jacket by Iris") scores ~1/N however well it fits;
      one that names what sets its image apart (its colour) scores high. The cosine hardly
      separates the two (a tiny CLIP: 0.69 vs 0.62, against 0.24 for the wrong colour), so a
      policy maximising it learns to name nothing it could get wrong. Needs N >= 2 distinct
      images to carry a signal (with one image every text scores 1).

    Differentiable w.r.t. ``images`` (the CLIP weights are frozen), so a diffusion model can
    be fine-tuned by backpropagating through it.

    Args:
        embedder: a ``ClipEmbedder`` (model, tokenizer, normalisation, image range); build
            one from a folder with ``ConsistencyReward.from_pretrained``.
        unit_interval: map the cosine to [0, 1] (``"cosine"`` only).
        mode: ``"cosine"`` or ``"contrastive"``.
        logit_scale: the contrastive softmax's inverse temperature; None: the CLIP model's
            own learned ``logit_scale.exp()`` (100 for OpenAI's CLIP).
    """

    def __init__(self, embedder: ClipEmbedder, unit_interval: bool = False, mode: str = "cosine",
                 logit_scale: float | None = None) -> None:
        super().__init__()
        if mode not in ("cosine", "contrastive"):
            raise ValueError(f"mode must be 'cosine' or 'contrastive', got {mode!r}")
        if mode == "contrastive" and unit_interval:
            raise ValueError("the contrastive reward is a probability already: unit_interval applies to 'cosine' only")
        if logit_scale is None:
            scale = getattr(embedder.model, "logit_scale", None)
            logit_scale = float(scale.exp()) if scale is not None else 100.0
        if logit_scale <= 0:
            raise ValueError(f"logit_scale must be > 0, got {logit_scale}")
        self.embedder = embedder
        self.unit_interval, self.mode, self.logit_scale = unit_interval, mode, float(logit_scale)

    @classmethod
    def from_model(
        cls,
        model: CLIPModel,
        tokenizer: PreTrainedTokenizerBase | Any,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        image_range: ImageRange = "-1,1",
        unit_interval: bool = False,
        mode: str = "cosine",
        logit_scale: float | None = None,
    ) -> ConsistencyReward:
        """From an in-memory ``CLIPModel`` and tokenizer (or ``CLIPProcessor``, whose mean/std are used)."""
        image_processor = getattr(tokenizer, "image_processor", None)
        if image_mean is None:
            image_mean = getattr(image_processor, "image_mean", None) or OPENAI_CLIP_MEAN
        if image_std is None:
            image_std = getattr(image_processor, "image_std", None) or OPENAI_CLIP_STD
        embedder = ClipEmbedder(model, tokenizer, image_mean=image_mean, image_std=image_std, image_range=image_range)
        return cls(embedder, unit_interval=unit_interval, mode=mode, logit_scale=logit_scale)

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, image_range: ImageRange = "-1,1", unit_interval: bool = False, mode: str = "cosine",
        logit_scale: float | None = None, **model_kwargs: Any
    ) -> ConsistencyReward:
        """From any ``save_pretrained`` CLIP folder: the pmg zoo's tiny CLIP or a real checkpoint."""
        return cls(ClipEmbedder.from_pretrained(folder, image_range=image_range, **model_kwargs), unit_interval=unit_interval,
                   mode=mode, logit_scale=logit_scale)

    def forward(self, images: torch.Tensor, texts: Sequence[str], image_index: torch.Tensor | None = None) -> torch.Tensor:
        """images [N, 3, H, W] in the embedder's range, texts B strings, image_index [B] (each text's
        image; default one image per text, N = B) → rewards [B]."""
        if image_index is None:
            if len(texts) != images.shape[0]:
                raise ValueError(f"{images.shape[0]} images but {len(texts)} texts (pass image_index to share images)")
            image_index = torch.arange(len(texts))
        image_index = torch.as_tensor(image_index, dtype=torch.long, device=images.device)
        if image_index.shape != (len(texts),) or (len(texts) and not 0 <= int(image_index.min()) <= int(image_index.max()) < images.shape[0]):
            raise ValueError(f"image_index must hold one index in [0, {images.shape[0]}) per text ({len(texts)})")
        image_vectors, text_vectors = self.embedder.embed_images(images), self.embedder.embed_texts(texts)  # [N, d], [B, d]
        if self.mode == "contrastive":
            logits = self.logit_scale * text_vectors @ image_vectors.T  # [B, N]
            return logits.float().softmax(dim=-1).gather(1, image_index[:, None]).squeeze(1)
        cosine = (image_vectors[image_index] * text_vectors).sum(dim=-1)
        return _to_unit_interval(cosine) if self.unit_interval else cosine


class PersonalizationReward(nn.Module):
    """Agreement between generated content and the user's modal preference vector.

    ``forward(content [B, d_c], preference [B, d]) -> [B]``: the cosine between
    ``map(content)`` and ``preference``, in [-1, 1] (or [0, 1] with ``unit_interval=True``).
    ``content`` is a CLIP image or text embedding of the generated item (e.g.
    ``ClipEmbedder.embed_images``, differentiable w.r.t. the pixels); the map is a linear layer
    [d_c → d], learned (``trainable=True``) or given (``weight`` [d, d_c] from a checkpoint, or
    fitted on the catalog's items as ``prefquant.fit_linear_map(content, preference).T``). With
    ``content_dim == preference_dim`` and no weight the map is the identity.

    Args:
        content_dim: d_c, width of the content embedding.
        preference_dim: d, width of the preference vector.
        weight: optional [d, d_c] initial map.
        trainable: whether the map's weight receives gradients (learn it jointly, e.g. with
            a contrastive loss on (liked item, user) pairs; freeze it during RL).
        unit_interval: map the cosine to [0, 1].
    """

    def __init__(
        self,
        content_dim: int,
        preference_dim: int,
        weight: torch.Tensor | None = None,
        trainable: bool = False,
        unit_interval: bool = False,
    ) -> None:
        super().__init__()
        self.projection = nn.Linear(content_dim, preference_dim, bias=False)
        with torch.no_grad():
            if weight is not None:
                if tuple(weight.shape) != (preference_dim, content_dim):
                    raise ValueError(f"weight must be [{preference_dim}, {content_dim}], got {tuple(weight.shape)}")
                self.projection.weight.copy_(weight)
            elif content_dim == preference_dim:
                self.projection.weight.copy_(torch.eye(content_dim))
        self.projection.weight.requires_grad_(trainable)
        self.unit_interval = unit_interval

    def forward(self, content: torch.Tensor, preference: torch.Tensor) -> torch.Tensor:
        """content [B, d_c], preference [B, d] → rewards [B]."""
        mapped = self.projection(content.to(self.projection.weight.dtype))
        cosine = F.cosine_similarity(mapped, preference.to(mapped.dtype), dim=-1, eps=1e-8)
        return _to_unit_interval(cosine) if self.unit_interval else cosine


RankingScorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class RankingPersonalizationReward(nn.Module):
    """Reward = how surely a ranking model picks the generated item first among C candidates.

    The RAGAR idea: rather than rewarding closeness to a reference (which teaches copying),
    ask a user-aware ranker whether this user would choose the generated item over
    alternatives (e.g. the reference and other catalog items).

    ``forward(users [B], generated [B, d], candidates [B, C-1, d]) -> [B]``: the generated
    item is placed at index 0 of C candidates, ``scorer(users, items [B, C, d])`` returns
    logits [B, C], and the reward is

    - ``output="probability"``: softmax probability of index 0, in [0, 1];
    - ``output="log_probability"``: ``log(p + floor) - log(1 + floor)``, in
      [log(floor / (1 + floor)), 0]: a log-probability kept bounded and smooth, so one
      hopeless sample cannot dominate the batch.

    Differentiable w.r.t. ``generated`` (and the scorer's parameters, if any).
    """

    def __init__(self, scorer: RankingScorer, output: str = "log_probability", floor: float = 1e-4) -> None:
        super().__init__()
        if output not in ("probability", "log_probability"):
            raise ValueError(f"output must be 'probability' or 'log_probability', got {output!r}")
        if floor <= 0:
            raise ValueError("floor must be > 0")
        self.scorer = scorer
        self.output = output
        self.floor = floor

    def forward(self, users: torch.Tensor, generated: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """users [B] (ids or anything the scorer takes), generated [B, d], candidates [B, C-1, d] → [B]."""
        if candidates.ndim != 3 or generated.ndim != 2 or candidates.shape[0] != generated.shape[0]:
            raise ValueError(f"generated [B, d] and candidates [B, C-1, d] expected, got {tuple(generated.shape)} and {tuple(candidates.shape)}")
        items = torch.cat([generated.unsqueeze(1), candidates.to(generated.dtype)], dim=1)  # [B, C, d]
        logits = self.scorer(users, items)
        if logits.shape != items.shape[:2]:
            raise ValueError(f"scorer must return logits [B, C] = {tuple(items.shape[:2])}, got {tuple(logits.shape)}")
        probability = logits.float().softmax(dim=-1)[:, 0]
        if self.output == "probability":
            return probability
        return torch.log(probability + self.floor) - math.log1p(self.floor)


RewardComponent = Callable[..., torch.Tensor]


class CombinedReward(nn.Module):
    """A weighted sum of named reward components.

    ``forward(**inputs) -> (total [B], {name: value [B]})``: each component is called with
    the keyword arguments it declares among ``inputs`` (so ``consistency(images, texts)`` and
    ``personalization(content, preference)`` can share one call); ``combine(values)`` weights
    values already computed. The per-component values come back detached, for logging.

    Args:
        weights: name → weight (from a config: ``{"consistency": 1.0, "personalization": 0.5}``).
            Components with weight 0 are skipped.
        components: name → callable returning [B]; every weighted name needs one to use
            ``forward`` (``combine`` needs none).
    """

    def __init__(self, weights: Mapping[str, float], components: Mapping[str, RewardComponent] | None = None) -> None:
        super().__init__()
        if not weights:
            raise ValueError("CombinedReward needs at least one weight")
        self.weights = {str(name): float(weight) for name, weight in weights.items()}
        components = dict(components or {})
        unknown = sorted(set(components) - set(self.weights))
        if unknown:
            raise ValueError(f"components without a weight: {unknown}")
        # nn.Module components are registered so .to(device) and state_dict reach them.
        self.modules_by_name = nn.ModuleDict({n: c for n, c in components.items() if isinstance(c, nn.Module)})
        self.components = components

    def _active(self) -> list[str]:
        return [name for name, weight in self.weights.items() if weight != 0.0]

    def combine(self, values: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """values name → [B] → (weighted total [B], detached per-component values)."""
        active = self._active()
        missing = [name for name in active if name not in values]
        if missing:
            raise KeyError(f"missing reward values: {missing}")
        shapes = {tuple(values[name].shape) for name in active}
        if len(shapes) != 1 or len(next(iter(shapes))) != 1:
            raise ValueError(f"every component must return one value per sample [B], got shapes {sorted(shapes)}")
        total = sum(self.weights[name] * values[name].float() for name in active)
        return total, {name: values[name].detach() for name in active}  # type: ignore[return-value]

    def forward(self, **inputs: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        values: dict[str, torch.Tensor] = {}
        for name in self._active():
            if name not in self.components:
                raise KeyError(f"no component named {name!r}")
            component = self.components[name]
            target = component.forward if isinstance(component, nn.Module) else component
            parameters = inspect.signature(target).parameters
            takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
            arguments = inputs if takes_any else {k: v for k, v in inputs.items() if k in parameters}
            values[name] = component(**arguments)
        return self.combine(values)
