"""The reward stage: the generator stage's adapters fine-tuned with consistency + personalization rewards.

Text first (GRPO on the text adapter: the user's image from the SFT image adapter is the
consistency partner, KL to the SFT text adapter), then image (reward backprop through the
last K sampler steps: the user's text from the tuned text adapter is the partner). Only the
new token rows and LoRA weights change. Artifacts in ``<run>/reward/``:

    text_adapter/        prefgen text adapter (same format as the generator's; the best validation state)
    image_adapter/       prefgen image adapter (textual-inversion files per encoder [+ unet_lora/])
    samples/             <n>_<user_id>.png + samples.json, as the generator stage writes them
    personalization_map.safetensors
                         the personalization term's visual map [d, d_c] (content -> preference space),
                         with which the best of ``reward.image.candidates`` images is chosen at
                         generation (:mod:`pmg.reward.choice`)
    metrics.json         validation reward (total and components, and the share of the users' tastes
                         shown where the dataset has them) before and in the kept state
    config.yaml          the stage's config
    tb/                  TensorBoard logs (train/*: rewards, KL; val/*: validation rewards)
    checkpoints/text/, checkpoints/image/
                         what a killed fit resumes from (``pmg.training.Resumable``): the trainable
                         part, optimizer and random states, evaluations so far; every
                         ``trainer.checkpoint_every_n_steps`` steps and at the end
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch

from pmg.atomic import atomic_directory
from pmg.config import load_config
from pmg.data.dataset_stage import load_prepared, load_user_roles
from pmg.data.images import load_image_tensor
from pmg.generator.config import GeneratorConfig
from pmg.generator.evaluation import image_taste_hits, taste_attributes, text_taste_hits, visual_taste_judge
from pmg.generator.generate import ImageChoice, generate_for_users, write_samples
from pmg.generator.prompts import (
    UserPrompts,
    prompt_templates,
    subject_attributes,
    user_image_prompt,
    user_prompts,
)
from pmg.preference.stage import load_preferences
from pmg.quantize.stage import load_user_tokens
from pmg.reward.choice import PersonalizationScorer, save_personalization_map
from pmg.reward.config import KeptState, RewardConfig
from pmg.reward.modules import (
    GenerationRewards,
    ImageRewardModule,
    RewardEvaluation,
    RewardProgress,
    TasteScore,
    TextRewardModule,
    sample_images,
)
from pmg.runs import RunDirectory, RunError, stage_fingerprint
from pmg.stages import Stage, StageResult, complete_stage, reuse_or_clear, write_stage_record
from pmg.training import ResumableLoader, build_trainer, completed_fit, resume_point
from pmg.zoo.manifest import load_zoo
from prefgen import ImagePreferenceAdapter, TextPreferenceAdapter, build_text_prompt
from prefquant import fit_linear_map
from prefreward import ConsistencyReward

if TYPE_CHECKING:
    from pmg.data.format import InteractionData
    from pmg.zoo.judge import AttributeJudge
    from pmg.zoo.manifest import Zoo

__all__ = ["REWARD_STAGE", "run_reward_stage", "load_reward_generators", "fit_content_maps"]

_SAMPLE_BATCH = 16  # users per batch when generating the consistency partners


def _generator_folder(run: RunDirectory, name: str) -> Path | None:
    """The generator stage's adapter folder ``name`` (None if that generator was disabled)."""
    run.require("generator")
    out = run.stage_dir("generator")
    try:
        config = load_config(GeneratorConfig, out / "config.yaml")
    except ValueError as err:
        raise RunError(f"{out / 'config.yaml'} is damaged ({err}); rerun with --force generator") from err
    enabled = config.text.enabled if name == "text_adapter" else config.image.enabled
    if not enabled:
        return None
    if not (out / name).is_dir():
        raise RunError(f"the generator stage's {name} is missing from {out}; rerun with --force generator")
    return out / name


def load_text_adapter(folder: Path, zoo: Zoo, *, trainable: bool) -> TextPreferenceAdapter:
    """A saved text adapter on the zoo's LM (merged into it unless ``trainable``: frozen uses only
    generate and score); ``RunError`` naming the stage to redo if damaged."""
    try:
        adapter = TextPreferenceAdapter.load(folder, zoo.lm.path, is_trainable=trainable, local_files_only=zoo.local_files_only,
                                             trust_remote_code=zoo.trust_remote_code)
    except (ValueError, OSError) as err:
        raise RunError(f"the text adapter {folder} is damaged ({err}); rerun its stage with --force {folder.parent.name}") from err
    return adapter if trainable else adapter.merge_for_inference().eval()


