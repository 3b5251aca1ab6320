"""The causal LM: build (or load), a copy warm-up, then training on catalog titles, descriptions and reviews."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pmg.zoo.config import CausalLMTrainingConfig
from pmg.zoo.corpus import ZooCorpus, copy_warmup_documents, keyword_prompted_texts
from pmg.zoo.fitting import FitCheckpoints, fit_steps
from pmg.zoo.lightning_modules import CausalLMModule
from prefgen.testing.tiny import build_tiny_causal_lm

__all__ = ["build_lm", "lm_token_batch", "train_lm"]


def build_lm(config: CausalLMTrainingConfig, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """A tiny Qwen2-architecture LM over ``tokenizer``."""
    tokenizer.model_max_length = config.model.max_position_embeddings
    return build_tiny_causal_lm(config.model, tokenizer)


class _Texts(Dataset):
    def __init__(self, texts: list[str]) -> None:
        self.texts = texts

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> str:
        return self.texts[index]


def lm_token_batch(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """``texts`` as the LM trains on them: end of text appended, truncated to ``max_length``
    tokens, padded to the longest. ``input_ids`` / ``attention_mask`` / ``labels`` int64 [B, T];
    ``labels`` are the ids with padding positions -100 (out of the loss)."""
    eos = tokenizer.eos_token or ""
    tokens = tokenizer([t + eos for t in texts], padding="longest", truncation=True, max_length=max_length,
                       return_tensors="pt")
    labels = tokens["input_ids"].masked_fill(tokens["attention_mask"] == 0, -100)
    return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"], "labels": labels}


class _LMCollate:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return lm_token_batch(self.tokenizer, texts, self.max_length)


def train_lm(config: CausalLMTrainingConfig, corpus: ZooCorpus, model: PreTrainedModel,
             tokenizer: PreTrainedTokenizerBase, log_dir: Path, checkpoints: FitCheckpoints | None = None) -> PreTrainedModel:
    """Next-token training of ``model``: ``config.copy_warmup_steps`` batches of copy documents,
    then ``config.trainer.max_steps`` batches of the corpus texts (``keyword_fraction`` of them
    prompted); each fit resumable from its part of ``checkpoints`` (``fit_steps``)."""
    if not corpus.lm_texts:
        raise ValueError("causal-LM training needs texts (titles, descriptions or reviews)")
    model.train()
    collate = _LMCollate(tokenizer, config.max_length)
    seed = config.trainer.seed
    warmup = copy_warmup_documents(corpus, config.copy_warmup_steps * config.batch_size, seed)
    if warmup:
        fit_steps(CausalLMModule(model, config.optimizer), _Texts(warmup),
                  trainer_config=dataclasses.replace(config.trainer, max_steps=config.copy_warmup_steps),
                  batch_size=config.batch_size, log_dir=log_dir / "copy_warmup", collate=collate,
                  checkpoints=checkpoints.part("copy_warmup") if checkpoints else None)
    texts = keyword_prompted_texts(corpus, config.keyword_fraction, config.keyword_contexts, seed)
    fit_steps(CausalLMModule(model, config.optimizer), _Texts(texts), trainer_config=config.trainer,
              batch_size=min(config.batch_size, len(texts)), log_dir=log_dir, collate=collate,
              checkpoints=checkpoints.part("texts") if checkpoints else None)
    return model.eval()
