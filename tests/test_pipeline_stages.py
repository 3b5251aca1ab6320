"""The stages chained on a tiny catalog: data → zoo → preference → quantize → generator → reward → evaluate → report.

One tiny run directory is built once per session; each test checks one stage's artifacts,
reuse and error handling on it (or on a copy, when it damages something).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pmg.cli import main
from pmg.config import load_config
from pmg.pipeline import PipelineConfig
from pmg.runs import RunDirectory, RunError, RunWarning
from pmg.zoo import ZOO_STAGE
from pmg.zoo.manifest import ZooError, load_zoo

TINY_CONFIG = Path(__file__).resolve().parent / "tiny.yaml"


def _pipeline(run: Path, *overrides: str) -> int:
    # The zoo's cache lives beside the run, never in the checkout.
    return main(["pipeline", "--config", str(TINY_CONFIG), "--run", str(run),
                 f"zoo.cache_dir={run.parent / 'zoo-cache'}", *overrides])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("pipeline") / "run"
    assert _pipeline(run) == 0
    return run


def test_every_stage_completes_with_its_artifacts(tiny_run: Path) -> None:
    for stage in ("data", "zoo", "preference", "quantize"):
        assert json.loads((tiny_run / stage / "stage.json").read_text())["fingerprint"]
    prefs = load_file(tiny_run / "preference" / "user_preferences.safetensors")
    assert prefs["visual"].shape == (60, 16) and prefs["textual"].shape == (60, 16)
    assert torch.isfinite(prefs["visual"]).all()
    assert (tiny_run / "preference" / "tb").is_dir()
    codes = load_file(tiny_run / "quantize" / "user_codes.safetensors")
    assert codes["visual"].shape == (60, 2) and codes["visual"].max() < 8


def test_user_tokens_parse_back_to_codes(tiny_run: Path) -> None:
    from pmg.quantize import load_user_tokens

    tokens = load_user_tokens(RunDirectory(tiny_run))
    lines = [json.loads(line) for line in (tiny_run / "quantize" / "user_tokens.jsonl").read_text().splitlines()]
    assert len(lines) == 60 and lines[0]["user_id"] == tokens.user_ids[0]
    for user in (0, 17, 59):
        fragment = tokens.prompt_fragment(user, ("visual", "textual"))
        assert fragment.startswith("<pv_0_") and "<pt_1_" in fragment
        parsed = tokens.tokenizer.parse(f"a product for {fragment}: a dress")
        assert parsed["visual"].tolist() == tokens.codes["visual"][user].tolist()
        assert lines[user]["tokens"]["textual"] == tokens.tokenizer.prompt_fragment({"textual": tokens.codes["textual"][user]})
    assert len(tokens.tokenizer.all_tokens()) == 3 * 2 * 8


def test_quantizers_reload_and_encode_the_saved_codes(tiny_run: Path) -> None:
    from prefquant import ResidualQuantizer

    prefs = load_file(tiny_run / "preference" / "user_preferences.safetensors")
    codes = load_file(tiny_run / "quantize" / "user_codes.safetensors")
    quantizer = ResidualQuantizer.from_pretrained(tiny_run / "quantize" / "textual")
    assert torch.equal(quantizer.encode(prefs["textual"]), codes["textual"])
    metrics = json.loads((tiny_run / "quantize" / "metrics.json").read_text())
    assert 0 < metrics["textual/usage_min"] <= 1 and "visual/nmi_colour" in metrics


def test_rerun_reuses_and_a_changed_stage_redoes_what_follows(tiny_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (tiny_run / "quantize" / "user_codes.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert _pipeline(tiny_run) == 0
    out = capsys.readouterr().out
    assert out.count("(reused)") == 8  # every stage, generator to report included
    assert (tiny_run / "quantize" / "user_codes.safetensors").stat().st_mtime_ns == before
    # Where caches live and how progress and logs show are not inputs: nothing is redone.
    assert _pipeline(tiny_run, f"preference.features.cache_dir={tiny_run.parent / 'moved-features'}",
                     "generator.trainer.enable_progress_bar=true", "reward.trainer.log_every_n_steps=7") == 0
    assert capsys.readouterr().out.count("(reused)") == 8
    assert _pipeline(tiny_run, "quantize.codebook_size=4") == 0
    out = capsys.readouterr().out
    assert "[preference]" in out and out.count("(reused)") == 3
    assert load_file(tiny_run / "quantize" / "user_codes.safetensors")["visual"].max() < 4


def test_missing_stage_and_damaged_artifacts_say_what_to_run(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pmg.quantize import load_user_tokens

    empty = tmp_path / "empty"
    assert main(["quantize", "fit", "--run", str(empty)]) == 2
    assert "stage 'preference' has not completed" in capsys.readouterr().err
    damaged = Path(shutil.copytree(tiny_run, tmp_path / "damaged"))
    path = damaged / "quantize" / "user_codes.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(RunError, match="damaged .* --force quantize"):
        load_user_tokens(RunDirectory(damaged))
    (damaged / "run.json").write_text('{"format": 0, "pmg_version": "0.0.1"}')
    assert _pipeline(damaged) == 2
    assert "run format 0" in capsys.readouterr().err


def test_quantize_fit_alone_on_a_run(tiny_run: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(tiny_run, tmp_path / "alone"))
    assert main(["quantize", "fit", "--run", str(run), "num_levels=1", "codebook_size=4", "trainer.max_epochs=2",
                 "trainer.enable_progress_bar=false", "modalities=[visual]"]) == 0
    codes = load_file(run / "quantize" / "user_codes.safetensors")
    assert set(codes) == {"visual"} and codes["visual"].shape == (60, 1)


def test_new_data_redoes_every_stage_and_force_reuses_the_zoo_cache(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = Path(shutil.copytree(tiny_run, tmp_path / "reseeded"))

    def stage_lines(out: str) -> dict[str, str]:
        return {line[1:].split("]")[0]: line for line in out.splitlines() if line.startswith("[")}

    capsys.readouterr()
    assert _pipeline(run, "data.catalog.seed=9") == 0
    lines = stage_lines(capsys.readouterr().out)
    # The zoo learns from the run's data, so new data retrains it too.
    assert len(lines) == 8 and not any("(reused)" in line for line in lines.values())
    assert "zoo built" in lines["zoo"]
    assert "seed 9" in json.loads((run / "data" / "dataset" / "dataset.json").read_text())["source"]
    assert _pipeline(run, "data.catalog.seed=9", "--force", "data") == 0
    lines = stage_lines(capsys.readouterr().out)
    assert "(reused)" not in lines["data"] and "(reused)" not in lines["preference"]
    assert "zoo cached" in lines["zoo"]  # forced, but the cache entry for the same data is still valid


def test_preference_features_from_the_runs_zoo_clip(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pmg.data.dataset_stage import load_prepared
    from pmg.preference.stage import PreferenceConfig, item_features

    run = Path(shutil.copytree(tiny_run, tmp_path / "zoo-features"))
    overrides = ["features.visual=zoo", "features.textual=zoo", f"features.cache_dir={tmp_path / 'features'}",
                 "model.embedding_dim=8", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"]
    assert main(["preference", "fit", "--run", str(run), *overrides]) == 0
    saved = load_file(run / "preference" / "item_features.safetensors")
    clip_dim = json.loads((Path(json.loads((run / "zoo" / "stage.json").read_text())["models"]["clip"]) / "config.json")
                          .read_text())["projection_dim"]
    # Both towers of the zoo's CLIP, L2-normalised, in place of pixels and words.
    assert saved["visual"].shape == (90, clip_dim) and saved["textual"].shape == (90, clip_dim)
    assert torch.allclose(saved["visual"].norm(dim=1), torch.ones(90), atol=1e-4)
    # Outside a run (e.g. train_preferences on a dataset of one's own) 'zoo' names nothing.
    config = PreferenceConfig()
    config.features.visual = "zoo"
    with pytest.raises(ValueError, match="'zoo' but no zoo is at hand"):
        item_features(config, load_prepared(RunDirectory(run))[0])


def test_a_damaged_adapter_is_named_and_a_damaged_zoo_cache_entry_rebuilt(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = Path(shutil.copytree(tiny_run, tmp_path / "damaged-files"))
    adapter = run / "generator" / "text_adapter" / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:-64])
    user = json.loads((run / "quantize" / "user_tokens.jsonl").read_text().splitlines()[0])["user_id"]
    capsys.readouterr()
    assert main(["generate", "--run", str(run), "--user", user]) == 2
    err = capsys.readouterr().err
    assert f"{adapter} is damaged (" in err and f"`pmg pipeline --run {run} --force generator`" in err
    shutil.copy(tiny_run / adapter.relative_to(run), adapter)

    lm = Path(load_zoo(RunDirectory(run)).lm.path) / "model.safetensors"
    written = lm.read_bytes()
    lm.write_bytes(written[:-10])
    with pytest.raises(ZooError, match=rf"zoo cache file {lm} is damaged \(\d+ bytes where the zoo build wrote {len(written)}\)"):
        load_zoo(RunDirectory(run))
    flipped = bytearray(written)
    flipped[-5] ^= 0xFF
    lm.write_bytes(bytes(flipped))  # same size: commands load it, the pipeline checks the bytes before reusing it
    config = load_config(PipelineConfig, TINY_CONFIG, [f"zoo.cache_dir={tiny_run.parent / 'zoo-cache'}"]).zoo
    recorded = RunDirectory(run).require("zoo")["fingerprint"]
    with pytest.warns(RunWarning, match=rf"zoo cache file {lm} is damaged \(its SHA-256 differs .*\); the entry is rebuilt"):
        result = ZOO_STAGE.run(config, RunDirectory(run), RunDirectory(run).require("data")["fingerprint"], False)
    assert "zoo built" in result.summary and lm.read_bytes() == written
    assert result.fingerprint == recorded  # the same inputs give the same zoo: the stages after it stay current
