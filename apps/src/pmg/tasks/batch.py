"""Batch generation: every chosen user's tokens, texts and image written as WebDataset-style tar shards.

``pmg generate --run DIR --users all|FILE`` lands here. The users (data order for ``all``, file
order for a FILE of ids) are cut into shards of ``shard_size``; shard ``k`` holds users
``k*shard_size …`` and is written as ``shard-<k:05d>.tar`` with, per user, ``<key>.json`` (user id,
tokens, prompts, texts) and ``<key>.png`` (``key``: the user id, percent-quoted so that it has no
dot or slash, which WebDataset would read as an extension or a folder).

Generation runs in Lightning's predict loop (:class:`BatchGenerationModule`): one predict batch is
one shard, and shard ``k`` belongs to global rank ``k % world_size``, so under DDP no two processes
write the same file. Each user's texts and image come from
:func:`pmg.generator.generate.generate_for_users` (the image noise seeded per user from
``generator.sample.seed``, :func:`pmg.generator.generate.user_seed`; greedy texts), and the tar members carry fixed metadata, so a rerun
writes byte-identical shards.

Resuming: a finished shard is renamed into place (:func:`pmg.atomic.atomic_file`) and then
appended to its rank's journal ``.progress-rank<r>.jsonl``; after the loop, rank 0 merges the
journals into ``manifest.json`` (the config, then per shard: file, users, size, sha256). A rerun
keeps every shard that the manifest or a journal lists with the same config, the same users and
a file of that size and sha256, and generates the others.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import lightning as L
import torch
from torch.utils.data import DataLoader

from pmg.atomic import atomic_file
from pmg.config import load_config
from pmg.data.dataset_stage import load_prepared
from pmg.data.format import InteractionData
from pmg.data.split import Split
from pmg.generator.config import GeneratorConfig
from pmg.generator.generate import ImageChoice, generate_for_users
from pmg.generator.prompts import token_rows, user_prompts
from pmg.quantize.stage import UserTokens, load_user_tokens
from pmg.runs import RunDirectory, RunError, fingerprint
from pmg.tasks.generation import run_generators, run_image_choice
from pmg.tasks.state import lookup_user
from prefgen import ImagePreferenceAdapter, TextPreferenceAdapter

__all__ = ["MANIFEST", "BatchGenerationModule", "BatchSummary", "ShardPlan", "generate_batch", "read_users", "shard_name"]

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
_JOURNAL = ".progress-rank{rank}.jsonl"


def shard_name(index: int) -> str:
    """The file name of shard ``index``: ``shard-00000.tar``."""
    return f"shard-{index:05d}.tar"


def read_users(run: RunDirectory, data: InteractionData, users: str) -> list[int]:
    """The data indices of ``users``: "all" (every data user, in data order) or a file of user
    ids, one a line (blank lines skipped), in file order; ``RunError`` naming the file, line and
    id of an unknown or repeated id."""
    if users == "all":
        return list(range(data.num_users))
    path = Path(users)
    if not path.is_file():
        raise RunError(f"--users takes 'all' or a file of user ids, one a line; {path} is not a file")
    index = {user_id: n for n, user_id in enumerate(data.user_ids)}
    chosen: list[int] = []
    seen: dict[str, int] = {}
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        user_id = line.strip()
        if not user_id:
            continue
        if user_id in seen:
            raise RunError(f"{path}:{line_number}: user {user_id!r} is already on line {seen[user_id]}; list each user once")
        if user_id not in index:
            try:
                lookup_user(run, data, user_id)  # raises, with the message `pmg generate --user` gives
            except RunError as err:
                raise RunError(f"{path}:{line_number}: {err}") from None
        seen[user_id] = line_number
        chosen.append(index[user_id])
    if not chosen:
        raise RunError(f"{path} lists no user ids")
    return chosen


@dataclass(frozen=True)
class ShardPlan:
    """Which users each shard holds: shard ``k`` is ``users[k*shard_size : (k+1)*shard_size]``
    (data user indices); ``user_ids`` are their ids, in the same order."""

    users: tuple[int, ...]
    user_ids: tuple[str, ...]
    shard_size: int

    @property
    def num_shards(self) -> int:
        return -(-len(self.users) // self.shard_size)

    def shard(self, index: int) -> slice:
        """The positions (into ``users``) of shard ``index``."""
        return slice(index * self.shard_size, min((index + 1) * self.shard_size, len(self.users)))

    def owned(self, rank: int, world_size: int) -> list[int]:
        """The shards global rank ``rank`` of ``world_size`` writes: by index, so no two write one file."""
        return list(range(rank, self.num_shards, world_size))


@dataclass(frozen=True)
class BatchSummary:
    """What a batch generation did: users and shards in the plan, those generated now (the rest
    were kept from an earlier run), the seconds the predict loop took, and where the manifest is."""

    users: int
    shards: int
    generated_users: int
    generated_shards: int
    seconds: float
    manifest: Path
    global_rank: int = 0  # of the process that returned it; every rank gets the whole job's figures

    @property
    def users_per_second(self) -> float:
        return self.generated_users / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        kept = self.shards - self.generated_shards
        return (f"generated {self.generated_users} users in {self.generated_shards} shards ({kept} of {self.shards} kept from "
                f"an earlier run) in {self.seconds:.1f} s: {self.users_per_second:.2f} users/s; manifest: {self.manifest}")


def _member(name: str, payload: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    # Fixed metadata: the shard's bytes depend on its users' content alone, not on when or by whom it was written.
    info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = 0, 0o644, 0, 0, "", ""
    return info, io.BytesIO(payload)


def _write_shard(path: Path, samples: Sequence[tuple[str, bytes, bytes | None]]) -> None:
    """``samples``: (key, json bytes, png bytes or None) per user, written in order into a tar renamed into place."""
    with atomic_file(path) as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for key, record, png in samples:
            tar.addfile(*_member(f"{key}.json", record))
            if png is not None:
                tar.addfile(*_member(f"{key}.png", png))


def _digest(path: Path) -> tuple[int, str]:
    """(size in bytes, sha256 hex) of ``path``."""
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return path.stat().st_size, sha.hexdigest()


def _recorded_entries(out: Path, config_fingerprint: str) -> dict[str, dict[str, Any]]:
    """{file: entry} of the shards the manifest and the journals in ``out`` list for this config
    (a journal's torn last line, from a kill mid-append, is skipped)."""
    entries: dict[str, dict[str, Any]] = {}
    manifest = out / MANIFEST
    if manifest.is_file():
        try:
            saved = json.loads(manifest.read_text())
        except json.JSONDecodeError:
            saved = {}  # a manifest is written atomically; an unreadable one was not ours: regenerate
        if saved.get("config", {}).get("fingerprint") == config_fingerprint:
            entries.update({entry["file"]: entry for entry in saved.get("shards", [])})
    for journal in sorted(out.glob(_JOURNAL.format(rank="*"))):
        for line in journal.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if entry.pop("config", None) == config_fingerprint:
                entries[entry["file"]] = entry
    return entries


def _finished(out: Path, plan: ShardPlan, index: int, entries: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Shard ``index``'s entry if its file is complete for ``plan`` (listed with these users, size and sha256), else None."""
    entry = entries.get(shard_name(index))
    path = out / shard_name(index)
    if entry is None or entry.get("users") != list(plan.user_ids[plan.shard(index)]) or not path.is_file():
        return None
    return entry if _digest(path) == (entry.get("size"), entry.get("sha256")) else None


class BatchGenerationModule(L.LightningModule):
    """Lightning's predict loop over shards: ``predict_step`` generates one shard's users
    (``batch_size`` per generator call), writes the shard and records it in this rank's journal.

    The adapters are submodules, so Lightning moves them to the rank's device. The predict
    dataloader is this rank's unfinished shards (:meth:`ShardPlan.owned`), one per batch.
    """

    def __init__(self, out: Path, plan: ShardPlan, config_fingerprint: str, data: InteractionData, split: Split,
                 config: GeneratorConfig, tokens: UserTokens, text_adapter: TextPreferenceAdapter | None,
                 image_adapter: ImagePreferenceAdapter | None, batch_size: int, image_choice: ImageChoice | None = None) -> None:
        super().__init__()
        self.out, self.plan, self.config_fingerprint = out, plan, config_fingerprint
        self.data, self.split, self.config, self.tokens = data, split, config, tokens
        self.text_adapter, self.image_adapter = text_adapter, image_adapter
        # Not a submodule: it scores the decoded (PIL) images, on the CPU, whichever device generates.
        self.image_choice = image_choice
        self.batch_size = batch_size
        self.generated: list[int] = []  # this rank's shards generated now
        # perf_counter at the loop's start, after every rank has loaded the models and joined (Lightning skips
        # on_predict_start when no rank has a shard left: then the caller's start stands).
        self.started = time.perf_counter()

    def on_predict_start(self) -> None:
        self.started = time.perf_counter()

    def pending(self) -> list[int]:
        """This rank's shards that no earlier run finished (each kept one's file is hashed once, here)."""
        entries = _recorded_entries(self.out, self.config_fingerprint)
        rank, world = self.trainer.global_rank, self.trainer.world_size
        return [k for k in self.plan.owned(rank, world) if _finished(self.out, self.plan, k, entries) is None]

    def predict_dataloader(self) -> DataLoader:
        # batch_size=None: each batch is one shard index, uncollated. Lightning's distributed sampler is
        # off (the trainer's use_distributed_sampler): the shards are split by index already.
        return DataLoader(self.pending(), batch_size=None, shuffle=False)

    def predict_step(self, shard: int, batch_idx: int) -> None:
        positions = self.plan.shard(int(shard))
        users = list(self.plan.users[positions])
        prompts = user_prompts(self.data, self.config, self.tokens, self.split.train, users=users)
        results = generate_for_users(self.data, self.config, users=users, text_fragments=prompts.text,
                                     image_fragments=prompts.image, keywords=prompts.subject_words,
                                     text_adapter=self.text_adapter, image_adapter=self.image_adapter,
                                     history=self.split.train, image_choice=self.image_choice, batch_size=self.batch_size)
        rows = token_rows(self.data, self.tokens, users)
        samples = []
        for user_id, row, result in zip(self.plan.user_ids[positions], rows, results, strict=True):
            record = {"user_id": user_id, "tokens": self.tokens.prompt_fragment(row) if row is not None else None,
                      "text_prompt": result.text_prompt, "image_prompt": result.image_prompt, "texts": result.texts}
            png = None
            if result.image is not None:
                buffer = io.BytesIO()
                result.image.save(buffer, format="PNG")
                png = buffer.getvalue()
            samples.append((quote(user_id, safe="-_").replace(".", "%2E"),
                            json.dumps(record, indent=2, ensure_ascii=False).encode("utf-8"), png))
        path = self.out / shard_name(int(shard))
        _write_shard(path, samples)
        size, sha = _digest(path)
        entry = {"file": path.name, "users": list(self.plan.user_ids[positions]), "size": size, "sha256": sha,
                 "config": self.config_fingerprint}
        # Appended after the rename: a journal line always names a complete file; fsync-ed so a kill keeps it.
        with (self.out / _JOURNAL.format(rank=self.trainer.global_rank)).open("a") as journal:
            journal.write(json.dumps(entry) + "\n")
            journal.flush()
            os.fsync(journal.fileno())
        self.generated.append(int(shard))


def _write_manifest(out: Path, plan: ShardPlan, config: dict[str, Any]) -> None:
    """Rank 0, after every rank finished: ``manifest.json`` from the journals and the previous manifest,
    then the journals, shards beyond the plan and temporary files of killed writes removed."""
    entries = _recorded_entries(out, config["fingerprint"])
    shards = [entries[shard_name(k)] for k in range(plan.num_shards) if shard_name(k) in entries]
    missing = plan.num_shards - len(shards)
    if missing:
        raise RunError(f"{missing} of {plan.num_shards} shards in {out} were not written; rerun to generate them")
    with atomic_file(out / MANIFEST) as tmp:
        tmp.write_text(json.dumps({"format": MANIFEST_FORMAT, "config": config, "shards": shards}, indent=2) + "\n")
    for leftover in _leftovers(out, plan):
        leftover.unlink(missing_ok=True)


def _leftovers(out: Path, plan: ShardPlan) -> Iterator[Path]:
    yield from out.glob(_JOURNAL.format(rank="*"))
    yield from out.glob(".shard-*.tar.*.tmp")  # atomic_file's temporary files of a killed process
    planned = {shard_name(k) for k in range(plan.num_shards)}
    yield from (path for path in out.glob("shard-*.tar") if path.name not in planned)


def generate_batch(run: RunDirectory, out: Path, users: str, *, shard_size: int = 256, batch_size: int = 16,
                   sft: bool = False, trainer: dict[str, str | int] | None = None,
                   module_hook: Callable[[BatchGenerationModule], None] | None = None) -> BatchSummary:
    """Every user of ``users`` ("all" or a file of ids, :func:`read_users`) generated into shards
    in ``out`` with the run's adapters (:func:`pmg.tasks.generation.run_generators`), resuming from
    the shards an earlier run finished; the caller holds the run's lock if ``out`` is in the run.

    The trainer takes accelerator, devices, num_nodes, strategy and progress bar from the
    generator stage's ``trainer`` config; ``trainer`` ({field: value}, e.g. ``{"devices": "2",
    "strategy": "ddp"}``) replaces some of them. ``module_hook`` (tests) is called with the module
    before the predict loop.
    """
    if shard_size < 1 or batch_size < 1:
        raise RunError(f"--shard-size and --batch-size must be >= 1, got {shard_size} and {batch_size}")
    run.require("generator")
    config = load_config(GeneratorConfig, run.stage_dir("generator") / "config.yaml")
    data, split = load_prepared(run)
    chosen = read_users(run, data, users)
    plan = ShardPlan(tuple(chosen), tuple(data.user_ids[u] for u in chosen), shard_size)
    stage, text_adapter, image_adapter = run_generators(run, sft=sft)
    choice = run_image_choice(run, stage) if image_adapter is not None else None
    settings = {"adapters": stage, "adapters_fingerprint": run.require(stage)["fingerprint"], "seed": config.sample.seed,
                "shard_size": shard_size, "batch_size": batch_size}
    manifest_config = {"run": str(run.root.resolve()), "users": len(chosen), **settings, "fingerprint": fingerprint(settings)}
    out.mkdir(parents=True, exist_ok=True)
    module = BatchGenerationModule(out, plan, manifest_config["fingerprint"], data, split, config, load_user_tokens(run),
                                   text_adapter, image_adapter, batch_size, choice)
    if module_hook is not None:
        module_hook(module)
    options = replace(config.trainer, **{name: str(value) if name == "devices" else value for name, value in (trainer or {}).items()})
    if options.strategy.startswith(("ddp_spawn", "ddp_fork", "ddp_notebook")):
        # Their workers hold the generated shards' records and the main process is outside their group:
        # the manifest is written by rank 0 of processes that each ran this function (ddp, torchrun, SLURM).
        raise RunError(f"pmg generate --users runs under strategy 'ddp' (one process per device), not {options.strategy!r}")
    predictor = L.Trainer(accelerator=options.accelerator, devices=options.devices_value(), num_nodes=options.num_nodes,
                          strategy=options.strategy, enable_progress_bar=options.enable_progress_bar, logger=False,
                          enable_model_summary=False, enable_checkpointing=False, use_distributed_sampler=False,
                          default_root_dir=str(out))
    module.started = time.perf_counter()
    predictor.predict(module, return_predictions=False)
    mine = torch.tensor([sum(len(plan.users[plan.shard(k)]) for k in module.generated), len(module.generated)])
    # A sum over ranks, and the barrier that every rank's shards are written before rank 0 lists them.
    users_done, shards_done = (int(n) for n in predictor.strategy.reduce(mine, reduce_op="sum"))
    seconds = time.perf_counter() - module.started
    if predictor.is_global_zero:
        _write_manifest(out, plan, manifest_config)
    return BatchSummary(len(chosen), plan.num_shards, users_done, shards_done, seconds, out / MANIFEST, predictor.global_rank)
