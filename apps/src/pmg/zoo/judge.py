"""The attribute judge: a small CNN that reads ground-truth attributes (colour, pattern,
category; MovieLens genres) off an image. Later stages use it to score personalization of
generated images.

Each attribute has one head. A *single-label* head (the catalog's colour: one value per item) is a
softmax over the values; a *multi-label* head (MovieLens genres: a set of values per item, written
``"Action|Crime"``) is one sigmoid per value. Either way :meth:`AttributeJudge.predict` gives the
most likely value.

Saved as ``model.safetensors`` + ``config.json``; :func:`load_judge` validates both (format,
version, attribute lists, which heads are multi-label, tensor names and shapes) and names what is
wrong. Version 1 judges (before multi-label heads) load as judges with single-label heads only.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from pathlib import Path

import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from pmg.atomic import atomic_directory
from pmg.data.images import image_tensor

__all__ = ["JUDGE_FORMAT", "JudgeError", "AttributeJudge", "save_judge", "load_judge"]

JUDGE_FORMAT = "pmg-attribute-judge"
# 2: config.json lists the multi-label heads ("multi_label"); a version-1 config has none.
_JUDGE_VERSION = 2
_READABLE_VERSIONS = (1, 2)


class JudgeError(ValueError):
    """A judge folder that is missing, of another format, or damaged."""


class AttributeJudge(nn.Module):
    """Stride-2 conv + GroupNorm + SiLU layers, global average pooling, one head per attribute.

    ``forward(images [B, 3, S, S] in [-1, 1])`` → ``{attribute: logits [B, len(values)]}``: a
    softmax's logits for a single-label attribute, one sigmoid logit per value for those in
    ``multi_label`` (an item may have several values).
    """

    def __init__(self, attributes: dict[str, Sequence[str]], channels: Sequence[int], image_size: int,
                 multi_label: Collection[str] = ()) -> None:
        super().__init__()
        if not attributes:
            raise ValueError("a judge needs at least one attribute")
        unknown = sorted(set(multi_label) - set(attributes))
        if unknown:
            raise ValueError(f"multi-label heads {unknown} are not among the judge's attributes {sorted(attributes)}")
        self.attributes = {name: tuple(values) for name, values in attributes.items()}
        self.multi_label = frozenset(multi_label)
        self.channels = [int(c) for c in channels]
        self.image_size = int(image_size)
        layers: list[nn.Module] = []
        previous = 3
        for width in self.channels:
            layers += [nn.Conv2d(previous, width, 3, stride=2, padding=1), nn.GroupNorm(min(8, width), width), nn.SiLU()]
            previous = width
        self.features = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({name: nn.Linear(previous, len(values)) for name, values in self.attributes.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            images = nn.functional.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        pooled = self.features(images).mean(dim=(2, 3))
        return {name: head(pooled) for name, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{attribute: int64 [B]}`` indices of the most likely value for images [B, 3, S, S] in
        [-1, 1] (for a multi-label attribute: the value with the highest sigmoid)."""
        self.eval()
        return {name: logits.argmax(-1) for name, logits in self(images).items()}

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{attribute: float [B, len(values)]}`` for images [B, 3, S, S] in [-1, 1]: softmax
        probabilities (rows sum to 1) for a single-label attribute, per-value sigmoid
        probabilities for a multi-label one."""
        self.eval()
        return {name: logits.sigmoid() if name in self.multi_label else logits.softmax(-1)
                for name, logits in self(images).items()}

    def predict_values(self, images: Sequence[Image.Image] | torch.Tensor) -> list[dict[str, str]]:
        """Attribute values per image, for PIL images (any mode and size, read as
        ``pmg.data.images.image_tensor`` reads them) or a tensor [B, 3, S, S] in [-1, 1]."""
        if not isinstance(images, torch.Tensor):
            images = torch.stack([image_tensor(im, self.image_size) for im in images])
        found = self.predict(images)
        return [{name: self.attributes[name][int(found[name][b])] for name in self.attributes} for b in range(len(images))]


def save_judge(judge: AttributeJudge, folder: str | Path) -> Path:
    """Write ``judge`` to ``folder`` (``model.safetensors`` + ``config.json``) atomically."""
    folder = Path(folder)
    with atomic_directory(folder) as tmp:
        state = {k: v.detach().contiguous().cpu() for k, v in judge.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": JUDGE_FORMAT})
        config = {
            "format": JUDGE_FORMAT,
            "version": _JUDGE_VERSION,
            "image_size": judge.image_size,
            "channels": judge.channels,
            "attributes": {name: list(values) for name, values in judge.attributes.items()},
            "multi_label": sorted(judge.multi_label),
        }
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


def load_judge(folder: str | Path) -> AttributeJudge:
    """Read a judge written by :func:`save_judge`; ``JudgeError`` naming the problem otherwise."""
    folder = Path(folder)
    config_path, weights_path = folder / "config.json", folder / "model.safetensors"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise JudgeError(f"{path} is missing: {folder} is not a saved attribute judge")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise JudgeError(f"{config_path} is not valid JSON ({err.msg})") from err
    if config.get("format") != JUDGE_FORMAT:
        raise JudgeError(f"{config_path}: format is {config.get('format')!r}, expected {JUDGE_FORMAT!r}")
    version = config.get("version")
    if version not in _READABLE_VERSIONS:
        raise JudgeError(f"{config_path}: version {version!r} is not supported (expected one of {list(_READABLE_VERSIONS)})")
    multi_label = config.get("multi_label", []) if version == 1 else config.get("multi_label")
    if not isinstance(multi_label, list) or not all(isinstance(name, str) for name in multi_label):
        raise JudgeError(f"{config_path}: multi_label must be a list of attribute names, got {multi_label!r}")
    try:
        judge = AttributeJudge(config["attributes"], config["channels"], config["image_size"], multi_label)
    except (KeyError, TypeError, ValueError) as err:
        raise JudgeError(f"{config_path}: incomplete or malformed judge config ({err!r})") from err
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as err:
        raise JudgeError(f"{weights_path} is damaged: {err}") from err
    expected = judge.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise JudgeError(f"{weights_path} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise JudgeError(f"{weights_path}: {name} has shape {tuple(tensor.shape)}, config implies {tuple(expected[name].shape)}")
    judge.load_state_dict(state)
    judge.eval()
    return judge
