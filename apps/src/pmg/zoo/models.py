"""Building every zoo model in order: tokenizers → CLIP → judge → SDXL (text encoders from
CLIP) → causal LM → held-out evaluation. Each model is either trained (tiny), loaded
(``base_model``) or loaded then fine-tuned (``finetune: true``), and saved with
``save_pretrained`` into the cache folder when trained or fine-tuned.

A build killed halfway goes on from where it stopped (``ZooProgress``): each model saved is
recorded as finished, and the next build of the same entry loads it rather than training it
again; a fit killed midway resumes from its last checkpoint (``pmg.zoo.fitting``)."""

from __future__ import annotations

import itertools
import json
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from diffusers import StableDiffusionXLPipeline
from transformers import CLIPModel, CLIPProcessor, PreTrainedModel, PreTrainedTokenizerBase

from pmg.atomic import atomic_file
from pmg.data.format import InteractionData
from pmg.data.split import Split
from pmg.integrity import file_record, find_damage
from pmg.runs import RunWarning
from pmg.zoo.clip_recipe import build_clip, train_clip
from pmg.zoo.config import ZooConfig
from pmg.zoo.corpus import CAPTION_TEMPLATES, ZooCorpus, build_corpus
from pmg.zoo.evaluation import (
    clip_retrieval_top1,
    heldout_generation,
    judge_accuracy,
    judge_label_set_scores,
    lm_heldout_perplexity,
    text_to_image_accuracy,
    vae_round_trip_accuracy,
    write_heldout_samples,
)
from pmg.zoo.fitting import FitCheckpoints, seed_init
from pmg.zoo.judge import AttributeJudge, load_judge, save_judge
from pmg.zoo.judge_recipe import item_attribute_names, missing_judge_attributes, train_judge
from pmg.zoo.lm_recipe import build_lm, train_lm
from pmg.zoo.loading import load_clip, load_lm, load_sdxl
from pmg.zoo.manifest import HELDOUT_SAMPLES, ZooMetrics
from pmg.zoo.sdxl_recipe import build_sdxl, train_sdxl
from prefgen.testing.offline_tokenizers import load_tokenizer, train_causal_lm_tokenizer, train_clip_tokenizer

__all__ = ["train_models", "evaluate_models", "ZooProgress", "PROGRESS_FOLDER"]

# In the folder being built: what a killed build goes on from. Hidden (left out of zoo.json's
# file record) and deleted once the build completes.
PROGRESS_FOLDER = ".progress"


