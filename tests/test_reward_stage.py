"""The reward stage on the tiny run: artifacts, bounded rewards, only token rows + LoRA change,
a reward for one colour moves the images toward it, reuse, and errors that say what to run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from pmg.cli import main
from pmg.runs import RunDirectory, RunError

TINY_CONFIG = Path(__file__).resolve().parent / "tiny.yaml"


def _pipeline(run: Path, *overrides: str) -> int:
    return main(["pipeline", "--config", str(TINY_CONFIG), "--run", str(run), f"zoo.cache_dir={run.parent / 'zoo-cache'}", *overrides])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("reward") / "run"
    assert _pipeline(run) == 0
    return run


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """name → bool mask of the entries that differ (only names whose tensors differ)."""
    assert before.keys() == after.keys()
    return {name: before[name] != after[name] for name in before if not torch.equal(before[name], after[name])}


def test_reward_stage_writes_adapters_metrics_samples_and_logs(tiny_run: Path) -> None:
    out = tiny_run / "reward"
    for folder in ("text_adapter", "image_adapter", "tb"):
        assert (out / folder).is_dir(), folder
    assert (out / "image_adapter" / "unet_lora").is_dir()  # tiny.yaml trains a UNet LoRA
    assert list((out / "samples").glob("*.png")) and (out / "samples" / "samples.json").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    selection = json.loads((tiny_run / "data" / "user_roles.json").read_text())["selection"]
    assert metrics["validation_users"] == len(selection) == 3  # data.users.selection_fraction 5% of the 60 tiny users
    assert metrics["validation_users_scored"] == 3  # tiny.yaml's validation_users 8 caps it; all 3 score the best state
    for kind in ("text", "image"):
        # Both components are in [0, 1] with weight 1: the total is in [0, 2].
        for when in ("before", "best"):
            assert 0.0 <= metrics[f"{kind}/val_consistency_{when}"] <= 1.0
            assert 0.0 <= metrics[f"{kind}/val_personalization_{when}"] <= 1.0
            assert 0.0 <= metrics[f"{kind}/val_reward_{when}"] <= 2.0
        # The kept state is the best evaluated one, the SFT state (step 0) included, among those
        # showing the users' tastes at least as often as it (reward.keep: reward_keeping_taste).
        assert metrics[f"{kind}/val_reward_best"] >= metrics[f"{kind}/val_reward_before"]
        assert 0.0 <= metrics[f"{kind}/val_taste_before"] <= metrics[f"{kind}/val_taste_best"] <= 1.0
    events = list((out / "tb").rglob("events.out.tfevents.*"))
    assert len(events) == 2  # one TensorBoard run per generator
    logged = b"".join(path.read_bytes() for path in events)
    for tag in (b"train/text_kl", b"train/text_consistency", b"train/image_personalization", b"val/reward"):
        assert tag in logged


def test_image_reward_updates_only_token_rows_and_lora_and_learns_a_colour(tiny_run: Path) -> None:
    """Reward backprop with "redness" as the reward: the sampled images get redder, and of every
    parameter only the preference tokens' embedding rows and the UNet LoRA weights moved."""
    import lightning as L

    from pmg.reward.config import ImageRewardConfig
    from pmg.reward.modules import ImageRewardModule
    from pmg.reward.stage import load_image_adapter
    from pmg.training import OptimizerConfig
    from pmg.zoo.manifest import load_zoo

    zoo = load_zoo(RunDirectory(tiny_run))
    adapter = load_image_adapter(tiny_run / "generator" / "image_adapter", zoo, trainable=True)
    before = {name: p.detach().clone() for name, p in adapter.named_parameters()}

    class Redness(nn.Module):
        """Red minus the other channels, averaged over the image: [B] in [-2, 2]."""

        def image(self, images: torch.Tensor, texts: list[str], preference: torch.Tensor):
            redness = images[:, 0].mean(dim=(1, 2)) - images[:, 1:].mean(dim=(1, 2, 3))
            return redness, {"redness": redness.detach()}

    users = list(range(8))
    prompts = [f"a product for <pv_0_{u % 8}><pv_1_{u % 8}>: a dress" for u in users]
    # Strong guidance amplifies what the conditioning (token rows, attention LoRA) does to the barely trained tiny UNet.
    config = ImageRewardConfig(lr=0.1, max_steps=12, users_per_step=4, num_inference_steps=2, backprop_last_k=2, guidance_scale=7.0)
    module = ImageRewardModule(adapter, Redness(), prompts, [""] * 8, torch.zeros(8, 1), config, OptimizerConfig(name="adam", lr=0.1),
                               val_users=users, eval_every=100, seed=0)
    L.seed_everything(0, verbose=False)
    optimizer = module.configure_optimizers()
    red_before = module.evaluate()["reward"]
    for step in range(config.max_steps):
        optimizer.zero_grad()
        module.training_step(torch.tensor(users[(step % 2) * 4 : (step % 2) * 4 + 4]), step).backward()
        optimizer.step()
    red_after = module.evaluate()["reward"]
    assert red_after > red_before + 0.02, (red_before, red_after)  # measured: 0.048 → 0.100

    changed = _changed(before, {name: p.detach() for name, p in adapter.named_parameters()})
    token_ids = adapter.token_ids
    assert changed, "nothing trained"
    for name, mask in changed.items():
        if "lora_" in name:
            continue
        assert name.endswith("embeddings.token_embedding.weight"), f"{name} changed"
        rows = mask.any(dim=1).nonzero().flatten()
        assert set(rows.tolist()) <= set(token_ids.tolist()), f"{name}: rows {rows.tolist()[:5]} are not preference tokens"
    assert any("lora_" in name for name in changed) and any("token_embedding" in name for name in changed)


