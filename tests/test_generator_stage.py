"""The generator stage on the tiny pipeline run: both adapters and the soft-prompt baseline saved,
only the new token rows and LoRA changed, samples written, ``pmg generate`` for known, unknown and
cold-start users; held-out users, the next-item target, bitsandbytes' AdamW8bit and 2-process DDP."""

from __future__ import annotations

import functools
import json
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from pmg.cli import main
from pmg.data.dataset_stage import load_prepared, load_user_roles
from pmg.generator.modules import text_target
from pmg.generator.prompts import user_fragments
from pmg.generator.stage import train_image_generator, train_text_generator, training_split
from pmg.quantize.stage import load_user_tokens
from pmg.runs import RunDirectory
from pmg.zoo.errors import ZooError
from pmg.zoo.manifest import load_zoo
from prefgen import TextPreferenceAdapter, build_text_prompt

TINY_CONFIG = Path(__file__).resolve().parent / "tiny.yaml"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("generator") / "run"
    assert main(["pipeline", "--config", str(TINY_CONFIG), "--run", str(run), f"zoo.cache_dir={run.parent / 'zoo-cache'}"]) == 0
    return run


def test_stage_writes_both_adapters_samples_and_metrics(tiny_run: Path) -> None:
    out = tiny_run / "generator"
    assert json.loads((out / "stage.json").read_text())["fingerprint"]
    assert (out / "text_adapter" / "adapter_model.safetensors").is_file()
    assert (out / "image_adapter" / "learned_embeds.safetensors").is_file()
    assert (out / "image_adapter" / "learned_embeds_2.safetensors").is_file()
    assert (out / "image_adapter" / "unet_lora").is_dir()
    metrics = json.loads((out / "metrics.json").read_text())
    assert all(torch.isfinite(torch.tensor(metrics[k])) for k in ("text/final_loss", "image/final_loss"))
    samples = json.loads((out / "samples" / "samples.json").read_text())
    assert len(samples) == 3 and samples[-1]["cold_start"] and "<pv_" not in samples[-1]["image_prompt"]
    assert "<pv_" in samples[0]["image_prompt"] and "<pt_" in samples[0]["text_prompt"]
    assert all((out / "samples" / s["image"]).is_file() and set(s["texts"]) == {"title", "review"} for s in samples)
    # Even after 3 SFT steps greedy decoding writes something (sample.min_new_tokens), never an empty title.
    assert all(text for s in samples for text in s["texts"].values()), samples


def test_sft_targets_continue_the_prompt_and_token_rows_get_their_own_lr(tiny_run: Path) -> None:
    from pmg.data.dataset_stage import load_prepared
    from pmg.generator.config import GeneratorConfig
    from pmg.generator.modules import TextGeneratorModule, text_target
    from pmg.quantize.stage import load_user_tokens
    from pmg.zoo.manifest import load_zoo
    from prefgen import LoraOptions

    run = RunDirectory(tiny_run)
    data, _ = load_prepared(run)
    item = next(i for i, it in enumerate(data.items) if it.title)
    # A continuation in its mid-text form: the first word gets the space the LM writes before it.
    assert text_target(data, item, "Nice fabric. ", "review") == " Nice fabric."
    assert text_target(data, item, "", "title") == " " + data.items[item].title.strip()
    assert text_target(data, item, "  ", "review") == ""
    lm, tokenizer = load_zoo(run).load_lm()
    tokens = load_user_tokens(run)
    adapter = TextPreferenceAdapter(lm, tokenizer, tokens.tokenizer.all_tokens(), lora=LoraOptions(r=2, alpha=4))
    config = GeneratorConfig().text
    assert config.token_lr > config.lr
    module = TextGeneratorModule(adapter, data, [None] * data.num_users, config, GeneratorConfig().optimizer_for(config.lr))
    groups = {group["lr"]: {id(p) for p in group["params"]} for group in module.configure_optimizers().param_groups}
    rows = adapter.trainable_parameter_groups()
    assert groups == {config.lr: {id(p) for p in rows["lora"]}, config.token_lr: {id(p) for p in rows["tokens"]}}



def _image_subject(prompt: str) -> str:
    """The subject of an image prompt (``generator.image.prompt_form`` subject_first: "<subject>[ for <tokens>]")."""
    return prompt.split(" for <", 1)[0]