def load_image_adapter(folder: Path, zoo: Zoo, *, trainable: bool) -> ImagePreferenceAdapter:
    """A saved image adapter on the zoo's SDXL pipeline; with ``trainable`` its UNet LoRA trains
    too (diffusers loads a LoRA frozen). ``RunError`` naming the stage to redo if damaged."""
    try:
        adapter = ImagePreferenceAdapter.load(folder, zoo.load_sdxl())
    except (ValueError, OSError) as err:
        raise RunError(f"the image adapter {folder} is damaged ({err}); rerun its stage with --force {folder.parent.name}") from err
    if trainable:
        for name, param in adapter.unet.named_parameters():
            if "lora_" in name:
                param.requires_grad_(True)
        return adapter
    return adapter.eval()


def load_reward_generators(run: RunDirectory, zoo: Zoo) -> tuple[TextPreferenceAdapter | None, ImagePreferenceAdapter | None]:
    """The reward stage's adapters of ``run`` on the zoo's models (None where the generator has none)."""
    run.require("reward")
    out = run.stage_dir("reward")
    text = load_text_adapter(out / "text_adapter", zoo, trainable=False) if (out / "text_adapter").is_dir() else None
    image = load_image_adapter(out / "image_adapter", zoo, trainable=False) if (out / "image_adapter").is_dir() else None
    return text, image


def _item_text(data: InteractionData, item: int, target: str) -> str:
    record = data.items[item]
    return (record.description if target == "description" else record.title) or record.text


def fit_content_maps(data: InteractionData, item_embeddings: dict[str, torch.Tensor], embedder: Any, *, image_size: int,
                     text_target: str, ridge: float) -> dict[str, torch.Tensor]:
    """Ridge maps from the zoo CLIP's content embeddings to the preference stage's item space:
    ``visual`` [d, d_c] from item images, ``textual`` [d, d_c] from item texts (``text_target``),
    each the transpose of ``fit_linear_map``'s [d_c, d]: a ``PersonalizationReward`` weight."""
    maps: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        if "visual" in item_embeddings:
            items = [i for i, record in enumerate(data.items) if record.image is not None]
            content = torch.cat([
                embedder.embed_images(torch.stack([load_image_tensor(data.items[i].image, image_size, data.image_read_fit) for i in items[s : s + 64]]))
                for s in range(0, len(items), 64)
            ])
            maps["visual"] = fit_linear_map(content, item_embeddings["visual"][items].float(), ridge=ridge).T
        if "textual" in item_embeddings:
            items = [i for i in range(data.num_items) if _item_text(data, i, text_target)]
            content = torch.cat([embedder.embed_texts([_item_text(data, i, text_target) for i in items[s : s + 64]])
                                 for s in range(0, len(items), 64)])
            maps["textual"] = fit_linear_map(content, item_embeddings["textual"][items].float(), ridge=ridge).T
    return maps


def _check_inputs(config: RewardConfig, text_folder: Path | None, image_folder: Path | None, preferences: dict[str, torch.Tensor]) -> None:
    if config.weights.consistency > 0 and (text_folder is None or image_folder is None):
        raise RunError("reward.weights.consistency > 0 needs both a text and an image adapter: enable generator.text and "
                       "generator.image, or set reward.weights.consistency=0")
    if config.weights.personalization > 0:
        needed = [m for m, folder in (("textual", text_folder), ("visual", image_folder)) if folder is not None]
        missing = [m for m in needed if m not in preferences]
        if missing:
            raise RunError(f"reward.weights.personalization > 0 needs the preference stage's {missing} preferences "
                           "(preference stage modalities), or set reward.weights.personalization=0")


def _seeded_sample(users: list[int], count: int, seed: int) -> list[int]:
    """``count`` of ``users`` (a seeded sample, sorted; all of them for ``count`` 0 or more than there are)."""
    if count <= 0 or count >= len(users):
        return list(users)
    return sorted(users[i] for i in np.random.default_rng(seed).permutation(len(users))[:count])


def _training_order(users: list[int], draws: int, seed: int) -> list[int]:
    """The ``draws`` users one phase trains on, in order: seeded passes over ``users``, each
    shuffled. Known up front, so that only these users' consistency partners are generated."""
    rng = np.random.default_rng(seed)
    order: list[int] = []
    while len(order) < draws:
        order += [users[i] for i in rng.permutation(len(users))]
    return order[:draws]