def test_saved_reward_adapters_differ_from_sft_only_in_token_rows_and_lora(tiny_run: Path) -> None:
    from pmg.reward.stage import load_image_adapter, load_text_adapter
    from pmg.zoo.manifest import load_zoo

    zoo = load_zoo(RunDirectory(tiny_run))
    for kind, load in (("text", load_text_adapter), ("image", load_image_adapter)):
        sft = load(tiny_run / "generator" / f"{kind}_adapter", zoo, trainable=False)
        tuned = load(tiny_run / "reward" / f"{kind}_adapter", zoo, trainable=False)
        changed = _changed(dict(sft.named_parameters()), dict(tuned.named_parameters()))
        for name, mask in changed.items():
            if "lora_" in name or "trainable_tokens" in name:  # peft keeps the token rows' values in its own tensor
                continue
            assert "embed" in name, f"{kind}: {name} changed"
            rows = mask.reshape(mask.shape[0], -1).any(dim=1).nonzero().flatten()
            assert set(rows.tolist()) <= set(sft.token_ids.tolist()), f"{kind}: {name} rows {rows.tolist()[:5]} changed"


def test_reward_stage_reads_the_texts_and_image_prompts_the_pipeline_writes(tiny_run: Path) -> None:
    """The image phase scores consistency against, and takes its image subject from, every text
    target read as one, exactly as the pipeline's samples were written (title and review both)."""
    from pmg.config import load_config
    from pmg.data.dataset_stage import load_prepared
    from pmg.generator.config import GeneratorConfig
    from pmg.generator.prompts import user_prompts
    from pmg.quantize.stage import load_user_tokens
    from pmg.reward.stage import _image_prompts, _user_texts, load_text_adapter
    from pmg.zoo.manifest import load_zoo

    run = RunDirectory(tiny_run)
    generator = load_config(GeneratorConfig, run.stage_dir("generator") / "config.yaml")
    assert len(generator.text.targets) >= 2
    data, split = load_prepared(run)
    prompts_of_users = user_prompts(data, generator, load_user_tokens(run), split.train)
    policy = load_text_adapter(tiny_run / "reward" / "text_adapter", load_zoo(run), trainable=True).eval()
    samples = [s for s in json.loads((tiny_run / "reward" / "samples" / "samples.json").read_text()) if not s["cold_start"]]
    users = [data.user_ids.index(s["user_id"]) for s in samples]
    texts = _user_texts(policy, data, split.train, generator, prompts_of_users, users)
    prompts = _image_prompts(data, split.train, generator, prompts_of_users, texts)
    others = set(range(data.num_users)) - set(users)
    assert all(texts[u] == "" for u in others)
    for user, sample in zip(users, samples, strict=True):
        assert list(sample["texts"]) == list(generator.text.targets)
        assert texts[user] == " ".join(sample["texts"].values())
        assert prompts[user] == sample["image_prompt"]


