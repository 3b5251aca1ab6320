"""CLIP: build (or load) and train contrastively on catalog image–text pairs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from transformers import CLIPModel, CLIPProcessor, PreTrainedTokenizerBase

from pmg.data.images import ImageFit, fit_square, load_image, rgb_image
from pmg.zoo.config import ClipTrainingConfig
from pmg.zoo.corpus import CAPTION_TEMPLATES, ZooCorpus
from pmg.zoo.fitting import FitCheckpoints, fit_steps
from pmg.zoo.lightning_modules import ClipContrastiveModule
from prefgen.testing.tiny import build_tiny_clip

try:  # transformers 5 without torchvision: the PIL backend, named explicitly to avoid a warning
    from transformers import CLIPImageProcessorPil as _ImageProcessor
except ImportError:  # pragma: no cover - transformers 4.x
    from transformers import CLIPImageProcessor as _ImageProcessor

__all__ = ["tiny_clip_processor", "clip_pixel_values", "build_clip", "train_clip"]


def tiny_clip_processor(tokenizer: PreTrainedTokenizerBase, image_size: int) -> CLIPProcessor:
    """A ``CLIPProcessor`` mapping RGB images to [-1, 1] at ``image_size`` (the catalog's own
    normalisation; real CLIP checkpoints bring their processor with OpenAI's mean/std)."""
    image_processor = _ImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def clip_pixel_values(processor: CLIPProcessor, images: Sequence[Path | str | Image.Image], fit: ImageFit,
                      batch: int = 256) -> torch.Tensor:
    """[N, 3, S, S] processor inputs for ``images`` (files, or PIL images already in memory such as
    generated ones), each made the processor's S x S square by ``fit`` first
    (``pmg.data.images``), so the processor's own resize and centre crop leave it as it is."""
    size = int(processor.image_processor.crop_size["height"])
    chunks = []
    for start in range(0, len(images), batch):
        squares = [fit_square(rgb_image(image), size, fit) if isinstance(image, Image.Image) else load_image(image, size, fit)
                   for image in images[start:start + batch]]
        chunks.append(processor.image_processor(images=squares, return_tensors="pt")["pixel_values"])
    return torch.cat(chunks) if chunks else torch.zeros(0)


class _ClipPairs(Dataset):
    """Index → training item; texts are chosen at collate time (a fresh choice every draw)."""

    def __init__(self, items: np.ndarray) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> int:
        return int(index)


class _ClipCollate:
    def __init__(self, corpus: ZooCorpus, items: np.ndarray, pixels: torch.Tensor,
                 tokenizer: PreTrainedTokenizerBase, caption_probability: float, max_length: int) -> None:
        self.corpus, self.items, self.pixels = corpus, items, pixels
        self.tokenizer, self.p, self.max_length = tokenizer, caption_probability, max_length

    def _text(self, item: int) -> str:
        own = self.corpus.catalog_texts(item)
        if not own or float(torch.rand(())) < self.p:
            return self.corpus.caption(item, int(torch.randint(0, len(CAPTION_TEMPLATES), ())))
        return own[int(torch.randint(0, len(own), ()))]

    def __call__(self, rows: list[int]) -> dict[str, torch.Tensor]:
        items = [int(self.items[r]) for r in rows]
        tokens = self.tokenizer([self._text(i) for i in items], padding="longest", truncation=True,
                                max_length=self.max_length, return_tensors="pt")
        return {
            "pixel_values": self.pixels[rows],
            "input_ids": tokens["input_ids"],
            "attention_mask": tokens["attention_mask"],
            "group": torch.from_numpy(self.corpus.combo[items]),
        }


def train_clip(
    config: ClipTrainingConfig,
    corpus: ZooCorpus,
    model: CLIPModel,
    processor: CLIPProcessor,
    log_dir: Path,
    checkpoints: FitCheckpoints | None = None,
) -> CLIPModel:
    """Contrastive training of ``model`` on the corpus's training items that have images
    (resumable from ``checkpoints``: ``fit_steps``)."""
    items = corpus.image_items(corpus.train_items)
    if len(items) < 2:
        raise ValueError("CLIP training needs at least two training items with images")
    pixels = clip_pixel_values(processor, [corpus.data.items[int(i)].image for i in items], corpus.data.image_read_fit)
    max_length = min(int(processor.tokenizer.model_max_length), int(model.config.text_config.max_position_embeddings))
    collate = _ClipCollate(corpus, items, pixels, processor.tokenizer, config.caption_probability, max_length)
    model.train()
    fit_steps(ClipContrastiveModule(model, config.optimizer), _ClipPairs(items), trainer_config=config.trainer,
              batch_size=min(config.batch_size, len(items)), log_dir=log_dir, collate=collate, checkpoints=checkpoints)
    return model.eval()


def build_clip(config: ClipTrainingConfig, tokenizer: PreTrainedTokenizerBase) -> tuple[CLIPModel, CLIPProcessor]:
    """A tiny CLIP over ``tokenizer`` and its processor."""
    tokenizer.model_max_length = config.model.max_text_length
    return build_tiny_clip(config.model, tokenizer), tiny_clip_processor(tokenizer, config.model.image_size)