def _train_phase(kind: str, adapter: TextPreferenceAdapter | ImagePreferenceAdapter, build_module: Callable[[], Any],
                 config: RewardConfig, order: list[int], batch_size: int, steps: int, out: Path, resume_key: str) -> dict[str, float]:
    """One generator's reward fit, resumable: it checkpoints to ``out/checkpoints/<kind>``
    (``pmg.training.Resumable``) and a fit of these inputs that was killed goes on from there.
    A fit that had reached its last step is not built again (``build_module`` makes its
    consistency partners): its best state and evaluations are read from its checkpoint. Leaves
    ``adapter`` in its best validation state; its metrics."""
    resumable, start = resume_point(out / "checkpoints" / kind, resume_key, config.trainer.checkpoint_every_n_steps, f"reward ({kind})")
    completed = completed_fit(start, steps)
    if completed is not None:
        progress = RewardProgress.from_state_dict(completed["reward_progress"], adapter.trainable_rows())
        progress.restore([p for p, _ in adapter.trainable_rows()])
        return _phase_metrics(kind, progress)
    module = build_module()
    # A DataLoader's batches, which a fit killed within its one epoch (the whole phase) resumes exactly.
    loader = ResumableLoader(order, batch_size=batch_size, shuffle=False)
    trainer = build_trainer(config.trainer_for(steps), out, checkpointing=False, resumable=resumable, callbacks=[RewardEvaluation()])
    trainer.fit(module, train_dataloaders=loader, ckpt_path=start, weights_only=True)
    module.restore_best()
    return _phase_metrics(kind, module.progress)


def _phase_metrics(kind: str, progress: RewardProgress) -> dict[str, float]:
    first = progress.history[0]
    best_values = next(h for h in progress.history if h["step"] == progress.step)
    metrics = {f"{kind}/val_{k}_before": v for k, v in first.items() if k != "step"}
    metrics.update({f"{kind}/val_{k}_best": v for k, v in best_values.items() if k != "step"})
    metrics[f"{kind}/best_step"] = float(progress.step)
    return metrics


def _user_images(adapter: ImagePreferenceAdapter, prompts: list[str], users: list[int], num_users: int,
                 config: RewardConfig, seed: int) -> torch.Tensor:
    """[U, 3, S, S] in [-1, 1]: the image of each of ``users`` (zeros for the others), seeded per batch."""
    images: torch.Tensor | None = None
    with torch.no_grad():
        for start in range(0, len(users), _SAMPLE_BATCH):
            chunk = users[start : start + _SAMPLE_BATCH]
            batch = sample_images(adapter, [prompts[u] for u in chunk], num_inference_steps=config.image.num_inference_steps,
                                  guidance_scale=config.image.guidance_scale, seed=seed)
            if images is None:
                images = torch.zeros((num_users, *batch.shape[1:]))
            images[chunk] = batch.cpu()
    assert images is not None
    return images


def _user_texts(adapter: TextPreferenceAdapter, data: InteractionData, history: np.ndarray, generator: GeneratorConfig,
                prompts: UserPrompts, users: list[int]) -> list[str]:
    """Each data user's text as the pipeline writes it (every ``generator.text.targets``, read as
    one by ``joined_text``): what the image subject takes its words from and what an image's
    consistency is scored against; "" for users not in ``users``."""
    chosen = prompts.of(users)
    made = generate_for_users(data, generator, users=users, text_fragments=chosen.text,
                              image_fragments=[None] * len(users), text_adapter=adapter, image_adapter=None,
                              history=history, batch_size=_SAMPLE_BATCH)
    texts = [""] * data.num_users
    for user, generation in zip(users, made, strict=True):
        texts[user] = generation.text
    return texts


def _taste_scores(data: InteractionData, zoo: Zoo, keep: KeptState, write_texts: Callable[[list[int]], list[str]],
                  ) -> tuple[TasteScore | None, TasteScore | None, str]:
    """The text and image taste scorers of ``reward.keep: reward_keeping_taste`` (None where the
    dataset has no ground-truth tastes of that modality or, for images, the zoo no judge that
    reads them) and a note of what is kept by. Texts are scored on what ``write_texts(users)``
    writes with the policy as it stands (every text target, as the pipeline writes them), not on
    the reward loop's one target: in S6 the policy's reviews kept the SFT state's share while its
    titles and reviews together named fewer of the users' tastes."""
    if keep is not KeptState.reward_keeping_taste:
        return None, None, "kept by validation reward"
    text = partial(_text_taste, data=data, write_texts=write_texts) if taste_attributes(data, "textual") else None
    judge = visual_taste_judge(data, zoo)
    image = partial(_image_taste, data=data, judge=judge) if judge is not None else None
    kept = [kind for kind, score in (("text", text), ("image", image)) if score is not None]
    note = (f"{' and '.join(kept)} kept by validation reward among states keeping the SFT taste share" if kept
            else "kept by validation reward (no ground-truth tastes to keep)")
    return text, image, note


