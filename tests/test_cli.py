"""The pmg command line, run in-process: data commands and the pipeline."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from pmg.cli import main, quiet_third_party_output
from pmg.data import read_dataset


def test_data_catalog_and_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cat"
    assert main(["data", "catalog", "--out", str(out), "--seed", "5", "num_users=20", "num_items=30", "interactions_per_user=6"]) == 0
    data = read_dataset(out)
    assert data.num_users == 20 and data.source.endswith("seed 5")
    assert main(["data", "info", str(out)]) == 0
    assert "20 users, 30 items" in capsys.readouterr().out


def test_data_convert_movielens(tmp_path: Path) -> None:
    fixtures = Path(__file__).resolve().parent / "fixtures"
    out = tmp_path / "ml"
    assert main(["data", "convert", "movielens", "--src", str(fixtures / "ml-1m-cut"), "--out", str(out), "--kcore", "2", "2"]) == 0
    data = read_dataset(out)
    assert data.num_users == 6 and data.report.items_without_image == data.num_items


def test_config_typo_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pipeline", "--run", str(tmp_path / "r"), "data.catalog.num_user=3"]) == 2
    err = capsys.readouterr().err
    assert "num_user" in err and "Did you mean" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  kind: parquet\n")
    assert main(["pipeline", "--config", str(bad)]) == 2
    assert f"config file {bad}: Invalid value 'parquet', expected one of [catalog, pmg, movielens, amazon2023, table] (key: data.kind)" \
        in capsys.readouterr().err
    assert main(["data", "info", str(tmp_path)]) == 2
    assert "not a pmg dataset directory" in capsys.readouterr().err


def test_print_config_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pipeline", "--quick", "--print_config"]) == 0
    text = capsys.readouterr().out
    assert "num_users: 200" in text
    saved = tmp_path / "cfg.yaml"
    saved.write_text(text)
    assert main(["pipeline", "--config", str(saved), "--print_config"]) == 0
    assert capsys.readouterr().out == text


def test_quick_runs_any_config_with_its_step_counts_in_a_folder_of_its_own(capsys: pytest.CaptureFixture[str]) -> None:
    movielens = Path(__file__).parents[1] / "configs" / "movielens.yaml"
    assert main(["pipeline", "--quick", "--config", str(movielens), "--print_config"]) == 0
    quick = yaml.safe_load(capsys.readouterr().out)
    assert main(["pipeline", "--config", str(movielens), "--print_config"]) == 0
    full = yaml.safe_load(capsys.readouterr().out)
    # The config's data and settings, the smoke profile's step counts, and not the full run's folder.
    assert quick["data"] == full["data"] and quick["data"]["kind"] == "movielens"
    assert quick["preference"]["model"] == full["preference"]["model"]
    assert quick["zoo"]["clip"]["trainer"]["max_steps"] == 60 < full["zoo"]["clip"]["trainer"]["max_steps"]
    assert quick["run_dir"] == full["run_dir"] + "-quick"
    assert main(["pipeline", "--quick", "--config", str(movielens), "--run", "elsewhere", "--print_config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["run_dir"] == "elsewhere"


def test_config_files_merge_in_order_and_an_error_names_its_file(tmp_path: Path) -> None:
    from pmg.config import ConfigError, load_config
    from pmg.pipeline import PipelineConfig

    first, second, bad = tmp_path / "first.yaml", tmp_path / "second.yaml", tmp_path / "bad.yaml"
    first.write_text("run_dir: runs/first\nreport:\n  num_users: 3\n")
    second.write_text("run_dir: runs/second\n")
    bad.write_text("report:\n  num_userz: 3\n")
    config = load_config(PipelineConfig, [first, second])
    assert (config.run_dir, config.report.num_users) == ("runs/second", 3)
    with pytest.raises(ConfigError, match=f"config file {bad}"):
        load_config(PipelineConfig, [first, bad])


def test_force_names_an_unknown_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Reuse and --force on real stages are checked on the tiny run in test_pipeline_stages.
    assert main(["pipeline", "--run", str(tmp_path / "run"), "--force", "nonsense"]) == 2
    assert "unknown stage(s) ['nonsense']" in capsys.readouterr().err
    assert main(["pipeline", "--run", str(tmp_path / "run"), "--until", "zo"]) == 2
    assert "--until names unknown stage 'zo'; stages are ['data', 'zoo'," in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing was started


def test_max_steps_cannot_bound_a_fit_of_ema_codebooks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # EMA codebooks take no optimizer step, so Lightning's step count stays 0 and the fit would never stop.
    from pmg.config import ConfigError, load_config
    from pmg.quantize.stage import QuantizeConfig

    with pytest.raises(ConfigError, match="max_steps cannot bound a fit of EMA codebooks"):
        load_config(QuantizeConfig, overrides=["trainer.max_steps=100"])
    assert load_config(QuantizeConfig, overrides=["trainer.max_steps=100", "codebook_mode=learned"]).trainer.max_steps == 100
    assert main(["pipeline", "--run", str(tmp_path / "run"), "quantize.trainer.max_steps=100"]) == 2
    assert "set quantize.trainer.max_epochs instead" in capsys.readouterr().err


def test_every_shipped_config_loads() -> None:
    """configs/*.yaml stay in step with the config dataclasses (a renamed key fails here)."""
    from pmg.config import load_config
    from pmg.data import CatalogConfig
    from pmg.pipeline import STAGES, PipelineConfig
    from pmg.tasks import TasksConfig

    schemas = {stage.name: stage.config_type for stage in STAGES} | {"catalog": CatalogConfig, "tasks": TasksConfig}
    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert {"pipeline.yaml", "movielens.yaml"} <= {p.name for p in configs}
    for path in configs:
        load_config(schemas.get(path.stem, PipelineConfig), path)


# A fresh process, since quietening changes process-wide logging and warning state: one Lightning
# fit, a known third-party warning and one of our own, with and without what `pmg` does unless --verbose.
_FIT_AND_WARN = """
import sys, warnings
if sys.argv[1] == "quiet":
    from pmg.cli import quiet_third_party_output
    quiet_third_party_output("pipeline")
import lightning.pytorch as pl
import torch
class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)
data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 2)), batch_size=2)
pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False).fit(Tiny(), data)
warnings.warn("Found 3 module(s) in eval mode at the start of training.")
warnings.warn("a warning of our own")
print("fit done")
"""


@pytest.mark.parametrize("mode", ["quiet", "verbose"])
def test_third_party_boilerplate_is_silenced_unless_verbose(mode: str) -> None:
    done = subprocess.run([sys.executable, "-c", _FIT_AND_WARN, mode], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert "fit done" in output and "a warning of our own" in output
    boilerplate = ("GPU available", "`Trainer.fit` stopped", "in eval mode at the start of training")
    if mode == "quiet":
        assert not [line for line in boilerplate if line in output], output
    else:
        assert all(line in output for line in boilerplate), output


def test_verbose_is_accepted_anywhere_and_changes_nothing_else(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "catalog", "--out", str(tmp_path / "a"), "--verbose", "num_users=20", "num_items=30"]) == 0
    assert main(["--verbose", "data", "catalog", "--out", str(tmp_path / "b"), "num_users=20", "num_items=30"]) == 0
    assert (tmp_path / "a" / "interactions.csv").read_bytes() == (tmp_path / "b" / "interactions.csv").read_bytes()


@pytest.mark.parametrize(("override", "allowed"), [
    ("quantize.codebook_mode=adam", "[ema, learned]"),
    ("reward.consistency_mode=softmax", "[contrastive, cosine]"),
    ("generator.target=future", "[history, next_item]"),
    ("generator.prompt=words", "[tokens, keywords_and_tokens]"),
    ("data.catalog.profile=dense", "[default, sparse]"),
    ("data.on_bad_rows=ignore", "[error, skip]"),
    ("data.on_bad_images=ignore", "[error, skip]"),
    ("data.image_fit=stretch", "[pad, squash, crop]"),
    ("preference.model.contrastive_mode=cross", "[within_modality, cross_modality]"),
    ("preference.user_vector=mean", "[gnn, content]"),
    ("generator.text.targets=[title,reveiw]", "[title, description, review]"),
    ("generator.optimizer.name=adamx", "['adamw', 'adam', 'sgd', 'bnb.AdamW8bit', 'bnb.Adam8bit', 'bnb.PagedAdamW8bit']"),
    ("preference.optimizer.name=AdamW", "['adamw', 'adam', 'sgd', 'bnb.AdamW8bit', 'bnb.Adam8bit', 'bnb.PagedAdamW8bit']"),
    ("zoo.sdxl.unet.lr_schedule.name=cosin", "['constant', 'cosine']"),
])
def test_a_closed_option_fails_at_config_load_listing_its_values(override: str, allowed: str,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pipeline", "--print_config", override]) == 2
    error = capsys.readouterr().err
    assert f"expected one of {allowed}" in error and override.split("=")[0] in error


@pytest.mark.parametrize(("key", "value", "allowed"), [
    ("data.kind", "parquet", "[catalog, pmg, movielens, amazon2023, table]"),
    ("data.duplicates", "dropp", "[error, drop]"),
    ("data.split.scheme", "random", "[leave_last_out, ratio, global_time]"),
])
def test_a_data_option_typo_names_the_key_the_value_and_the_allowed_values(key: str, value: str, allowed: str, tmp_path: Path,
                                                                             capsys: pytest.CaptureFixture[str]) -> None:
    expected = f"Invalid value '{value}', expected one of {allowed} (key: {key})"
    assert main(["pipeline", "--print_config", f"{key}={value}"]) == 2
    assert f"pmg: error: override '{key}={value}': {expected}" in capsys.readouterr().err
    nested: object = value
    for part in reversed(key.split(".")):
        nested = {part: nested}
    config = tmp_path / "typo.yaml"
    config.write_text(json.dumps(nested))  # JSON is YAML
    assert main(["pipeline", "--config", str(config), "--print_config"]) == 2
    assert f"pmg: error: config file {config}: {expected}" in capsys.readouterr().err


def test_data_convert_duplicates_takes_the_values_of_data_duplicates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["data", "convert", "movielens", "--src", str(tmp_path), "--out", str(tmp_path / "out"), "--duplicates", "dropp"])
    assert re.search(r"--duplicates: invalid choice: 'dropp' \(choose from '?error'?, '?drop'?\)", capsys.readouterr().err)


def test_quietening_twice_in_one_process_wraps_the_warning_display_once() -> None:
    # pytest restores warnings.showwarning after each test; "data" touches no logger level.
    quiet_third_party_output("data")
    first = warnings.showwarning
    quiet_third_party_output("data")
    assert warnings.showwarning is first
