"""The generator stage on the tiny pipeline run: both adapters saved, only the new token rows
and LoRA changed, samples written, ``pmg generate`` for known, unknown and cold-start users."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pmg.cli import main
from pmg.runs import RunDirectory

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


def test_only_token_rows_and_lora_differ_from_the_zoo_base(tiny_run: Path) -> None:
    from pmg.generator import load_generators
    from pmg.zoo.manifest import load_zoo

    zoo = load_zoo(RunDirectory(tiny_run))
    text, image = load_generators(RunDirectory(tiny_run), zoo)
    assert text is not None and image is not None
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
    assert out.stat().st_size > 0 and record["image_prompt"].endswith(": a dress") and "<pv_" in record["image_prompt"]
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