def _text_taste(users: list[int], texts: list[str], *, data: InteractionData,
                write_texts: Callable[[list[int]], list[str]]) -> torch.Tensor:
    return text_taste_hits(write_texts(users), users, data)


def _image_taste(users: list[int], images: torch.Tensor, *, data: InteractionData, judge: AttributeJudge) -> torch.Tensor:
    return image_taste_hits(images, users, data, judge)


def _prompts(data: InteractionData, prompts: UserPrompts, generator: GeneratorConfig, config: RewardConfig) -> tuple[list[str], list[int]]:
    """Text prompts per data user (as ``generate_for_user`` builds them) and the users with tokens."""
    context = generator.text.context_of(config.text.target)
    templates = prompt_templates(data, generator.image.default_subject, generator.text.audience)
    text_prompts = [build_text_prompt(f, context, templates) for f in prompts.text]
    users = [u for u in range(data.num_users) if prompts.text_tokens[u] is not None or prompts.image[u] is not None]
    return text_prompts, users


def _image_prompts(data: InteractionData, history: np.ndarray, generator: GeneratorConfig, prompts: UserPrompts,
                   texts: list[str]) -> list[str]:
    """Each data user's image prompt with what ``texts[user]`` names (``generator.image.subject_from_text``);
    the subject from the user's ``history`` (the split's training rows)."""
    described = subject_attributes(data, generator) if any(texts) else {}
    return [user_image_prompt(data, generator, u, texts[u], fragment, described, history, keywords=words)
            for u, (fragment, words) in enumerate(zip(prompts.image, prompts.subject_words, strict=True))]


