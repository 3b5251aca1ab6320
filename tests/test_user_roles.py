"""One split of the users into training, selection and evaluation users, made by the data stage and
obeyed by every stage: no evaluation user is trained on or selected on anywhere in the pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pmg.data.user_roles import ROLES, UserRoles, UserRolesConfig, assign_user_roles

TINY_CONFIG = Path(__file__).resolve().parent / "tiny.yaml"


def test_roles_are_disjoint_cover_everyone_and_follow_the_seed() -> None:
    roles = assign_user_roles(100, UserRolesConfig(evaluation_fraction=0.2, selection_fraction=0.05, seed=3))
    assert (len(roles.evaluation), len(roles.selection), len(roles.training)) == (20, 5, 75)
    everyone = np.concatenate([roles.of(r) for r in ROLES])
    assert sorted(everyone.tolist()) == list(range(100))
    again = assign_user_roles(100, UserRolesConfig(evaluation_fraction=0.2, selection_fraction=0.05, seed=3))
    other = assign_user_roles(100, UserRolesConfig(evaluation_fraction=0.2, selection_fraction=0.05, seed=4))
    assert all(np.array_equal(roles.of(r), again.of(r)) for r in ROLES)
    assert not np.array_equal(roles.evaluation, other.evaluation)
    # A small non-zero share still holds one user; nothing is left to train on is an error.
    assert len(assign_user_roles(10, UserRolesConfig(evaluation_fraction=0.01, selection_fraction=0.01)).selection) == 1
    with pytest.raises(ValueError, match="leave one to train on"):
        assign_user_roles(2, UserRolesConfig(evaluation_fraction=0.4, selection_fraction=0.4))
    with pytest.raises(ValueError, match="evaluation_fraction"):
        UserRolesConfig(evaluation_fraction=1.0).validate()


def test_roles_file_round_trips_and_rejects_another_dataset(small_catalog: Path, tmp_path: Path) -> None:
    from pmg.data import read_dataset

    data = read_dataset(small_catalog)
    roles = assign_user_roles(data.num_users, UserRolesConfig())
    roles.save(tmp_path / "roles.json", data)
    back = UserRoles.load(tmp_path / "roles.json", data)
    assert all(np.array_equal(roles.of(r), back.of(r)) for r in ROLES)
    record = json.loads((tmp_path / "roles.json").read_text())
    record["evaluation"] = record["evaluation"][1:]  # a user in no role
    (tmp_path / "roles.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="roles.json.*cover each"):
        UserRoles.load(tmp_path / "roles.json", data)


@pytest.fixture(scope="module")
def watched_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, set[int]]]:
    """The tiny pipeline, with every place a stage reads a user for training or model selection recorded."""
    from pmg.cli import main
    from pmg.generator.modules import GeneratorModule
    from pmg.preference.module import PreferenceModule
    from pmg.reward.modules import ImageRewardModule, TextRewardModule

    seen: dict[str, set[int]] = {"generator training": set(), "reward training": set(), "reward selection": set(),
                                 "preference selection": set()}

    def spy(cls: type, name: str, kind: str, users_of):  # noqa: ANN001, ANN202
        original = getattr(cls, name)

        def wrapped(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            seen[kind].update(int(u) for u in users_of(*args))
            return original(self, *args, **kwargs)

        patch.setattr(cls, name, wrapped)

    run = tmp_path_factory.mktemp("roles") / "run"
    with pytest.MonkeyPatch.context() as patch:
        spy(GeneratorModule, "fragment", "generator training", lambda user: [user])
        for module in (TextRewardModule, ImageRewardModule):
            spy(module, "training_step", "reward training", lambda users, *_: users.tolist())
            spy(module, "validation_rewards", "reward selection", lambda users: users)
        spy(PreferenceModule, "validation_step", "preference selection", lambda users, *_: users.tolist())
        assert main(["pipeline", "--config", str(TINY_CONFIG), "--run", str(run), f"zoo.cache_dir={run.parent / 'zoo-cache'}"]) == 0
    return run, seen


def test_no_evaluation_user_is_trained_or_selected_on(watched_run: tuple[Path, dict[str, set[int]]]) -> None:
    from pmg.data.dataset_stage import load_prepared, load_user_roles
    from pmg.runs import RunDirectory

    path, seen = watched_run
    run = RunDirectory(path)
    data, _ = load_prepared(run)
    roles = load_user_roles(run, data)
    evaluation = set(roles.evaluation.tolist())
    assert evaluation and all(seen.values()), seen  # every watched place did read users
    for kind, users in seen.items():
        assert not users & evaluation, f"{kind} read evaluation users {sorted(users & evaluation)}"
    assert seen["generator training"] <= set(roles.training.tolist())
    assert seen["reward training"] <= set(roles.training.tolist())
    assert seen["reward selection"] <= set(roles.selection.tolist())
    # The evaluation judges evaluation users only.
    judged = json.loads((path / "evaluate" / "generations.json").read_text())["users"]
    assert judged and {data.user_index()[u["user_id"]] for u in judged} <= evaluation
