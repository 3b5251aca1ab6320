"""Which users each stage may learn from, select on, or judge: one seeded split, made once per run.

- ``training``: the generator and reward stages train on these users only;
- ``selection``: the reward stage picks its best state, and the generator stage its optional latent
  prior's scale, on these (never trained on);
- ``evaluation``: ``pmg evaluate`` and the generation benchmarks judge these; no training step and
  no model selection of any stage reads them beyond their training history, which is the input a
  user brings (the preference stage embeds it, the quantizer codes it, the keyword baseline
  reads it, as each would for a new user). The preference stage's early stopping ranks the
  validation items of the other users only, so nothing is chosen on an evaluation user's future.

The data stage writes the roles to ``<run>/data/user_roles.json`` (user ids per role) and every
later stage reads them from there (:func:`pmg.data.dataset_stage.load_user_roles`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pmg.atomic import atomic_file
from pmg.data.format import InteractionData

__all__ = ["ROLES", "UserRoles", "UserRolesConfig", "assign_user_roles"]

ROLES = ("training", "selection", "evaluation")


@dataclass
class UserRolesConfig:
    """Shares of the users held out for evaluation and for model selection (seeded, disjoint).

    Each share is rounded and, for a non-zero share, at least one user; the training role
    keeps every other user and must keep at least one.
    """

    evaluation_fraction: float = 0.2
    selection_fraction: float = 0.05
    seed: int = 0

    def validate(self) -> None:
        for name in ("evaluation_fraction", "selection_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"data.users.{name} must be in [0, 1), got {value}")
        if self.evaluation_fraction + self.selection_fraction >= 1.0:
            raise ValueError("data.users.evaluation_fraction + selection_fraction must leave users to train on (< 1)")


@dataclass(frozen=True)
class UserRoles:
    """Disjoint sorted data user indices (int64 [n_role] each) covering every user once."""

    training: np.ndarray
    selection: np.ndarray
    evaluation: np.ndarray

    def of(self, role: str) -> np.ndarray:
        """The users of ``role`` (one of :data:`ROLES`)."""
        if role not in ROLES:
            raise ValueError(f"unknown user role {role!r}; expected one of {ROLES}")
        return getattr(self, role)

    def save(self, path: str | Path, data: InteractionData) -> None:
        """Write ``{role: [user ids]}`` atomically (ids, so the file reads without the index maps)."""
        record = {role: [data.user_ids[u] for u in self.of(role)] for role in ROLES}
        with atomic_file(Path(path)) as tmp:
            tmp.write_text(json.dumps(record, indent=1))

    @classmethod
    def load(cls, path: str | Path, data: InteractionData) -> UserRoles:
        """Read :meth:`save`'s file back against ``data``; ``ValueError`` naming the file if it does not fit."""
        path = Path(path)
        try:
            record = json.loads(path.read_text())
            index = data.user_index()
            roles = {role: np.array(sorted(index[u] for u in record[role]), dtype=np.int64) for role in ROLES}
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a user-roles file of this dataset ({err})") from err
        everyone = np.concatenate(list(roles.values()))
        if len(everyone) != data.num_users or len(np.unique(everyone)) != data.num_users:
            raise ValueError(f"{path}: the roles do not cover each of the dataset's {data.num_users} users once")
        return cls(**roles)


def assign_user_roles(num_users: int, config: UserRolesConfig) -> UserRoles:
    """A seeded split of ``num_users`` users into the three roles."""
    config.validate()

    def share(fraction: float) -> int:
        return max(round(fraction * num_users), 1) if fraction > 0 else 0

    evaluation, selection = share(config.evaluation_fraction), share(config.selection_fraction)
    if evaluation + selection >= num_users:
        raise ValueError(f"{num_users} users cannot give {evaluation} evaluation and {selection} selection users "
                         "and still leave one to train on; lower data.users.evaluation_fraction / selection_fraction")
    order = np.random.default_rng(config.seed).permutation(num_users)
    return UserRoles(training=np.sort(order[evaluation + selection:]).astype(np.int64),
                     selection=np.sort(order[evaluation : evaluation + selection]).astype(np.int64),
                     evaluation=np.sort(order[:evaluation]).astype(np.int64))