def run_reward_stage(config: RewardConfig, run: RunDirectory, upstream: str, force: bool) -> StageResult:
    """GRPO on the text adapter, then reward backprop on the image adapter; save the best validation states."""
    stage_fp = stage_fingerprint("reward", config, upstream)
    if (reused := reuse_or_clear(run, "reward", stage_fp, force, resumable=True)) is not None:
        return reused
    config.validate()
    text_folder = _generator_folder(run, "text_adapter")
    image_folder = _generator_folder(run, "image_adapter")
    generator = load_config(GeneratorConfig, run.stage_dir("generator") / "config.yaml")
    preferences = load_preferences(run)
    _check_inputs(config, text_folder, image_folder, preferences.user_preferences)
    tokens = load_user_tokens(run)
    data, split = load_prepared(run)
    zoo = load_zoo(run)
    out = run.stage_dir("reward")
    seed = config.trainer.seed
    L.seed_everything(seed, verbose=False)

    text_policy = load_text_adapter(text_folder, zoo, trainable=True) if text_folder is not None else None
    image_adapter = load_image_adapter(image_folder, zoo, trainable=True) if image_folder is not None else None
    clip, processor = zoo.load_clip()
    embedder = ConsistencyReward.from_model(clip, processor).embedder  # the processor's mean/std
    image_size = image_adapter.image_size if image_adapter is not None else 64
    maps = fit_content_maps(data, preferences.item_embeddings, embedder, image_size=image_size,
                            text_target=config.text.target, ridge=config.map_ridge)
    rewards = GenerationRewards(embedder, maps, config.weights.as_dict(), config.consistency_mode)
    # Built once: the history keywords they hold are read from every training row.
    prompts = user_prompts(data, generator, tokens, split.train)
    text_prompts, users = _prompts(data, prompts, generator, config)
    if len(users) < 2:
        raise RunError(f"the reward stage needs at least 2 users with preference tokens, {run.root} has {len(users)}")
    roles = load_user_roles(run, data)
    # Trained on the training users only, the best state chosen on the selection users only: the
    # evaluation users are never seen (pmg.data.user_roles).
    train_users = sorted(set(users) & set(roles.training.tolist()))
    val_users = sorted(set(users) & set(roles.selection.tolist()))
    if not train_users or not val_users:
        raise RunError(f"the reward stage needs training and selection users with tokens; {run.root} has {len(train_users)} "
                       f"and {len(val_users)} (data.users.selection_fraction)")
    scored = _seeded_sample(val_users, config.validation_users, seed)
    text_order = _training_order(train_users, config.text.max_steps * config.text.users_per_step, seed)
    image_order = _training_order(train_users, config.image.max_steps * config.image.users_per_step, seed + 1)
    def write_texts(chosen: list[int]) -> list[str]:
        assert text_policy is not None
        written = _user_texts(text_policy, data, split.train, generator, prompts, chosen)
        return [written[u] for u in chosen]

    text_taste, image_taste, kept_by = _taste_scores(data, zoo, config.keep, write_texts)
    user_prefs = {m: p.float() for m, p in preferences.user_preferences.items()}
    zeros = torch.zeros(data.num_users, 1)
    metrics: dict[str, float] = {}

    if text_policy is not None:
        if config.text.enabled:
            def text_module() -> TextRewardModule:
                assert text_policy is not None and text_folder is not None
                partners = sorted(set(text_order) | set(scored))
                if image_adapter is not None:
                    # The images the SFT texts lead to (generator.image.subject_from_text): the text is written first.
                    sft_texts = (_user_texts(text_policy, data, split.train, generator, prompts, partners)
                                 if generator.image.subject_from_text else [""] * data.num_users)
                    images = _user_images(image_adapter, _image_prompts(data, split.train, generator, prompts, sft_texts), partners,
                                          data.num_users, config, seed)
                else:
                    images = torch.zeros(data.num_users, 3, 8, 8)
                reference = load_text_adapter(text_folder, zoo, trainable=False)
                return TextRewardModule(text_policy, reference, rewards, text_prompts, images, user_prefs.get("textual", zeros),
                                        config.text, config.optimizer_for(config.text.lr), scored, config.eval_every,
                                        text_taste, keep_taste=text_taste is not None)

            metrics.update(_train_phase("text", text_policy, text_module, config, text_order, config.text.users_per_step,
                                        config.text.max_steps, out, stage_fp))
        text_policy = text_policy.cpu().eval()
        with atomic_directory(out / "text_adapter") as tmp:
            text_policy.save(tmp)
    if image_adapter is not None:
        if config.image.enabled:
            # Seeded again: the image fit draws the same whether the text fit ran in this process or
            # was read from its checkpoint after a kill.
            L.seed_everything(seed + 1, verbose=False)

            def image_module() -> ImageRewardModule:
                assert image_adapter is not None
                partners = sorted(set(image_order) | set(scored))
                texts = (_user_texts(text_policy, data, split.train, generator, prompts, partners)
                         if text_policy is not None else [""] * data.num_users)
                return ImageRewardModule(image_adapter, rewards, _image_prompts(data, split.train, generator, prompts, texts), texts,
                                         user_prefs.get("visual", zeros), config.image,
                                         config.optimizer_for(config.image.lr), scored, config.eval_every, seed,
                                         image_taste, keep_taste=image_taste is not None)

            metrics.update(_train_phase("image", image_adapter, image_module, config, image_order, config.image.users_per_step,
                                        config.image.max_steps, out, stage_fp))
        image_adapter = image_adapter.cpu().eval()
        with atomic_directory(out / "image_adapter") as tmp:
            image_adapter.save(tmp)
    choice = None
    if "visual" in maps:
        save_personalization_map(out, maps["visual"])
        if config.image.candidates > 1 and "visual" in user_prefs:
            choice = ImageChoice(config.image.candidates, PersonalizationScorer(embedder, maps["visual"], user_prefs["visual"]))
    with atomic_directory(out / "samples") as tmp:
        write_samples(tmp, data, split, generator, tokens, text_policy, image_adapter, image_choice=choice)
    metrics["validation_users"] = float(len(val_users))
    metrics["validation_users_scored"] = float(len(scored))
    write_stage_record(out, metrics, config)
    summary = "; ".join(
        f"{kind} validation reward {metrics[f'{kind}/val_reward_before']:.3f} → {metrics[f'{kind}/val_reward_best']:.3f}"
        + (f", taste {metrics[f'{kind}/val_taste_before']:.3f} → {metrics[f'{kind}/val_taste_best']:.3f}"
           if f"{kind}/val_taste_best" in metrics else "")
        + f" (kept step {int(metrics[f'{kind}/best_step'])})"
        for kind in ("text", "image") if f"{kind}/val_reward_best" in metrics
    ) + f"; {kept_by}; {len(scored)} of {len(val_users)} selection users scored; samples in {out / 'samples'}"
    return complete_stage(run, "reward", stage_fp, summary, metrics=metrics)


REWARD_STAGE = Stage("reward", "reward", RewardConfig, run_reward_stage,
                     "fine-tune the generators' token rows and LoRA with consistency + personalization rewards")
