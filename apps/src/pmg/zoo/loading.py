"""Loaders of the zoo's model kinds by path: ``from_pretrained`` either way, whether the
folder is a tiny model the zoo trained or a real checkpoint (folder or hub id).
``Zoo.load_*`` (``pmg.zoo.manifest``) call these with the zoo's settings."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import StableDiffusionXLPipeline
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPModel,
    CLIPProcessor,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from pmg.zoo.errors import ZooError

__all__ = ["load_clip", "load_sdxl", "load_lm"]


def _kwargs(local_files_only: bool, trust_remote_code: bool) -> dict[str, bool]:
    return {"local_files_only": local_files_only, "trust_remote_code": trust_remote_code}


def load_clip(path: str | Path, *, local_files_only: bool = True, trust_remote_code: bool = False) -> tuple[CLIPModel, CLIPProcessor]:
    """A CLIP checkpoint and its processor from a folder or hub id (eval mode)."""
    try:
        model = CLIPModel.from_pretrained(str(path), **_kwargs(local_files_only, trust_remote_code))
        processor = CLIPProcessor.from_pretrained(str(path), **_kwargs(local_files_only, trust_remote_code))
    except (OSError, ValueError) as err:
        raise ZooError(f"cannot load CLIP from {str(path)!r}: {err}") from err
    return model.eval(), processor


def load_sdxl(path: str | Path, *, local_files_only: bool = True, trust_remote_code: bool = False,
              torch_dtype: torch.dtype | None = None) -> StableDiffusionXLPipeline:
    """An SDXL-architecture pipeline from a folder or hub id, in its saved dtype unless
    ``torch_dtype`` is given; progress bars off."""
    extra = {} if torch_dtype is None else {"torch_dtype": torch_dtype}
    try:
        pipe = StableDiffusionXLPipeline.from_pretrained(str(path), **_kwargs(local_files_only, trust_remote_code), **extra)
    except (OSError, ValueError) as err:
        raise ZooError(f"cannot load an SDXL pipeline from {str(path)!r}: {err}") from err
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_lm(path: str | Path, *, local_files_only: bool = True,
            trust_remote_code: bool = False) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer from a folder or hub id; padding falls back to end of text."""
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), **_kwargs(local_files_only, trust_remote_code))
        tokenizer = AutoTokenizer.from_pretrained(str(path), **_kwargs(local_files_only, trust_remote_code))
    except (OSError, ValueError) as err:
        raise ZooError(f"cannot load a causal LM from {str(path)!r}: {err}") from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer
