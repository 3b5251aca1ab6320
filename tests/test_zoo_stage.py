"""The zoo stage end to end at toy sizes: builds, caches by content hash, reloads by path,
takes base models by config, and rejects bad config and damaged artifacts clearly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from pmg.config import ConfigError, load_config
from pmg.data.dataset_stage import DatasetConfig, prepare_dataset
from pmg.runs import RunDirectory
from pmg.zoo import ZooConfig, ZooError, load_zoo, read_zoo_folder, run_zoo_stage
from pmg.zoo.judge import AttributeJudge, JudgeError, load_judge, save_judge
from pmg.zoo.stage import dataset_content_hash, zoo_cache_key

REPO = Path(__file__).resolve().parents[1]

# Toy sizes: each model a few thousand parameters, two optimisation steps each.
TOY = [
    "holdout.combos=4", "holdout.item_fraction=0.2", "tokenizers.clip_vocab_size=600", "tokenizers.lm_vocab_size=320",
    "clip.model.text_hidden_size=16", "clip.model.text_layers=2", "clip.model.text_heads=2",
    "clip.model.text_intermediate_size=32", "clip.model.max_text_length=24", "clip.model.vision_hidden_size=16",
    "clip.model.vision_layers=1", "clip.model.vision_heads=2", "clip.model.vision_intermediate_size=32",
    "clip.model.projection_dim=8", "clip.model.image_size=32", "clip.batch_size=8",
    "judge.model.channels=[8,8]", "judge.model.image_size=32", "judge.batch_size=8",
    "sdxl.model.image_size=32", "sdxl.model.vae_block_out_channels=[8,8]", "sdxl.model.vae_norm_num_groups=4",
    "sdxl.model.unet_block_out_channels=[8,16]", "sdxl.model.unet_norm_num_groups=4", "sdxl.model.unet_attention_heads=2",
    "sdxl.vae.crop_size=16", "sdxl.vae.batch_size=4", "sdxl.unet.batch_size=8",
    "lm.model.hidden_size=16", "lm.model.layers=1", "lm.model.heads=2", "lm.model.kv_heads=1",
    "lm.model.intermediate_size=32", "lm.model.max_position_embeddings=64", "lm.max_length=32", "lm.batch_size=4",
    "lm.copy_warmup_steps=2", "lm.keyword_fraction=0.5",
    "eval.t2i_images_per_combo=1", "eval.t2i_steps=2", "eval.clip_candidates=10",
    *[f"{m}.trainer.{k}" for m in ("clip", "judge", "sdxl.vae", "sdxl.unet", "lm")
      for k in ("max_steps=2", "enable_progress_bar=false")],
]


def _data_stage(root: Path) -> tuple[RunDirectory, str]:
    run = RunDirectory(root)
    config = load_config(DatasetConfig, None, ["catalog.num_users=20", "catalog.num_items=60",
                                               "catalog.interactions_per_user=8", "catalog.image_size=32"])
    _, _, data_fp = prepare_dataset(config, run)
    return run, data_fp


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunDirectory, str, Path]:
    root = tmp_path_factory.mktemp("zoo")
    run, data_fp = _data_stage(root / "run")
    config = load_config(ZooConfig, None, [*TOY, f"cache_dir={root / 'cache'}"])
    result = run_zoo_stage(config, run, data_fp, False, log=lambda _: None)
    assert not result.reused and "zoo built" in result.summary
    return run, data_fp, root / "cache"


def test_stage_writes_every_model_in_its_real_format(built) -> None:
    run, _, cache = built
    zoo = load_zoo(run)
    assert zoo.root.parent == cache.resolve()
    assert {m.source for m in (zoo.clip, zoo.sdxl, zoo.lm, zoo.judge)} == {"trained"}
    sdxl = Path(zoo.sdxl.path)
    for part in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"):
        assert (sdxl / part).is_dir(), part
    assert (sdxl / "model_index.json").is_file()
    assert (Path(zoo.clip.path) / "model.safetensors").is_file()
    assert len(zoo.heldout_combos) == 4 and zoo.heldout_items
    for key in ("clip_top1", "judge_colour_acc", "vae_colour_acc", "t2i_colour_acc"):
        assert 0.0 <= zoo.metrics[key] <= 1.0
    # On the catalog every figure is measured: the held-out items' CLIP scores and the LM's perplexity too.
    assert zoo.metrics_missing == {} and None not in zoo.metrics.values()
    assert zoo.metrics["t2i_clip_items"] == 8 and zoo.metrics["lm_heldout_tokens"] > 0
    assert "heldout_samples.png" in json.loads((zoo.root / "zoo.json").read_text())["files"]
    with Image.open(zoo.root / "t2i_samples.png") as sheet:  # one row per held-out combination
        assert sheet.height >= 4 * 32 and sheet.width >= 32
    assert (run.root / "zoo" / "sdxl" / "unet" / "tb").is_dir()  # TensorBoard logs stay with the run
    assert not (run.root / "zoo" / "clip" / "checkpoints").exists()  # no pickled checkpoints kept


def test_loaded_models_work(built) -> None:
    run, _, _ = built
    zoo = load_zoo(run)
    pipe = zoo.load_sdxl()
    images = pipe(["a red striped dress"], num_inference_steps=2, output_type="pt",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 3, 32, 32)
    lm, tokenizer = zoo.load_lm()
    out = lm.generate(**tokenizer(["A red"], return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert out.shape[1] == len(tokenizer("A red")["input_ids"]) + 3
    clip, processor = zoo.load_clip()
    pixels = processor(images=[Image.new("RGB", (32, 32), "red")], return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 32, 32)
    torch.testing.assert_close(pixels[0, 0], torch.ones(32, 32))  # red 255 maps to 1 in [-1, 1]
    assert clip.get_image_features(pixel_values=pixels) is not None
    judge = zoo.load_judge()
    assert set(judge.predict_values(images * 2 - 1)[0]) == {"category", "colour", "pattern"}


def test_same_inputs_reuse_the_cache_from_another_run_directory(built, tmp_path: Path) -> None:
    run, data_fp, cache = built
    assert run_zoo_stage(load_config(ZooConfig, None, [*TOY, f"cache_dir={cache}"]), run, data_fp, False).reused
    other, other_fp = _data_stage(tmp_path / "other")
    result = run_zoo_stage(load_config(ZooConfig, None, [*TOY, f"cache_dir={cache}"]), other, other_fp, True)
    assert result.reused and "cached" in result.summary
    assert load_zoo(other).root == load_zoo(run).root
    # Any change of config or data content changes the key, so it cannot hit this entry.
    config = load_config(ZooConfig, None, [*TOY, f"cache_dir={cache}"])
    assert zoo_cache_key(config, "data") != zoo_cache_key(load_config(ZooConfig, None, [*TOY, "lm.trainer.max_steps=1"]), "data")
    assert zoo_cache_key(config, "data") != zoo_cache_key(config, "other data")
    # ... while where the cache lives and how many threads train it do not.
    assert zoo_cache_key(config, "data") == zoo_cache_key(load_config(ZooConfig, None, [*TOY, "num_threads=1"]), "data")
    quiet = load_config(ZooConfig, None, [*TOY, "sdxl.unet.trainer.enable_progress_bar=true", "lm.trainer.log_every_n_steps=3"])
    assert zoo_cache_key(config, "data") == zoo_cache_key(quiet, "data")


def test_the_same_inputs_build_the_same_models(built, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    run, data_fp, _ = built
    other, other_fp = _data_stage(tmp_path / "again")
    run_zoo_stage(load_config(ZooConfig, None, [*TOY, f"cache_dir={tmp_path / 'cache'}"]), other, other_fp, False,
                  log=lambda _: None)
    first, second = load_zoo(run).root, load_zoo(other).root
    assert first != second
    for weights in ("clip/model.safetensors", "judge/model.safetensors", "lm/model.safetensors",
                    "sdxl/unet/diffusion_pytorch_model.safetensors", "sdxl/vae/diffusion_pytorch_model.safetensors"):
        a, b = load_file(str(first / weights)), load_file(str(second / weights))
        assert a.keys() == b.keys(), weights
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=f"{weights}: {name}")


def test_judge_augmentation_is_the_identity_when_off_and_perturbs_when_on() -> None:
    from pmg.training import OptimizerConfig
    from pmg.zoo.config import JudgeAugmentConfig
    from pmg.zoo.lightning_modules import JudgeModule

    judge = AttributeJudge({"colour": ["red", "blue"]}, [4], 16)
    images = torch.rand(6, 3, 16, 16) * 1.8 - 0.9
    off = JudgeAugmentConfig(noise_std=0, max_shift=0, scale_jitter=0, contrast_jitter=0, gamma_jitter=1, tint_std=0,
                             max_blur=1, whiten=0)
    off.validate()
    torch.testing.assert_close(JudgeModule(judge, OptimizerConfig(), augment=off)._augment(images), images,
                               rtol=0, atol=1e-5)
    torch.manual_seed(0)
    on = JudgeModule(judge, OptimizerConfig(), augment=JudgeAugmentConfig())._augment(images)
    assert on.shape == images.shape
    assert (on - images).abs().mean() > 0.02
    with pytest.raises(ValueError, match="max_blur"):
        JudgeAugmentConfig(max_blur=4).validate()


def test_data_hash_follows_file_content(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "items.jsonl").write_text("{}")
    (tmp_path / "images" / "a.png").write_bytes(b"one")
    first = dataset_content_hash(tmp_path)
    assert dataset_content_hash(tmp_path) == first
    (tmp_path / "images" / "a.png").write_bytes(b"two")
    assert dataset_content_hash(tmp_path) != first


def test_base_models_are_loaded_by_path_not_trained(built, tmp_path: Path) -> None:
    run, _, cache = built
    trained = load_zoo(run)
    other, other_fp = _data_stage(tmp_path / "base")
    overrides = [*TOY, f"cache_dir={cache}", f"clip.base_model={trained.clip.path}", f"sdxl.base_model={trained.sdxl.path}",
                 f"lm.base_model={trained.lm.path}", f"judge.base_model={trained.judge.path}", "eval.t2i_images_per_combo=0"]
    run_zoo_stage(load_config(ZooConfig, None, overrides), other, other_fp, False, log=lambda _: None)
    zoo = load_zoo(other)
    assert (zoo.clip.source, zoo.sdxl.source, zoo.lm.source, zoo.judge.source) == ("base",) * 4
    assert zoo.sdxl.path == trained.sdxl.path and not (zoo.root / "sdxl").exists()
    assert zoo.metrics["clip_top1"] == pytest.approx(trained.metrics["clip_top1"])


def test_default_yaml_is_the_full_default_config() -> None:
    path = REPO / "configs" / "zoo.yaml"
    assert load_config(ZooConfig, path) == ZooConfig()
    import yaml

    text = yaml.safe_load(path.read_text())
    assert set(text) == set(ZooConfig().__dataclass_fields__)


def test_bad_config_names_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="clip.modle"):
        load_config(ZooConfig, None, ["clip.modle.text_layers=2"])
    with pytest.raises(ConfigError, match=r"zoo\.sdxl\.base_model '.*missing' is not an existing folder"):  # the key, once
        load_config(ZooConfig, None, [f"sdxl.base_model={tmp_path / 'missing'}"])
    with pytest.raises(ConfigError, match=r"zoo\.tokenizers\.lm_base is empty"):
        load_config(ZooConfig, None, ["tokenizers.lm_base=' '"])
    with pytest.raises(ConfigError, match="max_steps"):
        load_config(ZooConfig, None, ["lm.trainer.max_steps=-1"])
    with pytest.raises(ConfigError, match="crop_size"):
        load_config(ZooConfig, None, ["sdxl.vae.crop_size=30"])
    with pytest.raises(ConfigError, match="whiten"):
        load_config(ZooConfig, None, ["judge.augment.whiten=2"])
    with pytest.raises(ConfigError, match="colour_pool"):
        load_config(ZooConfig, None, ["sdxl.vae.colour_pool=5"])


def test_damaged_zoo_and_judge_are_reported(built, tmp_path: Path) -> None:
    run, _, _ = built
    zoo = load_zoo(run)
    copy = tmp_path / "zoo"
    shutil.copytree(zoo.root, copy)
    shutil.rmtree(copy / "lm")
    with pytest.raises(ZooError, match="'lm' folder .* is missing"):
        read_zoo_folder(copy)
    (copy / "zoo.json").write_text("{not json")
    with pytest.raises(ZooError, match="damaged"):
        read_zoo_folder(copy)
    judge_dir = copy / "judge"
    (judge_dir / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(JudgeError, match="damaged"):
        load_judge(judge_dir)
    save_judge(AttributeJudge({"colour": ["red", "blue"]}, [4], 16), judge_dir)
    config = json.loads((judge_dir / "config.json").read_text())
    config["channels"] = [8]
    (judge_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(JudgeError, match="shape"):
        load_judge(judge_dir)
    with pytest.raises(JudgeError, match="is missing"):
        load_judge(tmp_path / "nowhere")


def test_lm_documents_prompt_the_words_their_texts_name(tmp_path: Path) -> None:
    from pmg.data.catalog import PATTERN_WORDS
    from pmg.data.dataset_stage import load_prepared
    from pmg.zoo.config import HoldoutConfig
    from pmg.zoo.corpus import build_corpus, copy_warmup_documents, keyword_prompted_texts

    run, _ = _data_stage(tmp_path / "run")
    data, split = load_prepared(run)
    corpus = build_corpus(data, split, HoldoutConfig(combos=0, item_fraction=0.0), image_size=8)
    assert len(corpus.lm_sources) == len(corpus.lm_texts)
    contexts = ["", "description:", "review:"]
    assert keyword_prompted_texts(corpus, 0.0, contexts, seed=0) == corpus.lm_texts
    prompted = keyword_prompted_texts(corpus, 1.0, contexts, seed=0)
    changed = 0
    for text, original, (item, kind) in zip(prompted, corpus.lm_texts, corpus.lm_sources, strict=True):
        if text == original:
            continue
        changed += 1
        prompt, _, rest = text.partition(" would love:")
        assert prompt.startswith("User ") and rest.strip() == f"{contexts[kind]} {original}".strip()
        words = prompt.removeprefix("User ").split()
        # Every prompted word is the prompt word of one of the item's attribute values (as the
        # generator's prompts say it: "striped"), named by the text itself.
        own = {data.attributes[a].prompt_word(v): (a, v) for a, v in data.items[item].attributes.items() if v}
        assert words and set(words) <= set(own)
        assert all(any(form.lower() in original.lower() for form in (own[w][1], *data.attributes[own[w][0]].words(own[w][1])))
                   for w in words)
    assert changed > len(prompted) // 2
    warmup = copy_warmup_documents(corpus, 50, seed=0)
    assert len(warmup) == 50 and warmup == copy_warmup_documents(corpus, 50, seed=0)
    vocabulary = {form for spec in data.attributes.values() for v in spec.values for form in (v, spec.prompt_word(v))}
    assert PATTERN_WORDS["stripes"] in vocabulary and "stripes" in vocabulary
    for n, doc in enumerate(warmup):
        word, _, continuation = doc.removeprefix("User ").partition(" would love: ")
        assert word in vocabulary
        # Every other document opens its continuation with the word capitalised, as a title does.
        assert continuation.startswith(word[:1].upper() + word[1:]) if n % 2 else doc.endswith(f" {word}")
