"""The pmg command line, run in-process: data commands and the pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest

from pmg.cli import main
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
    assert "data.kind 'parquet' is not one of" in capsys.readouterr().err
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


def test_force_names_an_unknown_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Reuse and --force on real stages are checked on the tiny run in test_pipeline_stages.
    assert main(["pipeline", "--run", str(tmp_path / "run"), "--force", "nonsense"]) == 2
    assert "unknown stage(s) ['nonsense']" in capsys.readouterr().err


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