def test_training_prompts_carry_some_of_the_liked_items_own_words(tiny_run: Path) -> None:
    from pmg.data.dataset_stage import load_prepared
    from pmg.generator.config import GeneratorConfig
    from pmg.generator.modules import ImageGeneratorModule, TextGeneratorModule
    from pmg.generator.prompts import ItemWords, prompt_attributes, user_fragments
    from pmg.quantize.stage import load_user_tokens

    run = RunDirectory(tiny_run)
    data, split = load_prepared(run)
    config = GeneratorConfig()
    text_attributes, image_attributes = prompt_attributes(data, config)
    assert "colour" in image_attributes and "category" not in image_attributes and "category" in text_attributes
    item = int(data.item[split.train[0]])
    own = data.items[item].attributes
    assert ItemWords(data, text_attributes, 1.0, 0).values(item) == {a: own[a] for a in text_attributes if own.get(a)}
    assert ItemWords(data, text_attributes, 0.0, 0).text(item) is None
    kept = [len(ItemWords(data, text_attributes, 0.5, seed).values(item)) for seed in range(40)]
    assert len(set(kept)) > 1  # some attributes left out, some kept, varying by draw
    assert sum(kept) / len(kept) == pytest.approx(len(text_attributes) / 2, abs=1.0)
    tokens = load_user_tokens(run)
    fragments = user_fragments(data, tokens, config.text.modalities)
    text = config.text
    batch = {"user": torch.tensor([0]), "item": torch.tensor([item]), "review": ["Nice."], "text": [data.items[item].title]}
    module = TextGeneratorModule(None, data, fragments, text, config.optimizer_for(text.lr),  # type: ignore[arg-type]
                                 words=ItemWords(data, text_attributes, 1.0, 0))
    module.dropout.fraction = 0.0
    prompts, _, _ = module.pairs(batch)
    words = " ".join(data.attributes[a].prompt_word(own[a]) for a in text_attributes if own.get(a))
    assert prompts and all(p.startswith(f"User {words} {fragments[0]} would love:") for p in prompts)
    image = ImageGeneratorModule(None, data, fragments, config.image, config.optimizer_for(text.lr),  # type: ignore[arg-type]
                                 words=ItemWords(data, image_attributes, 1.0, 0))
    image.dropout.fraction = 0.0
    described = " ".join(data.attributes[a].prompt_word(own[a]) for a in image_attributes if own.get(a))
    # The subject first, described by the item's own words, then the user's tokens (prompt_form subject_first).
    subject, _, tokens = image.prompts(batch)[0].partition(" for ")
    assert subject.endswith(f"{described} {own['category']}") and tokens == fragments[0]


@pytest.mark.parametrize("variant", ["tokens", "soft_prompt"])
def test_only_token_rows_and_lora_differ_from_the_zoo_base(tiny_run: Path, variant: str) -> None:
    from pmg.generator import load_generators, load_soft_prompt_generators
    from pmg.generator.generate import SOFT_PROMPT, TEXT_ADAPTER
    from pmg.zoo.manifest import load_zoo
    from prefgen import TextPreferenceAdapter

    zoo = load_zoo(RunDirectory(tiny_run))
    if variant == "tokens":
        _, image = load_generators(RunDirectory(tiny_run), zoo)
        folder = tiny_run / "generator" / TEXT_ADAPTER
    else:
        soft = load_soft_prompt_generators(RunDirectory(tiny_run), zoo)
        assert soft is not None and soft.text.soft_prompt_tokens and soft.image.soft_prompt_tokens
        image = soft.image
        folder = tiny_run / "generator" / SOFT_PROMPT / TEXT_ADAPTER
    # Unmerged (the loaders merge the text adapter into its LM for inference): base weights as saved.
    text = TextPreferenceAdapter.load(folder, zoo.lm.path)
    assert image is not None
    base_lm, base_tokenizer = zoo.load_lm()
    base = dict(base_lm.named_parameters())
    for name, param in text.model.named_parameters():
        if "lora_" in name or "trainable_tokens" in name:
            continue
        plain = name.replace("base_model.model.", "", 1).replace(".token_adapter", "").replace(".base_layer", "")
        if plain.endswith("embed_tokens.weight") or plain.endswith("lm_head.weight"):
            rows = len(base_tokenizer)  # the matrix grew by the new rows; the old ones are untouched
            assert torch.equal(param[:rows], base[plain][:rows]), name
        else:
            assert torch.equal(param, base[plain]), name
    pipe = zoo.load_sdxl()
    for encoder, tokenizer in ((pipe.text_encoder, pipe.tokenizer), (pipe.text_encoder_2, pipe.tokenizer_2)):
        old = encoder.get_input_embeddings().weight
        rows = len(tokenizer)
        trained = image.pipeline.text_encoder if encoder is pipe.text_encoder else image.pipeline.text_encoder_2
        assert torch.equal(trained.get_input_embeddings().weight[:rows], old)
        assert not torch.equal(trained.get_input_embeddings().weight[rows:].mean(0), old.mean(0))
    # No UNet weight but LoRA's changed: the fresh UNet equals the adapter's base layers.
    fresh = dict(pipe.unet.named_parameters())
    for name, param in image.pipeline.unet.named_parameters():
        if "lora_" not in name:
            assert torch.equal(param, fresh[name.replace(".base_layer", "")]), name


def test_generate_writes_an_image_and_texts_for_a_known_user(tiny_run: Path, tmp_path: Path) -> None:
    user_id = json.loads((tiny_run / "quantize" / "user_tokens.jsonl").read_text().splitlines()[3])["user_id"]
    out = tmp_path / "me.png"
    assert main(["generate", "--run", str(tiny_run), "--user", user_id, "--category", "dress", "--out", str(out)]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    # The asked-for subject, described by the user's history keywords (generator.prompt's default).
    from pmg.config import load_config
    from pmg.data.dataset_stage import load_prepared
    from pmg.generator.config import GeneratorConfig
    from pmg.generator.prompts import described_subject, user_prompts
    from pmg.quantize.stage import load_user_tokens

    data, split = load_prepared(RunDirectory(tiny_run))
    config = load_config(GeneratorConfig, tiny_run / "generator" / "config.yaml")
    words = user_prompts(data, config, load_user_tokens(RunDirectory(tiny_run)), split.train).subject_words[data.user_index()[user_id]]
    assert words and record["image_prompt"].startswith(f"{described_subject(data, 'a dress', words)} for <pv_")
    assert out.stat().st_size > 0 and "<pv_" in record["image_prompt"] and "<pt_" in record["text_prompt"]
    assert not record["cold_start"] and set(record["texts"]) == {"title", "review"}


def test_generate_for_an_unknown_user_says_where_ids_are(tiny_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "--run", str(tiny_run), "--user", "nobody"]) == 2
    err = capsys.readouterr().err
    assert "unknown user 'nobody'" in err and "user_tokens.jsonl" in err