def test_rerun_reuses_the_reward_stage(tiny_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    saved = tiny_run / "reward" / "image_adapter" / "learned_embeds.safetensors"
    before = saved.stat().st_mtime_ns
    capsys.readouterr()
    assert _pipeline(tiny_run) == 0
    # The stage's last line is its end line (the first says it starts).
    reward_line = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[reward]")][-1]
    assert "(reused)" in reward_line and "validation reward" in reward_line
    assert saved.stat().st_mtime_ns == before


def test_generate_uses_the_reward_adapters_unless_sft(tiny_run: Path, tmp_path: Path) -> None:
    user = json.loads((tiny_run / "data" / "user_roles.json").read_text())["evaluation"][0]
    for flag in ([], ["--sft"]):
        out = tmp_path / f"g{len(flag)}.png"
        assert main(["generate", "--run", str(tiny_run), "--user", user, "--out", str(out), *flag]) == 0
        assert out.is_file() and json.loads(out.with_suffix(".json").read_text())["texts"]


def test_missing_or_damaged_generator_artifacts_say_what_to_run(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pmg.config import load_config
    from pmg.reward import RewardConfig, run_reward_stage

    config = load_config(RewardConfig, overrides=["text.max_steps=1", "image.max_steps=1", "trainer.enable_progress_bar=false"])
    assert main(["reward", "fit", "--run", str(tmp_path / "empty")]) == 2
    assert "has not completed" in capsys.readouterr().err

    missing = Path(shutil.copytree(tiny_run, tmp_path / "missing"))
    shutil.rmtree(missing / "generator" / "image_adapter")
    with pytest.raises(RunError, match=r"image_adapter is missing .* --force generator"):
        run_reward_stage(config, RunDirectory(missing), "x", True)

    damaged = Path(shutil.copytree(tiny_run, tmp_path / "damaged"))
    weights = damaged / "generator" / "text_adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    with pytest.raises(RunError, match=r"text_adapter/adapter_model\.safetensors is damaged .* --force generator"):
        run_reward_stage(config, RunDirectory(damaged), "x", True)
    assert RunDirectory(damaged).record("reward") is None  # the stale completion is gone, not kept


def test_config_checks_name_the_key() -> None:
    from pmg.config import ConfigError, load_config
    from pmg.reward import RewardConfig

    with pytest.raises(ConfigError, match="group_size must be >= 2"):
        load_config(RewardConfig, overrides=["text.group_size=1"])
    with pytest.raises(ConfigError, match="not both 0"):
        load_config(RewardConfig, overrides=["weights.consistency=0", "weights.personalization=0"])
    with pytest.raises(ConfigError, match="backprop_last_k"):
        load_config(RewardConfig, overrides=["image.backprop_last_k=20"])
    with pytest.raises(ConfigError, match="validation_users must be >= 0"):
        load_config(RewardConfig, overrides=["validation_users=-1"])
    with pytest.raises(ConfigError, match=r"Invalid value 'softmax', expected one of \[contrastive, cosine\] \(key: consistency_mode\)"):
        load_config(RewardConfig, overrides=["consistency_mode=softmax"])
    with pytest.raises(ValueError, match="consistency_mode must be one of"):  # built directly, not loaded
        RewardConfig(consistency_mode="softmax").validate()  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"'keep=best': Invalid value 'best', expected one of \[reward, reward_keeping_taste\]"):
        load_config(RewardConfig, overrides=["keep=best"])


def test_a_state_that_shows_less_taste_than_the_first_is_not_kept_whatever_its_reward() -> None:
    from pmg.reward.modules import RewardProgress

    param = nn.Parameter(torch.zeros(2))
    trainable = [(param, None)]
    for keep_taste, kept_step in ((True, 10), (False, 20)):
        progress = RewardProgress(keep_taste=keep_taste)
        for step, reward, taste in ((0, 1.0, 0.5), (10, 1.2, 0.5), (20, 1.5, 0.4), (30, 0.9, 0.9)):
            with torch.no_grad():
                param.fill_(step)
            progress.record(step, {"reward": reward, "taste": taste}, [param])
        assert progress.step == kept_step and progress.values[0].tolist() == [kept_step] * 2
        restored = RewardProgress.from_state_dict(progress.state_dict(trainable), trainable)
        assert restored.keep_taste is keep_taste and restored.step == kept_step and len(restored.history) == 4
    # Without a taste in the results (a dataset without ground-truth tastes) the reward alone decides.
    progress = RewardProgress(keep_taste=True)
    progress.record(0, {"reward": 1.0}, [param])
    progress.record(10, {"reward": 2.0}, [param])
    assert progress.step == 10


def test_training_order_draws_each_user_once_per_pass_and_is_seeded() -> None:
    from pmg.reward.stage import _seeded_sample, _training_order

    users = [3, 5, 8, 13, 21]
    order = _training_order(users, 12, seed=0)
    assert len(order) == 12
    assert sorted(order[:5]) == users and sorted(order[5:10]) == users  # whole passes, each shuffled
    assert set(order[10:]) <= set(users)
    assert order == _training_order(users, 12, seed=0) and order != _training_order(users, 12, seed=1)
    sample = _seeded_sample(users, 3, seed=0)
    assert len(sample) == 3 and set(sample) <= set(users) and sample == sorted(sample)
    assert _seeded_sample(users, 0, seed=0) == users and _seeded_sample(users, 9, seed=0) == users
