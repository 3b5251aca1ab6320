"""The unified tasks (``pmg recommend/search/rate/explain``, ``pmg generate --reference``) on one small run.

The run is the tiny pipeline on a slightly larger catalog (150 users, 120 items, ~16 interactions
each, 15 preference epochs), so the rating head has ratings enough to beat the mean; it is built
once per module, in-process.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pmg.cli import main
from pmg.runs import RunDirectory, RunError

TINY_CONFIG = Path(__file__).resolve().parent / "tiny.yaml"
SMALL_CATALOG = ("data.catalog.num_users=150", "data.catalog.num_items=120", "data.catalog.interactions_per_user=16",
                 "preference.trainer.max_epochs=15")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("tasks") / "run"
    assert main(["pipeline", "--config", str(TINY_CONFIG), "--run", str(run),
                 f"zoo.cache_dir={run.parent / 'zoo-cache'}", *SMALL_CATALOG]) == 0
    return run


@pytest.fixture(scope="module")
def state(run_dir: Path):
    from pmg.tasks import load_preference_state

    return load_preference_state(RunDirectory(run_dir))


def _printed_ids(out: str) -> list[str]:
    """Item ids of the numbered result lines ("  1. i00042 ...")."""
    return [line.split()[1] for line in out.splitlines() if line.strip()[:1].isdigit() and ". i" in line]


def test_reloaded_model_reproduces_the_stages_user_preferences(run_dir: Path, state) -> None:
    saved = load_file(run_dir / "preference" / "user_preferences.safetensors")
    prefs = state.model.user_preferences(state.graph, state.embeddings, state.cold_start_history)
    for modality in state.model.modalities:
        assert torch.allclose(prefs[modality], saved[modality], atol=1e-5), modality


def test_recommend_excludes_seen_items_and_follows_the_models_ranking(run_dir: Path, state, capsys) -> None:
    from pmg.tasks import recommend

    data = state.data
    user = 7
    result = recommend(state, data.user_ids[user], k=10)
    ids = [item.item_id for item in result.items]
    seen = {data.items[i].item_id for i in data.item[data.user == user]}
    assert len(ids) == 10 and not seen & set(ids)
    scores = [item.score for item in result.items]
    assert scores == sorted(scores, reverse=True)
    # The library's own full ranking (train + validation items excluded); ours also drops the
    # user's test items, since every interaction counts as seen.
    full = state.model.recommend(state.graph, torch.tensor([user]), k=data.num_items,
                                 cold_start_history=state.cold_start_history)[0].tolist()
    expected = [data.items[i].item_id for i in full if data.items[i].item_id not in seen][:10]
    assert ids == expected
    capsys.readouterr()
    assert main(["recommend", "--run", str(run_dir), "--user", data.user_ids[user], "-k", "10"]) == 0
    assert _printed_ids(capsys.readouterr().out) == ids


def test_search_ranks_the_item_matching_the_query_first_and_mixes_in_the_user(run_dir: Path, state, capsys) -> None:
    from pmg.tasks import SearchConfig, search

    data, user_id = state.data, state.data.user_ids[3]
    target = data.items[40]
    query = target.text  # title + description: the item's own text
    by_query = search(state, user_id, query, SearchConfig(query_weight=1.0), k=5)
    assert by_query.items[0].item_id == target.item_id
    assert by_query.items[0].relevance == pytest.approx(1.0, abs=1e-4)
    assert all(hit.relevance < by_query.items[0].relevance for hit in by_query.items[1:])
    # Weight 0: the user's preference alone, i.e. the model's ranking with seen items kept.
    by_user = search(state, user_id, query, SearchConfig(query_weight=0.0), k=5)
    assert [h.item_id for h in by_user.items] == [data.items[i].item_id for i in state.scores(3).topk(5).indices.tolist()]
    mixed = search(state, user_id, query, SearchConfig(query_weight=0.5), k=data.num_items)
    rank = {h.item_id: r for r, h in enumerate(mixed.items)}
    assert rank[target.item_id] < 10  # relevance still pulls the matching item up
    capsys.readouterr()
    assert main(["search", "--run", str(run_dir), "--user", user_id, "--query", query, "-k", "3",
                 "search.query_weight=1.0"]) == 0
    assert _printed_ids(capsys.readouterr().out)[0] == target.item_id
    with pytest.raises(ValueError, match="nothing the text encoder can read"):
        search(state, user_id, "?!", SearchConfig(), k=5)


def test_rating_head_beats_the_mean_is_saved_and_reproducible(run_dir: Path, capsys) -> None:
    from pmg.data.dataset_stage import load_prepared
    from pmg.preference.stage import load_preferences
    from pmg.tasks import RatingConfig, predict_rating, rating_model
    from pmg.tasks.rating import train_rating_head

    run = RunDirectory(run_dir)
    capsys.readouterr()
    data, split = load_prepared(run)
    user, item = int(data.user[split.test[0]]), int(data.item[split.test[0]])
    assert main(["rate", "--run", str(run_dir), "--user", data.user_ids[user], "--item", data.items[item].item_id,
                 "--eval"]) == 0
    out = capsys.readouterr().out
    assert "[rating] head trained" in out and "predicted rating" in out and "the user's own rating" in out
    metrics = json.loads((run_dir / "rating" / "metrics.json").read_text())
    assert metrics["test/rows"] == len(split.test)
    # Catalog ratings rise with taste affinity, which the embeddings carry; the mean cannot see it.
    assert metrics["test/rmse"] < metrics["test/rmse_global_mean"]
    assert f"head {metrics['test/rmse']:.4f}" in out
    saved = load_file(run_dir / "rating" / "head.safetensors")
    # Reused, not retrained, for the same config; retraining with the same seed gives the same head.
    model = rating_model(run, RatingConfig(), log=lambda message: pytest.fail(f"retrained: {message}"))
    again = train_rating_head(RatingConfig(), load_preferences(run), data, split)
    for name, value in again.head.state_dict().items():
        assert torch.equal(value, saved[name]), name
    prediction = predict_rating(run, data, model, data.user_ids[user], data.items[item].item_id)
    prefs = load_preferences(run)
    with torch.no_grad():
        expected = model.head(torch.cat([prefs.user_preferences[m][[user]] * prefs.item_embeddings[m][[item]]
                                         for m in model.modalities], 1))
    assert prediction.predicted == pytest.approx(float(expected[0]), abs=1e-5)
    assert prediction.observed == float(data.rating[split.test[0]])
    # A changed config trains a new head.
    logged: list[str] = []
    rating_model(run, RatingConfig(hidden_dim=0), log=logged.append)
    assert logged and "head trained" in logged[0]


def test_explain_gives_deterministic_text_prompted_with_the_title(run_dir: Path, state, capsys) -> None:
    from pmg.tasks import ExplainConfig, explain

    run, data = RunDirectory(run_dir), state.data
    user_id, item = data.user_ids[5], data.items[11]
    first = explain(run, user_id, item.item_id, ExplainConfig(max_new_tokens=8))
    assert first.text and not first.cold_start
    assert item.title in first.prompt and first.prompt.endswith("review:") and "<pt_" in first.prompt
    assert explain(run, user_id, item.item_id, ExplainConfig(max_new_tokens=8)).text == first.text
    sampled = [explain(run, user_id, item.item_id, ExplainConfig(max_new_tokens=8, do_sample=True, seed=3)).text
               for _ in range(2)]
    assert sampled[0] and sampled[0] == sampled[1]
    capsys.readouterr()
    assert main(["explain", "--run", str(run_dir), "--user", user_id, "--item", item.item_id,
                 "explain.max_new_tokens=8"]) == 0
    assert first.text in capsys.readouterr().out


def test_reference_tokens_weight_the_history_by_similarity(run_dir: Path, state) -> None:
    from pmg.preference.stage import load_preferences
    from pmg.quantize.stage import load_user_tokens
    from pmg.tasks import ReferenceConfig, reference_tokens
    from prefquant import ResidualQuantizer

    run, data = RunDirectory(run_dir), state.data
    user, reference = 9, 30
    tokens = load_user_tokens(run)
    own = reference_tokens(run, data, user, reference, ReferenceConfig(weight=0.0))
    assert own is not None and reference not in [data.item_index()[i] for i in own.history]
    assert sorted(own.history) == sorted({data.items[i].item_id for i in data.item[data.user == user]} - {data.items[30].item_id})
    position = tokens.user_ids.index(data.user_ids[user])
    for modality, codes in own.codes.items():  # weight 0: the user's own tokens
        assert torch.equal(codes, tokens.codes[modality][position]), modality
        assert own.weights[modality].sum() == pytest.approx(1.0, abs=1e-5)
    # Weight 1 at a tiny temperature: the tokens of the history item closest to the reference.
    nearest = reference_tokens(run, data, user, reference, ReferenceConfig(weight=1.0, temperature=1e-4))
    assert nearest is not None
    items = load_preferences(run).item_embeddings
    for modality, codes in nearest.codes.items():
        centred = items[modality] - items[modality].mean(0)
        history = torch.tensor([data.item_index()[i] for i in nearest.history])
        closest = history[torch.nn.functional.cosine_similarity(centred[history], centred[reference][None]).argmax()]
        assert nearest.top_history(modality, 1)[0][0] == data.items[int(closest)].item_id
        quantizer = ResidualQuantizer.from_pretrained(run_dir / "quantize" / modality)
        assert torch.equal(codes, quantizer.encode(items[modality][closest][None])[0]), modality


def test_generate_with_a_reference_uses_weighted_tokens_and_the_reference_image(
    run_dir: Path, state, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pmg.data.images import load_image_tensor
    from pmg.tasks import ReferenceConfig, reference_tokens
    from prefgen import ImagePreferenceAdapter

    calls: list[dict] = []
    original = ImagePreferenceAdapter.generate

    def spy(self, prompts, **kwargs):
        calls.append({"prompts": list(prompts), **kwargs})
        return original(self, prompts, **kwargs)

    monkeypatch.setattr(ImagePreferenceAdapter, "generate", spy)
    data = state.data
    user_id, reference = data.user_ids[9], data.items[30]
    config = tmp_path / "tasks.yaml"
    config.write_text("reference: {weight: 1.0, temperature: 0.0001}\n")
    out = tmp_path / "ref.png"
    assert main(["generate", "--run", str(run_dir), "--user", user_id, "--reference", reference.item_id,
                 "--strength", "0.5", "--tasks-config", str(config), "--out", str(out)]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    expected = reference_tokens(RunDirectory(run_dir), data, 9, 30, ReferenceConfig(weight=1.0, temperature=1e-4))
    assert expected is not None and expected.fragment(["visual"]) in record["image_prompt"]
    assert expected.fragment(["textual"]) in record["text_prompt"]
    weights = record["reference"]["history_weights"]
    assert record["reference"]["item_id"] == reference.item_id
    assert all(sum(w.values()) == pytest.approx(1.0, abs=1e-4) for w in weights.values())
    # Image-to-image from the reference item's own pixels.
    (call,) = calls
    size = call["reference_images"].shape[-1]
    pixels = (load_image_tensor(str(reference.image), size).unsqueeze(0) + 1) / 2
    assert torch.equal(call["reference_images"], pixels) and call["strength"] == 0.5
    assert out.is_file()


def test_unknown_ids_say_where_valid_ids_are(run_dir: Path, capsys) -> None:
    run = str(run_dir)
    cases = [
        (["recommend", "--run", run, "--user", "nobody"], "unknown user 'nobody'", "user_tokens.jsonl"),
        (["search", "--run", run, "--user", "nobody", "--query", "red dress"], "unknown user 'nobody'", "user_tokens.jsonl"),
        (["rate", "--run", run, "--user", "u00001", "--item", "nothing"], "unknown item 'nothing'", "items.jsonl"),
        (["explain", "--run", run, "--user", "u00001", "--item", "nothing"], "unknown item 'nothing'", "items.jsonl"),
        (["generate", "--run", run, "--user", "u00001", "--reference", "nothing"], "unknown item 'nothing'", "items.jsonl"),
        (["rate", "--run", run, "--user", "u00001"], "give --user ID and --item ID", ""),
        (["recommend", "--run", run, "--user", "u00001", "-k", "0"], "-k must be in [1, 120]", ""),
    ]
    for argv, problem, where in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert problem in err and where in err, (argv, err)


def test_missing_stages_and_files_say_what_to_run(run_dir: Path, tmp_path: Path, capsys) -> None:
    from pmg.tasks import SearchConfig, load_preference_state, search

    assert main(["recommend", "--run", str(tmp_path / "none"), "--user", "u00001"]) == 2
    assert "does not exist; run `pmg pipeline" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
    partial = Path(shutil.copytree(run_dir, tmp_path / "partial"))
    (partial / "generator" / "stage.json").unlink()
    assert main(["explain", "--run", str(partial), "--user", "u00001", "--item", "i00001"]) == 2
    assert "stage 'generator' has not completed" in capsys.readouterr().err
    (partial / "preference" / "config.yaml").unlink()
    with pytest.raises(RunError, match="config.yaml is missing .* --force preference"):
        search(load_preference_state(RunDirectory(partial)), "u00001", "red dress", SearchConfig())
    (partial / "preference" / "model.safetensors").write_bytes(b"broken")
    assert main(["recommend", "--run", str(partial), "--user", "u00001"]) == 2
    assert "damaged" in capsys.readouterr().err
    (partial / "preference" / "stage.json").unlink()
    assert main(["rate", "--run", str(partial), "--eval"]) == 2
    assert "stage 'preference' has not completed" in capsys.readouterr().err



def test_readme_examples_parse() -> None:
    """Every command of the README's "Using a trained run" section is one `pmg` accepts."""
    import shlex

    from pmg.cli import build_parser

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Using a trained run", 1)[1].split("\n## ", 1)[0]
    commands = [line.removeprefix("uv run pmg ") for line in section.splitlines() if line.startswith("uv run pmg ")]
    assert {c.split()[0] for c in commands} == {"recommend", "search", "rate", "explain", "generate"}
    for command in commands:
        build_parser().parse_args(shlex.split(command))
