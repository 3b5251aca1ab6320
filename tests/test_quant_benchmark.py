"""benchmarks/quant.py: the --run reader contract and quantizer_report on tiny data."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

from prefquant import save_safetensors


@pytest.fixture(scope="module")
def bench(benchmark_module: Callable[[str], ModuleType]) -> Iterator[ModuleType]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield benchmark_module("quant")
    torch.set_num_threads(previous)


def write_run(root: Path, embeddings: dict[str, torch.Tensor], tastes: dict[str, torch.Tensor]) -> Path:
    (root / "preference").mkdir(parents=True)
    save_safetensors(embeddings, root / "preference" / "user_preferences.safetensors")
    (root / "preference" / "user_tastes.json").write_text(
        json.dumps({k: v.tolist() for k, v in tastes.items()})
    )
    return root


def tiny_config(bench):
    return bench.BenchConfig(
        num_levels=2,
        codebook_size=8,
        epochs=3,
        batch_size=64,
        speed_rows=256,
        speed_repeats=1,
        compare_vqpytorch=False,
    )


def test_run_reader_and_report(tmp_path, bench):
    embeddings, tastes = bench.synthetic_users(num_users=240, dim=8, seed=3)
    run = write_run(tmp_path / "run", embeddings, tastes)
    read_embeddings, read_tastes = bench.read_run(run)
    for name in ("visual", "textual", "id"):
        assert torch.equal(read_embeddings[name], embeddings[name])
    for name in ("colour", "pattern", "material", "style"):
        assert torch.equal(read_tastes[name], tastes[name])
    report = bench.quantizer_report(read_embeddings, read_tastes, tiny_config(bench))
    json.dumps(report)  # must be JSON-serialisable
    for key in (
        "usage_min",
        "recon_cos",
        "nmi_visual_colour",
        "nmi_textual_material",
        "nmi_random",
        "peak_rss_mb",
    ):
        assert key in report, key
    assert 0.0 < report["usage_min"] <= 1.0
    # Planted signal: visual tokens know colour far better than material, and better than chance.
    assert report["nmi_visual_colour"] > 2 * report["nmi_visual_material"]
    assert report["nmi_visual_colour"] > report["nmi_shuffled"]
    assert report["encode_rows_per_s"] > 0 and report["train_rows_per_s"] > 0
    assert report["encode_speed_ratio_vs_vqpytorch"] is None
    assert report["train_speed_ratio_vs_vqpytorch"] is None
    for mode in ("nearest", "sinkhorn"):
        assert 0.0 <= report[f"collision_rate_{mode}"] <= 1.0
        assert report[f"largest_collision_group_{mode}"] >= 1
        assert 0.0 < report[f"recon_rel_mse_{mode}"] < 1.0


def test_speed_against_vqpytorch_compares_equal_work(bench):
    pytest.importorskip("vector_quantize_pytorch")
    embeddings, _ = bench.synthetic_users(num_users=256, dim=8, seed=2)
    config = bench.BenchConfig(
        num_levels=2, codebook_size=8, epochs=2, batch_size=64, speed_rows=512, speed_repeats=1
    )
    rq = bench.ResidualQuantizer(8, 2, 8)
    bench.fit_quantizer(rq, embeddings["visual"], epochs=2, batch_size=64)
    before = rq.codebooks
    result = bench._speed(rq, embeddings["visual"], config)
    # Same codebooks on both sides: their codes-only path and their forward give our codes.
    assert result["codes_agree_with_vqpytorch"] == 1.0
    for key in (
        "encode_speed_ratio_vs_vqpytorch",
        "eval_forward_speed_ratio_vs_vqpytorch",
        "train_speed_ratio_vs_vqpytorch",
    ):
        assert result[key] > 0, key
    assert torch.equal(rq.codebooks, before), (
        "timing the training forward must not touch the measured quantizer"
    )


def test_report_without_tastes(bench):
    embeddings, _ = bench.synthetic_users(num_users=120, dim=8, seed=1)
    report = bench.quantizer_report({"id": embeddings["id"]}, None, tiny_config(bench))
    assert "nmi_visual_colour" not in report and report["modalities"]["id"]["users"] == 120


def test_run_reader_errors(tmp_path, bench):
    embeddings, tastes = bench.synthetic_users(num_users=50, dim=4, seed=0)
    missing = write_run(tmp_path / "a", {"visual": embeddings["visual"]}, tastes)
    with pytest.raises(ValueError, match=r"missing tensors \['textual', 'id'\]"):
        bench.read_run(missing)
    short = dict(tastes, colour=tastes["colour"][:10])
    bad_tastes = write_run(tmp_path / "b", embeddings, short)
    with pytest.raises(ValueError, match="'colour' must be a list of 50 ints"):
        bench.read_run(bad_tastes)
    with pytest.raises(FileNotFoundError):
        bench.read_run(tmp_path / "nowhere")


def test_run_reader_accepts_label_strings(tmp_path, bench):
    embeddings, tastes = bench.synthetic_users(num_users=30, dim=4, seed=0)
    run = write_run(tmp_path / "run", embeddings, {})
    names = {k: [f"{k}-{int(v)}" for v in values] for k, values in tastes.items()}
    (run / "preference" / "user_tastes.json").write_text(json.dumps(names))
    _, read = bench.read_run(run)
    for name, values in tastes.items():
        # Same partition of users, whatever the ids.
        assert torch.equal(
            values.unsqueeze(0) == values.unsqueeze(1), read[name].unsqueeze(0) == read[name].unsqueeze(1)
        )
