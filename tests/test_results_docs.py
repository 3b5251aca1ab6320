"""docs/results.md and the README's Results section are what benchmarks/write_results.py writes from
the saved benchmark outputs in docs/results/*.json: a figure typed by hand, or a record changed
without rewriting the docs, fails here."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
REWRITE = "rewrite them with `uv run python benchmarks/write_results.py`"


@pytest.fixture(scope="module")
def writer(benchmark_module: Callable[[str], ModuleType]) -> ModuleType:
    return benchmark_module("write_results")


def _record(benchmark: str | None, date: str, result: dict, *, ablation: bool = False) -> dict:
    return {"benchmark": benchmark, "command": f"uv run python benchmarks/{benchmark}.py", "date": date,
            "machine": "2-core CPU", "commit": "abc1234", **({"ablation": True} if ablation else {}), "result": result}


def _records(writer: ModuleType, folder: Path, records: dict[str, dict]) -> dict:
    for name, record in records.items():
        (folder / f"{name}.json").write_text(json.dumps(record))
    return writer.read_records(folder)


def test_docs_results_md_is_what_the_writer_writes(writer: ModuleType) -> None:
    written = writer.written_results(writer.read_records())
    assert (REPO / "docs" / "results.md").read_text(encoding="utf-8") == written, f"docs/results.md differs: {REWRITE}"


def test_the_readme_results_section_is_what_the_writer_writes(writer: ModuleType) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert readme == writer.written_readme(readme, writer.read_records()), f"README.md's Results section differs: {REWRITE}"


def test_every_record_says_what_ran_where_and_when(writer: ModuleType) -> None:
    names = writer.benchmark_names()
    records = writer.read_records()
    assert records and "generation" in records
    for name, record in records.items():
        assert record.benchmark is None or record.benchmark in names, name
        if record.benchmark is not None:
            assert record.command and name.split("-", 1)[0] == record.benchmark, name
        assert datetime.fromisoformat(record.date).tzinfo is not None and record.machine, name
        # What was not saved from a run says where its figures were copied from; what was names its code.
        assert (record.source or "").startswith("transcribed from ") or record.commit, name


def test_a_placeholder_whose_figure_no_record_holds_is_an_error(writer: ModuleType, tmp_path: Path) -> None:
    records = _records(writer, tmp_path, {"pipeline": _record("pipeline", "2026-01-01T00:00:00+00:00", {"minutes": 9.5})})
    assert writer.render("{{pipeline:minutes|.1f}} min; {{pipeline@command}}", records, "") == \
        "9.5 min; uv run python benchmarks/pipeline.py"
    for template, named in (("{{pipeline:peak_rss_gb}}", "nothing at peak_rss_gb"), ("{{zoo:minutes}}", "no record"),
                            ("{{pipeline:minutes|ci.2f}}", "{{pipeline:minutes|ci.2f}}"), ("{{nonsense here}}", "none of the kinds")):
        with pytest.raises(ValueError, match=named.replace("{", r"\{").replace("|", r"\|")):
            writer.render(template, records, "")


def test_a_target_takes_the_newest_figure_that_is_not_an_ablation(writer: ModuleType, tmp_path: Path) -> None:
    records = _records(writer, tmp_path, {
        "pipeline": _record("pipeline", "2026-01-01T00:00:00+00:00", {"minutes": 9.0, "peak_rss_gb": 1.5, "quick_minutes": 1.0}),
        "pipeline-again": _record("pipeline", "2026-02-01T00:00:00+00:00", {"minutes": 16.0}),
        "pipeline-tiny": _record("pipeline", "2026-03-01T00:00:00+00:00", {"minutes": 1.0, "quick_minutes": 9.0}, ablation=True),
    })
    # minutes from the newer full run (missed), the others from the older one that holds them; the ablation counts nowhere.
    assert writer.check_latest(records, "pipeline") == "2 of its 3 targets met; missed: `minutes` ≤ 15 (16)"
    assert writer.check_record(records, "pipeline") == "3 of its 3 targets met"
    assert writer.check_record(records, "pipeline-again") == \
        "0 of its 3 targets met; missed: `minutes` ≤ 15 (16), `peak_rss_gb` ≤ 6 (not measured), `quick_minutes` ≤ 3 (not measured)"
    table = writer.targets_table(records, "results/")
    assert "| `benchmarks/pipeline.py` | `minutes` | ≤ 15 | 16: missed ([pipeline-again](results/pipeline-again.json), 2026-02-01) |" in table
    assert "| `benchmarks/pipeline.py` | `peak_rss_gb` | ≤ 6 | 1.5: met ([pipeline](results/pipeline.json), 2026-01-01) |" in table
    assert "| `benchmarks/zoo.py` | `minutes` | ≤ 10 | not recorded |" in table


def test_runs_recorded_at_the_same_time_are_all_shown(writer: ModuleType, tmp_path: Path) -> None:
    same = "2026-01-01T00:00:00+00:00"
    records = _records(writer, tmp_path, {"pipeline-a": _record("pipeline", same, {"minutes": 9.0}),
                                          "pipeline-b": _record("pipeline", same, {"minutes": 15.5})})
    shown = writer.latest_figures(records, "pipeline", "minutes", writer.benchmark_targets("pipeline")["minutes"])
    assert [(r.record.name, r.value, r.met) for r in shown] == [("pipeline-a", 9.0, True), ("pipeline-b", 15.5, False)]
    assert writer.check_latest(records, "pipeline").startswith("0 of its 3 targets met; missed: `minutes` ≤ 15 (9, 15.5)")


def test_record_keeps_a_benchmarks_last_json_line_with_its_command(writer: ModuleType, tmp_path: Path) -> None:
    output = "progress\n{\"minutes\": 9.7, \"peak_rss_gb\": 1.8, \"quick_minutes\": 1.4}\n"
    path = writer.save_record("pipeline-here", output, "uv run python benchmarks/pipeline.py", "2-core CPU", folder=tmp_path)
    record = writer.read_records(tmp_path)["pipeline-here"]
    assert path == tmp_path / "pipeline-here.json" and record.benchmark == "pipeline" and not record.ablation
    assert record.result == {"minutes": 9.7, "peak_rss_gb": 1.8, "quick_minutes": 1.4}
    assert record.command == "uv run python benchmarks/pipeline.py" and record.source is None
    assert datetime.fromisoformat(record.date).tzinfo is not None
    writer.save_record("pipeline-then", output, "x", "2-core CPU", folder=tmp_path, commit="892a7ab")
    assert json.loads((tmp_path / "pipeline-then.json").read_text())["commit"] == "892a7ab"  # the code that ran, not the checkout
    with pytest.raises(ValueError, match="must start with a benchmark's"):
        writer.save_record("nothing", output, "x", "2-core CPU", folder=tmp_path)
    with pytest.raises(ValueError, match="not JSON"):
        writer.save_record("pipeline", "no json\n", "x", "2-core CPU", folder=tmp_path)


def test_tables_and_sentences_read_the_records(writer: ModuleType, tmp_path: Path) -> None:
    variants = {"no_tokens": {"image_colour": 0.1, "text_style": 0.2, "consistency": 0.0},
                "tokens_reward": {"image_colour": 0.9, "image_shade": 0.5, "text_style": 0.8, "user_preference_text": 0.6,
                                  "image_personalization": 0.7, "image_personalization_ci": [0.65, 0.75]}}
    records = _records(writer, tmp_path, {"generation": _record("generation", "2026-01-01T00:00:00+00:00",
                                                                {"profiles": {"default": {"variants": variants}}})})
    assert writer.variants_table(records, "generation", "default").splitlines() == [
        "| variant | image colour | image shade | text style | consistency | user preference image | user preference text |",
        "|---|---|---|---|---|---|---|",
        "| no_tokens | 0.100 | — | 0.200 | 0.000 | — | — |",
        "| tokens_reward | 0.900 | 0.500 | 0.800 | — | — | 0.600 |",
    ]
    assert "| **keywords + tokens after reward, the image the best of several by the reward** (the default) | 0.70 [0.65, 0.75] | — | — |" in writer.headline_table(records, "generation")
    assert writer.render("{{generation:profiles.default.variants.no_tokens|dict.2f}}", records, "") == \
        "image_colour 0.10, text_style 0.20, consistency 0.00"
    assert writer.number(-0.02, "+.3f") == "−0.020" and writer.number(1e-5) == "1e-05"
