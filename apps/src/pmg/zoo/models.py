"""Building every zoo model in order: tokenizers → CLIP → judge → SDXL (text encoders from
CLIP) → causal LM → held-out evaluation. Each model is either trained (tiny), loaded
(``base_model``) or loaded then fine-tuned (``finetune: true``), and saved with
``save_pretrained`` into the cache folder when trained or fine-tuned."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from pmg.data.format import InteractionData
from pmg.data.split import Split
from pmg.zoo.clip_recipe import build_clip, train_clip
from pmg.zoo.config import ZooConfig
from pmg.zoo.corpus import CAPTION_TEMPLATES, ZooCorpus, build_corpus
from pmg.zoo.evaluation import clip_retrieval_top1, judge_accuracy, text_to_image_accuracy
from pmg.zoo.fitting import seed_init
from pmg.zoo.judge import AttributeJudge, load_judge, save_judge
from pmg.zoo.judge_recipe import train_judge
from pmg.zoo.lm_recipe import build_lm, train_lm
from pmg.zoo.loading import load_clip, load_lm, load_sdxl
from pmg.zoo.sdxl_recipe import build_sdxl, train_sdxl
from prefgen.testing.offline_tokenizers import load_tokenizer, train_causal_lm_tokenizer, train_clip_tokenizer

__all__ = ["train_models"]


def _entry(path: str, source: str) -> dict[str, Any]:
    # Trained / fine-tuned models live in the cache folder (relative path); base models stay where they are.
    return {"path": path, "source": source, "relative": source != "base"}


def _clip_tokenizer(config: ZooConfig, corpus: ZooCorpus) -> PreTrainedTokenizerBase:
    if config.tokenizers.clip_base is not None:
        return load_tokenizer(config.tokenizers.clip_base, local_files_only=config.local_files_only,
                              trust_remote_code=config.trust_remote_code)
    texts = [t for i in corpus.train_items for t in corpus.catalog_texts(int(i))]
    texts += [corpus.caption(int(i), t) for i in corpus.train_items for t in range(len(CAPTION_TEMPLATES))]
    # Attribute words from the schema, so that held-out captions tokenize as well as seen ones.
    texts += [" ".join(spec.values) for spec in corpus.data.attributes.values() if not spec.hidden]
    return train_clip_tokenizer(texts, vocab_size=config.tokenizers.clip_vocab_size,
                                model_max_length=config.clip.model.max_text_length)


def _lm_tokenizer(config: ZooConfig, corpus: ZooCorpus) -> PreTrainedTokenizerBase:
    if config.tokenizers.lm_base is not None:
        tokenizer = load_tokenizer(config.tokenizers.lm_base, local_files_only=config.local_files_only,
                                   trust_remote_code=config.trust_remote_code)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer
    return train_causal_lm_tokenizer(corpus.lm_texts, vocab_size=config.tokenizers.lm_vocab_size,
                                     model_max_length=config.lm.model.max_position_embeddings)


def train_models(config: ZooConfig, data: InteractionData, split: Split, out: Path, log_dir: Path,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build the zoo into ``out``; returns the manifest (models, metrics, held-out data)."""
    hub = {"local_files_only": config.local_files_only, "trust_remote_code": config.trust_remote_code}
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        timings[name] = round(time.perf_counter() - clock, 1)
        log(f"[zoo] {name} done in {timings[name]:.1f}s")
        clock = time.perf_counter()

    corpus = build_corpus(data, split, config.holdout, config.judge.model.image_size)
    lap("corpus")
    models: dict[str, Any] = {}
    clip_source = "trained" if config.clip.base_model is None else ("finetuned" if config.clip.finetune else "base")
    if config.clip.base_model is None:
        tokenizer = _clip_tokenizer(config, corpus)
        tokenizer.save_pretrained(out / "tokenizers" / "clip")
        seed_init(config.clip.trainer.seed)
        clip, processor = build_clip(config.clip, tokenizer)
    else:
        clip, processor = load_clip(config.clip.base_model, **hub)
    lap("clip tokenizer")
    if clip_source != "base":
        clip = train_clip(config.clip, corpus, clip, processor, log_dir / "clip")
        clip.save_pretrained(out / "clip")
        processor.save_pretrained(out / "clip")
        models["clip"] = _entry("clip", clip_source)
    else:
        models["clip"] = _entry(config.clip.base_model, "base")  # type: ignore[arg-type]
    lap("clip")

    judge: AttributeJudge | None = None
    if config.judge.base_model is not None:
        judge = load_judge(config.judge.base_model)
        models["judge"] = _entry(str(Path(config.judge.base_model).expanduser().resolve()), "base")
    elif all(name in data.attributes for name in config.judge.attributes):
        judge = train_judge(config.judge, corpus, log_dir / "judge")
        save_judge(judge, out / "judge")
        models["judge"] = _entry("judge", "trained")
    else:
        log(f"[zoo] no judge: dataset {data.name!r} lacks attributes {config.judge.attributes}")
        models["judge"] = None
    lap("judge")

    sdxl_source = "trained" if config.sdxl.base_model is None else ("finetuned" if config.sdxl.finetune else "base")
    if config.sdxl.base_model is None:
        seed_init(config.sdxl.unet.trainer.seed)
        pipe = build_sdxl(config.sdxl, processor.tokenizer, clip)
    else:
        pipe = load_sdxl(config.sdxl.base_model, **hub)
    if sdxl_source != "base":
        pipe = train_sdxl(config.sdxl, corpus, pipe, log_dir / "sdxl", train_vae=sdxl_source == "trained")
        pipe.save_pretrained(out / "sdxl")
        models["sdxl"] = _entry("sdxl", sdxl_source)
    else:
        models["sdxl"] = _entry(config.sdxl.base_model, "base")  # type: ignore[arg-type]
    lap("sdxl")

    lm_source = "trained" if config.lm.base_model is None else ("finetuned" if config.lm.finetune else "base")
    if config.lm.base_model is None:
        lm_tokenizer = _lm_tokenizer(config, corpus)
        lm_tokenizer.save_pretrained(out / "tokenizers" / "lm")
        seed_init(config.lm.trainer.seed)
        lm = build_lm(config.lm, lm_tokenizer)
    else:
        lm, lm_tokenizer = load_lm(config.lm.base_model, **hub)
    if lm_source != "base":
        lm = train_lm(config.lm, corpus, lm, lm_tokenizer, log_dir / "lm")
        lm.save_pretrained(out / "lm")
        lm_tokenizer.save_pretrained(out / "lm")
        models["lm"] = _entry("lm", lm_source)
    else:
        models["lm"] = _entry(config.lm.base_model, "base")  # type: ignore[arg-type]
    lap("lm")

    metrics: dict[str, Any] = {}
    top1, candidates = clip_retrieval_top1(clip, processor, corpus, corpus.heldout_items,
                                           candidates=config.eval.clip_candidates, seed=config.eval.seed)
    metrics.update(clip_top1=top1, clip_candidates=candidates)
    if judge is not None:
        for name, accuracy in judge_accuracy(judge, corpus, corpus.heldout_items).items():
            metrics[f"judge_{name}_acc"] = accuracy
        if config.eval.t2i_images_per_combo > 0 and corpus.heldout_combos:
            t2i = text_to_image_accuracy(pipe, judge, corpus.heldout_combos, images_per_combo=config.eval.t2i_images_per_combo,
                                         steps=config.eval.t2i_steps, guidance_scale=config.eval.guidance_scale,
                                         seed=config.eval.seed, sheet=out / "t2i_samples.png")
            metrics.update({f"t2i_{k}_acc" if k != "images" else "t2i_images": v for k, v in t2i.items()})
    lap("evaluation")
    return {
        "models": models,
        "metrics": metrics,
        "timings": timings,
        "local_files_only": config.local_files_only,
        "trust_remote_code": config.trust_remote_code,
        "heldout_combos": corpus.heldout_combos,
        "heldout_items": [data.items[int(i)].item_id for i in corpus.heldout_items],
        "train_items": len(corpus.train_items),
    }