class ZooProgress:
    """The finished models of a zoo build in ``out`` (the folder being built, for cache key
    ``key``), for a build killed halfway to go on from: ``.progress/<model>.json`` records the
    size and SHA-256 of each file a finished model wrote, and ``.progress/checkpoints/<model>/``
    holds its fits' checkpoints (``pmg.zoo.fitting.FitCheckpoints``)."""

    def __init__(self, out: Path, key: str, log: Callable[[str], None]) -> None:
        self.out, self.key, self.log = out, key, log
        self.folder = out / PROGRESS_FOLDER

    def finished(self, model: str, folders: list[str]) -> bool:
        """Whether ``model`` was finished by an earlier attempt and its files are intact. If not,
        its ``folders`` are emptied for it to be trained again (a damaged one with a warning)."""
        record_path = self.folder / f"{model}.json"
        if record_path.is_file():
            try:
                record = json.loads(record_path.read_text())
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                damage: str | None = f"{record_path} is damaged ({err})"
            else:
                damage = find_damage(self.out, record, f"the interrupted zoo build's {model}")
                if damage is None:
                    self.log(f"[zoo] {model}: kept from the interrupted build ({self.out})")
                    return True
            warnings.warn(f"{damage}; the {model} is trained again", RunWarning, stacklevel=2)
            record_path.unlink()
        for folder in folders:
            shutil.rmtree(self.out / folder, ignore_errors=True)
        return False

    def finish(self, model: str, folders: list[str]) -> None:
        """Record ``model`` finished: the files under its ``folders``, written before this call."""
        record = {f"{folder}/{name}": entry for folder in folders for name, entry in file_record(self.out / folder).items()}
        with atomic_file(self.folder / f"{model}.json") as tmp:
            tmp.write_text(json.dumps(record, indent=2))
        shutil.rmtree(self.folder / "checkpoints" / model, ignore_errors=True)

    def checkpoints(self, model: str) -> FitCheckpoints:
        return FitCheckpoints(self.folder / "checkpoints" / model, self.key)

    def clear(self) -> None:
        """Forget the finished models and checkpoints: before a build that starts over
        (``retrain``), and once the build completed (nothing is left to resume)."""
        shutil.rmtree(self.folder, ignore_errors=True)


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
                 progress: ZooProgress, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build the zoo into ``out``; returns the manifest (models, metrics, held-out data). Models
    an earlier attempt finished in ``out`` are loaded, not trained (``progress``), and each one
    trained here is recorded finished once saved."""
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
    clip_folders = ["clip"] + (["tokenizers/clip"] if config.clip.base_model is None else [])
    clip_finished = clip_source != "base" and progress.finished("clip", clip_folders)
    # The processor is made as for training even when the CLIP is finished: one loaded from its
    # folder would carry its loading options into the SDXL pipeline's saved tokenizers.
    if config.clip.base_model is None:
        tokenizer = _clip_tokenizer(config, corpus)
        if not clip_finished:
            tokenizer.save_pretrained(out / "tokenizers" / "clip")
        seed_init(config.clip.trainer.seed)
        clip, processor = build_clip(config.clip, tokenizer)
    else:
        clip, processor = load_clip(config.clip.base_model, **hub)
    lap("clip tokenizer")
    if clip_finished:
        clip = load_clip(out / "clip")[0]
        # Saved (and thrown away) for what saving does to the processor, as the uninterrupted build
        # saved it: it marks the tokenizer with its processor class, which the SDXL tokenizers carry.
        with tempfile.TemporaryDirectory() as scratch:
            processor.save_pretrained(scratch)
    elif clip_source != "base":
        clip = train_clip(config.clip, corpus, clip, processor, log_dir / "clip", progress.checkpoints("clip"))
        clip.save_pretrained(out / "clip")
        processor.save_pretrained(out / "clip")
        progress.finish("clip", clip_folders)
    models["clip"] = _entry("clip", clip_source) if clip_source != "base" else _entry(config.clip.base_model, "base")  # type: ignore[arg-type]
    lap("clip")

    judge: AttributeJudge | None = None
    if config.judge.base_model is not None:
        judge = load_judge(config.judge.base_model)
        models["judge"] = _entry(str(Path(config.judge.base_model).expanduser().resolve()), "base")
    elif not missing_judge_attributes(data, config.judge.attributes) and data.has_image.any():
        if progress.finished("judge", ["judge"]):
            judge = load_judge(out / "judge")
        else:
            judge = train_judge(config.judge, corpus, log_dir / "judge", progress.checkpoints("judge"))
            save_judge(judge, out / "judge")
            progress.finish("judge", ["judge"])
        models["judge"] = _entry("judge", "trained")
    else:
        log(f"[zoo] {_no_judge(config, data)}")
        models["judge"] = None
    lap("judge")

    sdxl_source = "trained" if config.sdxl.base_model is None else ("finetuned" if config.sdxl.finetune else "base")
    if sdxl_source != "base" and progress.finished("sdxl", ["sdxl"]):
        pipe = load_sdxl(out / "sdxl")
    else:
        if config.sdxl.base_model is None:
            seed_init(config.sdxl.unet.trainer.seed)
            pipe = build_sdxl(config.sdxl, processor.tokenizer, clip)
        else:
            pipe = load_sdxl(config.sdxl.base_model, **hub)
        if sdxl_source != "base":
            pipe = train_sdxl(config.sdxl, corpus, pipe, log_dir / "sdxl", train_vae=sdxl_source == "trained",
                              checkpoints=progress.checkpoints("sdxl"))
            pipe.save_pretrained(out / "sdxl")
            progress.finish("sdxl", ["sdxl"])
    models["sdxl"] = _entry("sdxl", sdxl_source) if sdxl_source != "base" else _entry(config.sdxl.base_model, "base")  # type: ignore[arg-type]
    lap("sdxl")

    lm_source = "trained" if config.lm.base_model is None else ("finetuned" if config.lm.finetune else "base")
    lm_folders = ["lm"] + (["tokenizers/lm"] if config.lm.base_model is None else [])
    if lm_source != "base" and progress.finished("lm", lm_folders):
        lm, lm_tokenizer = load_lm(out / "lm")
    else:
        if config.lm.base_model is None:
            lm_tokenizer = _lm_tokenizer(config, corpus)
            lm_tokenizer.save_pretrained(out / "tokenizers" / "lm")
            seed_init(config.lm.trainer.seed)
            lm = build_lm(config.lm, lm_tokenizer)
        else:
            lm, lm_tokenizer = load_lm(config.lm.base_model, **hub)
        if lm_source != "base":
            lm = train_lm(config.lm, corpus, lm, lm_tokenizer, log_dir / "lm", progress.checkpoints("lm"))
            lm.save_pretrained(out / "lm")
            lm_tokenizer.save_pretrained(out / "lm")
            progress.finish("lm", lm_folders)
    models["lm"] = _entry("lm", lm_source) if lm_source != "base" else _entry(config.lm.base_model, "base")  # type: ignore[arg-type]
    lap("lm")

    metrics = evaluate_models(config, corpus, clip, processor, judge, pipe, lm, lm_tokenizer, out, lap)
    return {
        "models": models,
        "metrics": metrics.values,
        "metrics_missing": metrics.missing,
        "timings": timings,
        "local_files_only": config.local_files_only,
        "trust_remote_code": config.trust_remote_code,
        "heldout_combos": corpus.heldout_combos,
        "heldout_items": [data.items[int(i)].item_id for i in corpus.heldout_items],
        "train_items": len(corpus.train_items),
    }


def _no_judge(config: ZooConfig, data: InteractionData) -> str:
    """Why the zoo has no judge: no item images, or the configured attributes the dataset lacks and what it has."""
    if not data.has_image.any():
        return f"no judge: no item of dataset {data.name!r} has an image"
    return (f"no judge: dataset {data.name!r} lacks attributes {missing_judge_attributes(data, config.judge.attributes)} "
            f"of zoo.judge.attributes {config.judge.attributes} (its schema has {sorted(data.attributes)}, its items "
            f"{item_attribute_names(data)})")


def evaluate_models(config: ZooConfig, corpus: ZooCorpus, clip: CLIPModel, processor: CLIPProcessor, judge: AttributeJudge | None,
                    pipe: StableDiffusionXLPipeline, lm: PreTrainedModel, lm_tokenizer: PreTrainedTokenizerBase, out: Path,
                    lap: Callable[[str], None] = lambda _: None) -> ZooMetrics:
    """Every held-out quality figure of the zoo (``pmg.zoo.evaluation``), each a finite number or
    None with the reason; writes ``t2i_samples.png`` (with a judge) and ``HELDOUT_SAMPLES`` into
    ``out``. ``lap(part)`` is called as each part ends ("evaluation": retrieval and the judge's
    figures, "heldout generation", "lm perplexity"), for the build's timings."""
    data, heldout, settings = corpus.data, corpus.heldout_items, config.eval
    generation = {"steps": settings.t2i_steps, "guidance_scale": settings.guidance_scale, "seed": settings.seed}
    metrics = ZooMetrics()
    top1, candidates = clip_retrieval_top1(clip, processor, corpus, heldout, candidates=settings.clip_candidates, seed=settings.seed)
    metrics.add("clip_top1", top1, f"{candidates} held-out item(s) with an image and a caption of its own; retrieval needs 2")
    metrics.add("clip_candidates", candidates, "")
    metrics.add("clip_chance", 1 / candidates if candidates >= 2 else None, "no retrieval (see clip_top1)")
    if judge is None:
        reason = _no_judge(config, data)
        for name in config.judge.attributes:
            metrics.add(f"judge_{name}_acc", None, reason)
            metrics.add(f"vae_{name}_acc", None, reason)
        metrics.add("t2i_images", None, reason)
    else:
        with_image = len(corpus.image_items(heldout))
        for name, accuracy in judge_accuracy(judge, corpus, heldout).items():
            metrics.add(f"judge_{name}_acc", accuracy, f"none of {with_image} held-out item(s) with an image has a known {name}")
        for name, scores in judge_label_set_scores(judge, corpus, heldout).items():
            none_known = f"none of {with_image} held-out item(s) with an image has a {name} value the judge knows"
            metrics.add(f"judge_{name}_top1_hit", scores.top1_hit, none_known)
            metrics.add(f"judge_{name}_top1_chance", scores.top1_chance, none_known)
            metrics.add(f"judge_{name}_micro_f1", scores.micro_f1, none_known if not scores.items else "no value read or known")
            metrics.add(f"judge_{name}_items", scores.items, "")
        for name, accuracy in vae_round_trip_accuracy(pipe, judge, corpus, heldout).items():
            metrics.add(f"vae_{name}_acc", accuracy, f"none of {with_image} held-out item(s) with an image has a known {name}")
        if settings.t2i_images_per_combo > 0 and corpus.heldout_combos:
            t2i = text_to_image_accuracy(pipe, judge, corpus.heldout_combos, images_per_combo=settings.t2i_images_per_combo,
                                         sheet=out / "t2i_samples.png", **generation)
            for key, value in t2i.items():
                metrics.add(f"t2i_{key}_acc" if key != "images" else "t2i_images", value, "no image judged")
            hidden = [n for n in judge.attributes
                      if n in data.attributes and data.attributes[n].hidden and data.attributes[n].modality == "visual"]
            if config.sdxl.unet.hidden_visual_words and hidden:
                # Whether the UNet draws a hidden attribute when a prompt names it ("a light red ..."):
                # what a token row that carries the user's shade can ask for at best.
                named = [{**combo, **dict(zip(hidden, values, strict=True))} for combo in corpus.heldout_combos
                         for values in itertools.product(*(data.attributes[n].values for n in hidden))]
                t2i = text_to_image_accuracy(pipe, judge, named, images_per_combo=max(1, settings.t2i_images_per_combo // 2),
                                             colour_words=tuple(hidden), **generation)
                for n in hidden:
                    if n in t2i:
                        metrics.add(f"t2i_named_{n}_acc", t2i[n], "no image judged")
        else:
            metrics.add("t2i_images", None, "off (zoo.eval.t2i_images_per_combo: 0)" if not settings.t2i_images_per_combo
                        else "no held-out attribute combinations (zoo.holdout)")
    lap("evaluation")

    names = ("t2i_clip_score", "t2i_clip_score_shuffled", "t2i_clip_i", "t2i_clip_i_shuffled")
    drawn = heldout_generation(pipe, clip, processor, corpus, heldout, count=settings.t2i_clip_items,
                               **generation) if settings.t2i_clip_items else None
    if drawn is None:
        reason = ("off (zoo.eval.t2i_clip_items: 0)" if not settings.t2i_clip_items
                  else "fewer than 2 held-out items with an image and a caption of its own")
        for name in names:
            metrics.add(name, None, reason)
    else:
        scores = (drawn.prompt_cosine, drawn.prompt_cosine_shuffled, drawn.real_cosine, drawn.real_cosine_shuffled)
        for name, cosines in zip(names, scores, strict=True):
            metrics.add(name, float(cosines.mean()), "")
        write_heldout_samples(drawn, pipe, corpus, out / HELDOUT_SAMPLES)
    metrics.add("t2i_clip_items", 0 if drawn is None else len(drawn.items), "")
    lap("heldout generation")

    texts = corpus.heldout_lm_texts
    if settings.lm_heldout_texts < len(texts):
        order = np.random.default_rng(settings.seed).permutation(len(texts))[:settings.lm_heldout_texts]
        texts = [texts[int(i)] for i in sorted(order)]
    perplexity = lm_heldout_perplexity(lm, lm_tokenizer, corpus.lm_texts, texts, max_length=config.lm.max_length) if texts else None
    reason = "off (zoo.eval.lm_heldout_texts: 0)" if not settings.lm_heldout_texts else "no held-out item has a title, description or review"
    metrics.add("lm_heldout_perplexity", None if perplexity is None else perplexity.lm, reason)
    metrics.add("lm_unigram_perplexity", None if perplexity is None else perplexity.unigram, reason)
    metrics.add("lm_heldout_tokens", 0 if perplexity is None else perplexity.tokens, "")
    metrics.add("lm_heldout_texts", len(texts) if perplexity is not None else 0, "")
    lap("lm perplexity")
    return metrics