def test_cold_start_user_still_generates(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "cold.png"
    assert main(["generate", "--run", str(tiny_run), "--no-tokens", "--out", str(out)]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["cold_start"] and out.is_file() and "<p" not in record["image_prompt"] + record["text_prompt"]


# ----------------------------------------------------------------------------------------------------------------------
# Variants of the stage on copies of the tiny run


def _copy_run(tiny_run: Path, tmp_path: Path) -> RunDirectory:
    import shutil

    shutil.copytree(tiny_run, tmp_path / "run")
    return RunDirectory(tmp_path / "run")


def _stage_config(*overrides: str):
    from pmg.config import load_config
    from pmg.pipeline import PipelineConfig

    return load_config(PipelineConfig, TINY_CONFIG, list(overrides)).generator


def test_only_the_training_users_are_trained_on(tiny_run: Path) -> None:
    from pmg.data.dataset_stage import load_prepared, load_user_roles
    from pmg.data.modules import GenerationDataModule
    from pmg.generator.stage import training_split

    run = RunDirectory(tiny_run)
    data, split = load_prepared(run)
    roles = load_user_roles(run, data)
    held = np.concatenate([roles.selection, roles.evaluation])
    assert len(roles.evaluation) == round(0.2 * data.num_users)
    rows = GenerationDataModule(data, training_split(data, split, roles.training), target="history").train_rows()
    assert not np.isin(data.user[rows], held).any() and np.isin(data.user[split.train], held).any()
    metrics = json.loads((tiny_run / "generator" / "metrics.json").read_text())
    assert metrics["text/examples"] == metrics["image/examples"] == len(rows)
    assert metrics["training_users"] == len(roles.training)


def test_next_item_target_trains_on_each_users_held_out_next_item(tiny_run: Path, tmp_path: Path) -> None:
    from pmg.data.dataset_stage import load_prepared, load_user_roles
    from pmg.generator import load_generators, run_generator_stage
    from pmg.zoo.manifest import load_zoo

    run = _copy_run(tiny_run, tmp_path)
    result = run_generator_stage(_stage_config("generator.target=next_item", "generator.baselines.soft_prompt=false"),
                                 run, "upstream", True)
    data, split = load_prepared(run)
    training_users = set(load_user_roles(run, data).training.tolist())
    # Leave-last-out: the validation row of each training user is the interaction right after its history.
    next_rows = [r for r in split.val if data.user[r] in training_users]
    for row in next_rows:
        history = split.train[data.user[split.train] == data.user[row]]
        assert data.timestamp[row] >= data.timestamp[history].max()
    metrics = json.loads((run.root / "generator" / "metrics.json").read_text())
    assert metrics["text/examples"] == metrics["image/examples"] == len(next_rows) == len(training_users)
    assert "soft_prompt/text/final_loss" not in metrics and not (run.root / "generator" / "soft_prompt").exists()
    assert torch.isfinite(torch.tensor(metrics["text/final_loss"])) and "image loss" in result.summary
    text, image = load_generators(run, load_zoo(run))
    assert text is not None and image is not None
    assert main(["generate", "--run", str(run.root), "--user", data.user_ids[next(iter(training_users))],
                 "--out", str(tmp_path / "next.png")]) == 0


class _OptimizerStateProbe(Callback):
    """After training: the optimizer's class and, per parameter size, the dtype of Adam's first moment."""

    def __init__(self) -> None:
        self.optimizer_type = ""
        self.state_dtypes: dict[int, torch.dtype] = {}

    def on_train_end(self, trainer, pl_module) -> None:
        optimizer = trainer.optimizers[0]
        self.optimizer_type = f"{type(optimizer).__module__}.{type(optimizer).__name__}"
        self.state_dtypes = {param.numel(): state["state1"].dtype for param, state in optimizer.state.items()}


def test_bnb_adamw8bit_trains_the_generators(tiny_run: Path, tmp_path: Path) -> None:
    from pmg.data.dataset_stage import load_prepared
    from pmg.generator.stage import train_image_generator, train_text_generator
    from pmg.quantize.stage import load_user_tokens
    from pmg.zoo.manifest import load_zoo

    run = RunDirectory(tiny_run)
    config = _stage_config("generator.optimizer.name=bnb.AdamW8bit")
    data, split = load_prepared(run)
    zoo, tokens = load_zoo(run), load_user_tokens(run)
    text_probe, image_probe = _OptimizerStateProbe(), _OptimizerStateProbe()
    _, _, text_metrics = train_text_generator(config, data, split, zoo, tokens, tmp_path, callbacks=[text_probe])
    image, _, image_metrics = train_image_generator(config, data, split, zoo, tokens, tmp_path, callbacks=[image_probe])
    assert "AdamW8bit" in text_probe.optimizer_type and text_probe.optimizer_type.startswith("bitsandbytes.")
    assert "AdamW8bit" in image_probe.optimizer_type
    # The CLIP embedding matrices (> 4,096 elements) keep 8-bit state; LoRA's small tensors stay 32-bit.
    large = [size for size in image_probe.state_dtypes if size > 4096]
    assert large and all(image_probe.state_dtypes[size] == torch.uint8 for size in large)
    assert torch.float32 in image_probe.state_dtypes.values()
    assert all(torch.isfinite(torch.tensor(m["final_loss"])) for m in (text_metrics, image_metrics))
    # Still only the new rows moved, with the 8-bit optimizer too.
    base = zoo.load_sdxl()
    rows = len(base.tokenizer)
    assert torch.equal(image.pipeline.text_encoder.get_input_embeddings().weight[:rows],
                       base.text_encoder.get_input_embeddings().weight)


# float32 rounding only: a batch's gradient computed whole in one process, or as two halves all-reduced,
# differ in the last bits (~1e-7 relative), and 3 Adam steps keep that near 1e-6. A rank that skipped the
# averaging, or trained on its half alone, ends about one Adam step (lr 5e-3 and more) away in many
# weights, which the test checks training moves them by.
DDP_TOLERANCE = 1e-5
DDP_MOVED = 1e-3
DDP_STEPS = 3


class _PinDrawsAndRecord(Callback):
    """Per process: the examples of each step and the trainable weights before training (one file per rank);
    for the image generator, every example's diffusion draws pinned.

    The image loss draws latent samples, noise and timesteps for a whole batch from each process's
    generator, so 2 ranks and 1 process would give the same image different draws; here each image gets
    its own, seeded by its pixels, its prompt and the step, however the batch is split.
    Module-level, with plain attributes: ``ddp_spawn`` pickles it.
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.pairs: list[list[int]] = []
        self.initial: list[torch.Tensor] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.initial = [p.detach().cpu().clone() for p in pl_module.adapter.trainable_parameters()]
        if pl_module.kind == "image":
            adapter = pl_module.adapter
            adapter.diffusion_loss = functools.partial(_pinned_diffusion_loss, adapter.diffusion_loss, trainer, adapter)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.pairs += [[trainer.global_step, u, i] for u, i in zip(batch["user"].tolist(), batch["item"].tolist(), strict=True)]

    def on_train_end(self, trainer, pl_module) -> None:
        if pl_module.kind == "image":
            del pl_module.adapter.diffusion_loss  # the class's method again
        record = {"world_size": trainer.world_size, "steps": trainer.global_step, "pairs": self.pairs}
        (Path(self.folder) / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def _pinned_diffusion_loss(loss, trainer, adapter, images: torch.Tensor, prompts, **kwargs) -> torch.Tensor:
    keys = [zlib.crc32(image.cpu().numpy().tobytes() + prompt.encode()) + 7919 * trainer.global_step
            for image, prompt in zip(images, prompts, strict=True)]
    vae = adapter.vae.config
    factor = 2 ** (len(vae.block_out_channels) - 1)
    shape = (vae.latent_channels, images.shape[-2] // factor, images.shape[-1] // factor)
    draws = [torch.Generator().manual_seed(key) for key in keys]
    noise = torch.stack([torch.randn(shape, generator=g) for g in draws])
    high = adapter.noise_scheduler.config.num_train_timesteps
    timesteps = torch.cat([torch.randint(0, high, (1,), generator=g) for g in draws])
    latent_draws = [torch.Generator().manual_seed(key + 1) for key in keys]
    return loss(images, prompts, noise=noise, timesteps=timesteps, generator=latent_draws, **kwargs)


def _train_both(config, data, split, zoo, tokens, folder: Path):
    records = {}
    for kind, train in (("text", train_text_generator), ("image", train_image_generator)):
        (folder / kind).mkdir(parents=True)
        probe = _PinDrawsAndRecord(str(folder / kind))
        adapter, _, metrics = train(config, data, split, zoo, tokens, folder / kind, callbacks=[probe])
        records[kind] = (adapter, metrics, probe.initial)
    return records


def test_generator_training_on_two_processes_matches_one_process(tiny_run: Path, tmp_path: Path) -> None:
    run = RunDirectory(tiny_run)
    data, split = load_prepared(run)
    zoo, tokens = load_zoo(run), load_user_tokens(run)
    train = training_split(data, split, load_user_roles(run, data).training)
    # 16 liked rows, all with an image: one step holds all 16 on 1 process and 8 on each of 2 ranks, so
    # every optimizer step averages the same examples whatever order the samplers put them in.
    liked = train.train[~(data.rating[train.train] < 4.0)][:16]
    assert len(liked) == 16 and all(data.items[int(i)].image is not None for i in data.item[liked])
    train = replace(train, train=liked)
    max_length = 24

    def config(devices: int):
        return _stage_config(
            # Token dropout and item words draw from each process's generator: off, like the image draws.
            "generator.prompt=tokens", "generator.text.no_token_fraction=0", "generator.image.no_token_fraction=0",
            # The text loss is a mean over target tokens, the image loss over examples; cut every title to
            # the same number of tokens so that both are means over examples and halves average to the whole.
            "generator.text.targets=[title]", f"generator.text.max_length={max_length}",
            "generator.text.batch_size=16", "generator.image.batch_size=16",
            # Clipping by the global gradient norm (small enough to clip every step): the ranks' averaged
            # gradients must have the 1-process norm, so frozen embedding rows may carry none on them either.
            "generator.trainer.gradient_clip_val=0.001",
            f"generator.text.max_steps={DDP_STEPS}", f"generator.image.max_steps={DDP_STEPS}",
            "generator.trainer.accelerator=cpu", f"generator.trainer.devices={devices}",
            *(["generator.trainer.strategy=ddp_spawn"] if devices > 1 else []))

    one = _train_both(config(1), data, train, zoo, tokens, tmp_path / "single")
    two = _train_both(config(2), data, train, zoo, tokens, tmp_path / "ddp")
    text = one["text"][0]
    fragments = user_fragments(data, tokens, config(1).text.modalities)
    prompts = [build_text_prompt(fragments[int(data.user[r])], "") for r in liked]
    titles = [text_target(data, int(data.item[r]), "", "title") for r in liked]
    targets = (text.tokenize_for_sft(prompts, titles, max_length=max_length)["labels"] != -100).sum(1)
    assert len(set(targets.tolist())) == 1 and int(targets[0]) > 0
    examples = sorted([int(data.user[r]), int(data.item[r])] for r in liked)
    for kind in ("text", "image"):
        single = json.loads((tmp_path / "single" / kind / "rank0.json").read_text())
        ranks = [json.loads((tmp_path / "ddp" / kind / f"rank{r}.json").read_text()) for r in range(2)]
        assert single["world_size"] == 1 and [r["world_size"] for r in ranks] == [2, 2]
        assert single["steps"] == DDP_STEPS and all(r["steps"] == DDP_STEPS for r in ranks)
        # Every step: each rank took its own half of the examples, and the halves are all of them.
        for step in range(DDP_STEPS):
            halves = [sorted(pair[1:] for pair in r["pairs"] if pair[0] == step) for r in ranks]
            assert len(halves[0]) == len(halves[1]) == 8 and sorted(halves[0] + halves[1]) == examples
        # The adapters the main process got back (rank 0's) hold the weights 1 process trains.
        (trained, metrics, _), (reference, _, initial) = two[kind], one[kind]
        assert torch.isfinite(torch.tensor(metrics["final_loss"]))
        after = [p.detach() for p in reference.trainable_parameters()]
        moved = max(float((a - b).abs().max()) for a, b in zip(after, initial, strict=True))
        gaps = [float((p.detach() - a).abs().max()) for p, a in zip(trained.trainable_parameters(), after, strict=True)]
        assert moved > DDP_MOVED and max(gaps) <= DDP_TOLERANCE, (kind, moved, gaps)
    # Only the new rows of the image encoders trained on the ranks.
    base = zoo.load_sdxl()
    rows = len(base.tokenizer)
    weight = two["image"][0].pipeline.text_encoder.get_input_embeddings().weight
    assert torch.equal(weight[:rows], base.text_encoder.get_input_embeddings().weight)


def test_soft_prompt_baseline_generates_from_each_users_preference_vectors(tiny_run: Path) -> None:
    from pmg.config import load_config
    from pmg.data.dataset_stage import load_prepared
    from pmg.generator import GeneratorConfig, generate_for_user, load_soft_prompt_generators
    from pmg.preference.stage import load_preferences
    from pmg.zoo.manifest import load_zoo
    from prefgen import build_text_prompt

    run = RunDirectory(tiny_run)
    soft = load_soft_prompt_generators(run, load_zoo(run))
    preferences = load_preferences(run).user_preferences
    assert soft is not None and soft.text_baseline.modalities == ["textual", "visual"] and soft.image_baseline.modalities == ["visual"]
    text0, image0 = soft.vectors(preferences, 0)
    text1, _ = soft.vectors(preferences, 1)
    assert text0.shape == (1, 2, soft.text.embedding_width)
    assert [tuple(v.shape) for v in image0] == [(1, 2, width) for width in soft.image.embedding_widths]
    # The vectors reach the LM: two users' prompts, identical as text, get different logits.
    prompt = build_text_prompt(soft.fragment(soft.text))
    assert prompt.count("<pmg_soft_") == 2
    with soft.text.soft_prompt(torch.cat([text0, text1])):
        logits = soft.text.logits([prompt, prompt])
    assert not torch.allclose(logits[0], logits[1])
    data, split = load_prepared(run)
    config = load_config(GeneratorConfig, tiny_run / "generator" / "config.yaml")
    result = generate_for_user(data, config, user=0, text_fragment=soft.fragment(soft.text),
                               image_fragment=soft.fragment(soft.image), text_adapter=soft.text, image_adapter=soft.image,
                               history=split.train, text_soft_prompt=text0, image_soft_prompt=image0)
    assert result.image is not None and set(result.texts) == {"title", "review"} and "<pmg_soft_0>" in result.image_prompt


def test_batched_generation_gives_each_user_what_they_get_alone(tiny_run: Path) -> None:
    from pmg.config import load_config
    from pmg.data.dataset_stage import load_prepared
    from pmg.evaluate.generation import hybrid_variant, soft_prompt_variant, token_variant
    from pmg.generator import GeneratorConfig, load_generators, load_soft_prompt_generators
    from pmg.preference.stage import load_preferences
    from pmg.quantize.stage import load_user_tokens
    from pmg.zoo.manifest import load_zoo

    run = RunDirectory(tiny_run)
    zoo = load_zoo(run)
    data, split = load_prepared(run)
    config = load_config(GeneratorConfig, tiny_run / "generator" / "config.yaml")
    text, image = load_generators(run, zoo)
    soft = load_soft_prompt_generators(run, zoo)
    assert soft is not None
    users = [0, 3, 7]
    for variant in (token_variant(text, image, data, split.train, load_user_tokens(run), config),
                    soft_prompt_variant(soft, load_preferences(run).user_preferences, split.train),
                    hybrid_variant(text, image, data, split.train, load_user_tokens(run), config)):
        batched = variant.generate_many(data, config, users)
        alone = [variant.generate(data, config, u) for u in users]
        for together, single in zip(batched, alone, strict=True):
            assert together.user_id == single.user_id and together.image_prompt == single.image_prompt
            assert together.texts == single.texts
            # Each image starts from its own seeded noise: the batch does not change it (up to float error).
            difference = np.abs(np.asarray(together.image, dtype=np.int16) - np.asarray(single.image, dtype=np.int16))
            assert difference.max() <= 2, difference.max()


def test_each_user_starts_from_their_own_noise_which_follows_their_id_not_their_index(tiny_run: Path) -> None:
    from types import SimpleNamespace

    from pmg.config import load_config
    from pmg.data.dataset_stage import load_prepared
    from pmg.generator import GeneratorConfig, load_generators
    from pmg.generator.generate import generate_for_users, user_seed
    from pmg.zoo.manifest import load_zoo

    run = RunDirectory(tiny_run)
    data, split = load_prepared(run)
    config = load_config(GeneratorConfig, tiny_run / "generator" / "config.yaml")
    _, image = load_generators(run, zoo=load_zoo(run))
    # The same prompt for three users and the cold-start user: four different images.
    out = generate_for_users(data, config, users=[0, 1, 2, None], text_fragments=[None] * 4, image_fragments=[None] * 4,
                             text_adapter=None, image_adapter=image, history=split.train, subjects=["a hat"] * 4)
    assert len({g.image_prompt for g in out}) == 1
    pictures = [np.asarray(g.image, dtype=np.int16) for g in out]
    assert all(np.abs(pictures[a] - pictures[b]).max() > 10 for a in range(4) for b in range(a + 1, 4))
    assert user_seed(config.sample.seed, data, None) == config.sample.seed
    assert user_seed(5, SimpleNamespace(user_ids=["u1", "u2"]), 1) == user_seed(5, SimpleNamespace(user_ids=["u2", "u1"]), 0)
    assert user_seed(5, SimpleNamespace(user_ids=["u1", "u2"]), 0) != user_seed(5, SimpleNamespace(user_ids=["u1", "u2"]), 1)


def test_the_image_subject_carries_the_colour_the_text_names(tiny_run: Path) -> None:
    from pmg.config import load_config
    from pmg.data.dataset_stage import load_prepared
    from pmg.generator import GeneratorConfig, load_generators
    from pmg.generator.generate import generate_for_users
    from pmg.generator.prompts import subject_attributes
    from pmg.runs import RunError
    from pmg.zoo.manifest import load_zoo

    run = RunDirectory(tiny_run)
    data, split = load_prepared(run)
    config = load_config(GeneratorConfig, tiny_run / "generator" / "config.yaml")
    assert config.image.subject_from_text == ["colour"]
    text, image = load_generators(run, zoo=load_zoo(run))
    colours = list(data.attributes["colour"].values)
    said = {0: f"Soft wool coat in {colours[1]}", 1: "Soft wool coat", 2: f"A {colours[2]} and {colours[3]} scarf"}
    text.generate = lambda prompts, **_: [said[n // len(config.text.targets) % 3] for n in range(len(prompts))]  # type: ignore[method-assign]
    fragments = [None, None, None]
    out = generate_for_users(data, config, users=[0, 1, 2], text_fragments=fragments, image_fragments=fragments,
                             text_adapter=text, image_adapter=image, history=split.train, subjects=["a hat"] * 3)
    article = {c: "an" if c[0] in "aeiou" else "a" for c in colours}
    assert [_image_subject(g.image_prompt) for g in out] == [  # the first colour named, if any
        f"{article[colours[1]]} {colours[1]} hat", "a hat", f"{article[colours[2]]} {colours[2]} hat"]
    independent = generate_for_users(data, _stage_config("generator.image.subject_from_text=[]"), users=[0], text_fragments=[None],
                                     image_fragments=[None], text_adapter=text, image_adapter=image, history=split.train,
                                     subjects=["a hat"])
    assert _image_subject(independent[0].image_prompt) == "a hat"
    assert np.abs(np.asarray(independent[0].image, dtype=np.int16) - np.asarray(out[0].image, dtype=np.int16)).max() > 0
    with pytest.raises(RunError, match=r"subject_from_text names \['color'\].*set generator.image.subject_from_text=\[\]"):
        subject_attributes(data, _stage_config("generator.image.subject_from_text=[color]"))


def test_image_training_prompts_name_what_the_items_text_names(tiny_run: Path) -> None:
    """Training captions match generation: the subject carries the colour the liked item's text or review names."""
    from pmg.data.dataset_stage import load_prepared
    from pmg.generator.modules import ImageGeneratorModule
    from pmg.generator.prompts import subject_attributes
    from pmg.training import OptimizerConfig

    run = RunDirectory(tiny_run)
    data, _ = load_prepared(run)
    config = _stage_config()
    colours = list(data.attributes["colour"].values)
    item = next(i for i, it in enumerate(data.items) if it.attributes.get("category"))
    category = data.items[item].attributes["category"]
    batch = {"user": torch.tensor([0, 0, 0]), "item": torch.tensor([item] * 3),
             "text": [f"Soft wool {category} in {colours[1]}", "Soft wool", "Soft wool"],
             "review": ["", f"Great {colours[2]} tone.", "Nice."]}
    config.image.no_token_fraction = 0.0

    def prompts(described):
        module = ImageGeneratorModule(None, data, ["<pv_0_1>"] * data.num_users, config.image, OptimizerConfig(),  # type: ignore[arg-type]
                                      described=described)
        return [_image_subject(p) for p in module.prompts(batch)]

    article = {c: "an" if c[0] in "aeiou" else "a" for c in colours}
    assert prompts(subject_attributes(data, config)) == [f"{article[colours[1]]} {colours[1]} {category}",
                                                         f"{article[colours[2]]} {colours[2]} {category}", f"a {category}"]
    assert prompts({}) == [f"a {category}"] * 3


def test_prompts_put_the_history_keywords_before_the_tokens_and_into_the_image_subject(tiny_run: Path) -> None:
    from pmg.config import load_config
    from pmg.data.dataset_stage import load_prepared
    from pmg.generator.config import GeneratorConfig, PromptMode
    from pmg.generator.prompts import prompt_keywords, user_fragments, user_prompts
    from pmg.quantize.stage import load_user_tokens

    run = RunDirectory(tiny_run)
    data, split = load_prepared(run)
    tokens = load_user_tokens(run)
    config = load_config(GeneratorConfig, tiny_run / "generator" / "config.yaml")
    assert config.prompt is PromptMode.keywords_and_tokens  # the default
    hybrid = user_prompts(data, config, tokens, split.train)
    plain = user_prompts(data, config, tokens, split.train, PromptMode.tokens)
    text_tokens = user_fragments(data, tokens, config.text.modalities)
    assert plain.text == text_tokens and plain.image == hybrid.image and plain.subject_words == [None] * data.num_users
    keywords = prompt_keywords(data, config, split.train, range(data.num_users))  # read as generator.keywords says
    text_attributes = [a for a, spec in data.attributes.items() if spec.modality in config.text.modalities]
    for user in range(data.num_users):
        words = " ".join(keywords[user].words(data, text_attributes))
        assert words and text_tokens[user] is not None
        assert hybrid.text[user] == f"{words} {text_tokens[user]}"
        assert hybrid.subject_words[user] == {a: v for a, v in keywords[user].values.items()
                                              if data.attributes[a].modality in config.image.modalities and a != "category"}
    # Keywords come from the rows given only: with no history, the tokens alone.
    empty = user_prompts(data, config, tokens, split.train[:0])
    assert empty.text == text_tokens and empty.subject_words == [None] * data.num_users
    picked = hybrid.of([2, None])
    assert picked.text == [hybrid.text[2], None] and picked.subject_words == [hybrid.subject_words[2], None]
    # Asking for a few users builds theirs alone, and each as it is among everyone's.
    last = data.num_users - 1
    for mode in PromptMode:
        everyone = user_prompts(data, config, tokens, split.train, mode)
        assert user_prompts(data, config, tokens, split.train, mode, users=[last, None, 2, last]) == everyone.of([last, None, 2, last])
    # The stage trained and sampled with these prompts: the samples' prompts carry the words.
    samples = json.loads((tiny_run / "generator" / "samples" / "samples.json").read_text())
    first = data.user_index()[samples[0]["user_id"]]
    assert samples[0]["text_prompt"].startswith(f"User {hybrid.text[first]} would love:")
    assert all(data.attributes[a].prompt_word(v) in samples[0]["image_prompt"] for a, v in (hybrid.subject_words[first] or {}).items())


def test_a_prompt_mode_outside_the_closed_set_fails_at_config_load() -> None:
    from pmg.config import ConfigError, load_config
    from pmg.generator.config import GeneratorConfig, LatentPriorTarget, PromptMode

    assert load_config(GeneratorConfig, None, ["prompt=tokens"]).prompt is PromptMode.tokens
    with pytest.raises(ConfigError, match="prompt"):
        load_config(GeneratorConfig, None, ["prompt=keywords"])
    assert load_config(GeneratorConfig, None, ["image.latent_prior_target=beyond_words"]).image.latent_prior_target is LatentPriorTarget.beyond_words
    with pytest.raises(ConfigError, match="latent_prior_target"):
        load_config(GeneratorConfig, None, ["image.latent_prior_target=residual"])


def test_the_image_adapter_can_keep_every_item_word_while_the_text_adapter_drops_some(tiny_run: Path) -> None:
    from pmg.config import ConfigError, load_config
    from pmg.generator.config import GeneratorConfig
    from pmg.generator.modules import ImageGeneratorModule
    from pmg.generator.prompts import prompt_attributes, training_item_words

    data, split = load_prepared(RunDirectory(tiny_run))
    config = load_config(GeneratorConfig, None, [])
    assert config.image.item_word_keep == 1.0 and config.item_word_keep == 0.5
    with pytest.raises(ConfigError, match="item_word_keep"):
        load_config(GeneratorConfig, None, ["image.item_word_keep=1.5"])
    inherited = training_item_words(data, load_config(GeneratorConfig, None, ["image.item_word_keep=null"]), "image")
    assert inherited is not None and inherited.keep == 0.5
    text_attributes, image_attributes = prompt_attributes(data, config)
    items = [int(i) for i in np.unique(data.item[split.train])[:40]]
    text_words, image_words = training_item_words(data, config, "text"), training_item_words(data, config, "image")
    assert text_words is not None and image_words is not None
    own = [{a: data.items[i].attributes[a] for a in image_attributes if data.items[i].attributes.get(a)} for i in items]
    assert [image_words.values(i) for i in items] == own
    text_own = sum(1 for i in items for a in text_attributes if data.items[i].attributes.get(a))
    assert 0 < sum(len(text_words.values(i)) for i in items) < text_own  # generator.item_word_keep 0.5 still applies to text
    assert training_item_words(data, load_config(GeneratorConfig, None, ["prompt=tokens"]), "image") is None
    # The image adapter's training prompts then name every one of the item's own image words.
    tokens = load_user_tokens(RunDirectory(tiny_run))
    fragments = user_fragments(data, tokens, config.image.modalities)
    module = ImageGeneratorModule(None, data, fragments, config.image, config.optimizer_for(config.image.lr),  # type: ignore[arg-type]
                                  words=image_words)
    batch = {"user": torch.zeros(len(items), dtype=torch.long), "item": torch.tensor(items), "review": [""] * len(items),
             "text": [""] * len(items)}
    for prompt, values in zip(module.prompts(batch), own, strict=True):
        assert all(data.attributes[a].prompt_word(v) in prompt for a, v in values.items())


def test_the_latent_prior_is_fitted_on_training_users_and_scaled_on_selection_users(tiny_run: Path,
                                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from pmg.data.modules import GenerationDataModule
    from pmg.generator import latent_prior
    from pmg.generator.config import LatentPriorTarget
    from prefgen import ImagePreferenceAdapter

    metrics = json.loads((tiny_run / "generator" / "metrics.json").read_text())
    config = _stage_config()
    candidates = config.image.latent_prior_scales
    assert metrics["image/latent_prior/scale"] in candidates
    assert all(f"image/latent_prior/share_at_{s:g}" in metrics for s in candidates)
    chosen = max(candidates, key=lambda s: (metrics[f"image/latent_prior/share_at_{s:g}"], -s))
    assert metrics["image/latent_prior/scale"] == chosen
    run = RunDirectory(tiny_run)
    data, split = load_prepared(run)
    roles = load_user_roles(run, data)
    zoo = load_zoo(run)
    adapter = ImagePreferenceAdapter.load(tiny_run / "generator" / "image_adapter", zoo.load_sdxl())
    assert (adapter.latent_prior is not None) == (chosen > 0)

    # Targets: each training user's mean latent over the images the image adapter trained on.
    rows = GenerationDataModule(data, training_split(data, split, roles.training), target="history").train_rows()
    users, targets = latent_prior.user_latent_targets(data, rows, adapter)
    assert set(users) <= set(roles.training.tolist()) and targets.shape == (len(users), adapter.latent_channels)
    first = users[0]
    items = np.unique(data.item[rows[data.user[rows] == first]])
    means = latent_prior.item_latent_means(data, items, adapter)
    torch.testing.assert_close(targets[0], torch.stack([means[int(i)] for i in items]).mean(dim=0))
    # Beyond the words: each item's latent less the mean of the items with the same image words.
    assert latent_prior.target_words(data, config) is None
    beyond = replace(config, image=replace(config.image, latent_prior_target=LatentPriorTarget.beyond_words))
    words = latent_prior.target_words(data, beyond)
    assert words is not None and words.keep == 1.0
    all_means = latent_prior.item_latent_means(data, np.unique(data.item[rows]), adapter)
    residuals = latent_prior.beyond_words(all_means, words)
    key = tuple(sorted(words.values(int(items[0])).items()))
    group = [i for i in all_means if tuple(sorted(words.values(i).items())) == key]
    centre = torch.stack([all_means[i] for i in group]).mean(dim=0)
    torch.testing.assert_close(residuals[int(items[0])], all_means[int(items[0])] - centre)
    torch.testing.assert_close(torch.stack([residuals[i] for i in group]).sum(dim=0), torch.zeros_like(centre), atol=1e-5, rtol=0)
    _, beyond_targets = latent_prior.user_latent_targets(data, rows, adapter, words)
    torch.testing.assert_close(beyond_targets[0], torch.stack([residuals[int(i)] for i in items]).mean(dim=0))

    # The rule: the best selection share wins, a tie goes to the smaller scale; without a judge, the first candidate.
    seen: list[list[int]] = []

    def share(config, data, history, adapter, users, judge, fragments, words, latent_offsets=None) -> float:
        seen.append(list(users))
        scale = adapter.latent_prior.scale if adapter.latent_prior is not None else 0.0
        return {0.0: 0.2, 1.0: 0.5, 2.0: 0.5, 3.0: 0.4}[scale]

    monkeypatch.setattr(latent_prior, "visual_taste_share", share)
    tokens = load_user_tokens(run)
    found = latent_prior.attach_latent_prior(config, data, split, tokens, adapter, zoo, training_rows=rows,
                                             selection_users=roles.selection.tolist())
    assert found["latent_prior/scale"] == 1.0 and adapter.latent_prior is not None and adapter.latent_prior.scale == 1.0
    assert seen == [roles.selection.tolist()] * 4
    monkeypatch.setattr(type(zoo), "load_judge", lambda self: (_ for _ in ()).throw(ZooError("no judge")))
    reordered = replace(config, image=replace(config.image, latent_prior_scales=[2.0, 0.0]))
    found = latent_prior.attach_latent_prior(reordered, data, split, tokens, adapter, zoo, training_rows=rows,
                                             selection_users=roles.selection.tolist())
    assert found["latent_prior/scale"] == 2.0 and "latent_prior/share_at_2" not in found
    with pytest.raises(ValueError, match="latent_prior_scales"):
        replace(config.image, latent_prior_scales=[1.0, -1.0]).validate()
    with pytest.raises(ValueError, match="latent_prior_scales"):
        replace(config.image, latent_prior_scales=[]).validate()
    assert not _stage_config("generator.image.latent_prior=false").image.latent_prior  # tests/tiny.yaml turns it on
