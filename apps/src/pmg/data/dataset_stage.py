"""The "data" stage: build or convert the configured dataset into the run directory and split it.

Every later stage reads ``<run>/data/dataset`` (the one format), ``<run>/data/split.json`` and
``<run>/data/user_roles.json`` (which users are trained on, selected on, judged: ``pmg.data.user_roles``).
``<run>/data/load_report.txt`` says what the load saw; with ``on_bad_rows: skip``,
``<run>/data/rejected.csv`` lists every interaction row set aside (file, line, reason); with
``on_bad_images: skip``, ``<run>/data/skipped_images.csv`` every item image left out (item id,
image, reason).
"""

from __future__ import annotations

import dataclasses
import shutil
import warnings
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from pmg.atomic import atomic_file
from pmg.data.catalog import CatalogConfig, write_catalog
from pmg.data.format import InteractionData, ItemKind, read_dataset, write_dataset
from pmg.data.images import ImageFit, OnBadImages, image_is_square, write_skipped_images
from pmg.data.records import Duplicates, OnBadRows, write_rejected_rows
from pmg.data.sources import TableMapping, load_amazon2023, load_movielens, load_table
from pmg.data.split import Split, SplitScheme, kcore, temporal_split
from pmg.data.user_roles import UserRoles, UserRolesConfig, assign_user_roles
from pmg.runs import RunDirectory, RunError, RunWarning, stage_fingerprint
from pmg.stages import Stage, StageResult

__all__ = ["DatasetConfig", "DatasetKind", "ItemKindConfig", "SplitConfig", "prepare_dataset", "load_prepared", "load_user_roles",
           "USER_ROLES_FILE", "REJECTED_FILE", "SKIPPED_IMAGES_FILE", "DATA_STAGE"]

USER_ROLES_FILE = "user_roles.json"
REJECTED_FILE = "rejected.csv"
SKIPPED_IMAGES_FILE = "skipped_images.csv"


class DatasetKind(StrEnum):
    """Where the data comes from (``data.kind``; :class:`DatasetConfig` says what each reads)."""

    catalog = "catalog"
    pmg = "pmg"
    movielens = "movielens"
    amazon2023 = "amazon2023"
    table = "table"


@dataclass
class SplitConfig:
    """``scheme``: how interactions are split by time (``SplitScheme``); ``user_k``/``item_k``:
    the k-core filter applied first (1: none)."""

    scheme: SplitScheme = SplitScheme.leave_last_out
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    user_k: int = 1
    item_k: int = 1

    def validate(self) -> None:
        if self.scheme not in tuple(SplitScheme):  # a config built directly in Python
            raise ValueError(f"data.split.scheme {self.scheme!r} is not one of {[s.value for s in SplitScheme]}")
        if self.user_k < 1 or self.item_k < 1:
            raise ValueError("split.user_k and split.item_k must be >= 1")


@dataclass
class ItemKindConfig:
    """Overrides of what the dataset's items are (``data.item_kind``; :class:`pmg.data.format.ItemKind`),
    written into ``<run>/data/dataset/dataset.json`` so that every stage, the zoo's captions
    included, reads the same words. None keeps the loader's (MovieLens: "a movie poster"; a
    table or the catalog: an item's ``category`` names its subject, else "a product").
    ``subject_attribute: ""`` says that no attribute names an item's subject.
    """

    subject: str | None = None
    subject_attribute: str | None = None
    caption_attributes: list[str] | None = None
    audience: str | None = None

    def is_set(self) -> bool:
        return any(value is not None for value in dataclasses.astuple(self))

    def applied(self, kind: ItemKind) -> ItemKind:
        """``kind`` with the fields set here replaced."""
        changes = {name: value for name, value in dataclasses.asdict(self).items() if value is not None}
        if "subject_attribute" in changes:
            changes["subject_attribute"] = changes["subject_attribute"] or None
        if "caption_attributes" in changes:
            changes["caption_attributes"] = tuple(changes["caption_attributes"])
        return dataclasses.replace(kind, **changes)

    def validate(self) -> None:
        for name in ("subject", "audience"):
            value = getattr(self, name)
            if value is not None and not value.strip():
                raise ValueError(f"data.item_kind.{name} must be a phrase or null (the loader's), got {value!r}")


@dataclass
class DatasetConfig:
    """Where the data comes from. ``kind`` picks the reader:

    ``catalog`` (the embedded generator, ``catalog`` settings), ``pmg`` (a folder in the
    dataset format at ``path``), ``movielens`` (a MovieLens folder at ``path``, optional
    ``images`` folder of posters), ``amazon2023`` (reviews JSONL at ``path``, ``meta`` JSONL,
    optional ``images``), ``table`` (interactions CSV/JSONL at ``path``, optional ``items``
    file, ``mapping`` of columns). ``users``: the shares of users held out for evaluation and
    for model selection (``pmg.data.user_roles``). ``duplicates``: what a repeated (user, item,
    timestamp) row does (``pmg.data.records.Duplicates``). ``on_bad_rows``: ``error`` stops at an
    interaction row that cannot be used, ``skip`` sets it aside in ``<run>/data/rejected.csv``
    (``pmg.data.records.OnBadRows``). ``on_bad_images``: ``error`` stops at an item image that is
    missing, not an image, truncated or damaged, naming the file; ``skip`` keeps the item without
    image (the missing-image mask) and lists the file and why in ``<run>/data/skipped_images.csv``
    (``pmg.data.images.OnBadImages``). ``image_fit``: how every model reads an image of any aspect
    ratio into a square: ``pad`` (letterboxed on white, the default), ``squash`` (stretched) or
    ``crop`` (centre square) (``pmg.data.images.ImageFit``); the dataset records it when some
    image is not square, so the zoo's and the feature caches built with another fit are not reused.
    ``item_kind``: what the items are, over the loader's (:class:`ItemKindConfig`; a ``table``'s
    items are the catalog's kind unless it says).
    """

    kind: DatasetKind = DatasetKind.catalog
    path: str | None = None
    images: str | None = None
    meta: str | None = None
    items: str | None = None
    mapping: TableMapping = field(default_factory=TableMapping)
    duplicates: Duplicates = Duplicates.error
    on_bad_rows: OnBadRows = OnBadRows.error
    on_bad_images: OnBadImages = OnBadImages.error
    image_fit: ImageFit = ImageFit.pad
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    users: UserRolesConfig = field(default_factory=UserRolesConfig)
    item_kind: ItemKindConfig = field(default_factory=ItemKindConfig)

    def validate(self) -> None:
        if self.kind not in tuple(DatasetKind):  # a config built directly in Python
            raise ValueError(f"data.kind {self.kind!r} is not one of {[k.value for k in DatasetKind]}")
        if self.kind != DatasetKind.catalog and not self.path:
            raise ValueError(f"data.path is required for data.kind '{self.kind}'")
        if self.kind == DatasetKind.amazon2023 and not self.meta:
            raise ValueError("data.meta (the meta_<category>.jsonl file) is required for amazon2023")
        for key, kind in (("duplicates", Duplicates), ("on_bad_rows", OnBadRows), ("on_bad_images", OnBadImages), ("image_fit", ImageFit)):
            if getattr(self, key) not in tuple(kind):  # a config built directly in Python
                raise ValueError(f"data.{key} {getattr(self, key)!r} is not one of {[m.value for m in kind]}")
        self.catalog.validate()
        self.split.validate()
        self.users.validate()
        self.item_kind.validate()


def _load_source(config: DatasetConfig) -> InteractionData:
    path = Path(config.path or "")
    rows = {"duplicates": config.duplicates, "on_bad_rows": config.on_bad_rows, "on_bad_images": config.on_bad_images}
    if config.kind == DatasetKind.pmg:
        return read_dataset(path, **rows)
    if config.kind == DatasetKind.movielens:
        return load_movielens(path, posters=config.images, **rows)
    if config.kind == DatasetKind.amazon2023:
        return load_amazon2023(path, config.meta or "", images=config.images, **rows)
    return load_table(path, items=config.items, images=config.images, mapping=config.mapping, **rows)


def _is_current(config: DatasetConfig, run: RunDirectory, stage_fp: str) -> bool:
    """Whether the data stage's result can be reused. ``on_bad_rows`` and ``on_bad_images`` are not
    in the fingerprint (a load without bad rows or images gives the same data either way), so a
    result that set rows or images aside is not reused once the setting is back to ``error``:
    that load must stop."""
    if not run.is_current("data", stage_fp):
        return False
    record = run.record("data") or {}
    rows_ok = config.on_bad_rows is OnBadRows.skip or not record.get("rejected_rows", 0)
    images_ok = config.on_bad_images is OnBadImages.skip or not record.get("skipped_images", 0)
    return rows_ok and images_ok


def _recorded_image_fit(data: InteractionData, fit: ImageFit) -> ImageFit | None:
    """``fit`` when some item image is not square, else None: a square image reads the same
    under every fit, so a dataset of square images records none and keeps the zoo cache key
    and feature cache entries it had before fits existed."""
    return fit if any(item.image is not None and not image_is_square(item.image) for item in data.items) else None


def prepare_dataset(
    config: DatasetConfig, run: RunDirectory, *, upstream: str = "", force: bool = False
) -> tuple[InteractionData, Split, str]:
    """Write the dataset and its split into ``run``'s data stage, unless already current.

    Returns the data, the split and the stage fingerprint (later stages hash it in).
    """
    config.validate()
    stage_fp = stage_fingerprint("data", config, upstream)
    out = run.stage_dir("data")
    if force or not _is_current(config, run, stage_fp):
        run.invalidate("data")
        filtered = config.split.user_k > 1 or config.split.item_k > 1
        rewritten = filtered or config.item_kind.is_set()
        if config.kind == DatasetKind.catalog:
            # Without filtering the generated folder is the final dataset; with it, a filtered copy is.
            generated = out / ("generated" if rewritten else "dataset")
            write_catalog(generated, config.catalog)
            data = read_dataset(generated)
        else:
            data = _load_source(config)
        # What the loader set aside and dropped; the dataset is read back below, with a fresh report.
        rejected, duplicates = data.report.rejected, data.report.duplicate_interactions_dropped
        skipped_images = data.report.skipped_images
        if filtered:
            data = kcore(data, config.split.user_k, config.split.item_k)
        data.item_kind = config.item_kind.applied(data.item_kind)
        if rewritten or config.kind != DatasetKind.catalog:
            data.image_fit = _recorded_image_fit(data, config.image_fit)
            write_dataset(data, out / "dataset")
            # The loader decoded every image; the dataset holds byte-identical copies.
            data = read_dataset(out / "dataset", check_images=False)
        shutil.rmtree(out / "generated", ignore_errors=True)
        split = temporal_split(
            data, config.split.scheme, val_fraction=config.split.val_fraction, test_fraction=config.split.test_fraction
        )
        split.save(out / "split.json")
        roles = assign_user_roles(data.num_users, config.users)
        roles.save(out / USER_ROLES_FILE, data)
        data.report.rejected, data.report.duplicate_interactions_dropped = rejected, duplicates
        data.report.skipped_images = skipped_images
        write_rejected_rows(out / REJECTED_FILE, rejected)
        write_skipped_images(out / SKIPPED_IMAGES_FILE, skipped_images)
        if rejected:
            warnings.warn(f"data: {len(rejected)} interaction rows of {config.path} set aside (on_bad_rows: skip), "
                          f"each with its file, line and reason in {out / REJECTED_FILE}", RunWarning, stacklevel=2)
        if skipped_images:
            warnings.warn(f"data: {len(skipped_images)} unreadable item images of {config.path} left out (on_bad_images: skip), "
                          f"each with its item, file and reason in {out / SKIPPED_IMAGES_FILE}", RunWarning, stacklevel=2)
        with atomic_file(out / "load_report.txt") as tmp:
            tmp.write_text(data.report.summary() + "\n")
        run.mark_complete("data", stage_fp, {
            "users": data.num_users, "items": data.num_items, "interactions": data.num_interactions,
            "rejected_rows": len(rejected), "skipped_images": len(skipped_images),
            "train": len(split.train), "val": len(split.val), "test": len(split.test),
            **{f"{role}_users": len(roles.of(role)) for role in ("training", "selection", "evaluation")},
        })
        return data, split, stage_fp
    data, split = load_prepared(run)
    return data, split, stage_fp


def load_prepared(run: RunDirectory) -> tuple[InteractionData, Split]:
    """The data stage's dataset and split from ``run`` (``RunError`` if the stage has not run)."""
    run.require("data")
    out = run.stage_dir("data")
    # Every image was decoded when the stage loaded it, and ``require`` has just checked each
    # file's SHA-256 against the stage's record: decoding them all again in every stage is waste.
    return read_dataset(out / "dataset", check_images=False), Split.load(out / "split.json")


def load_user_roles(run: RunDirectory, data: InteractionData) -> UserRoles:
    """The data stage's user roles of ``run`` (``RunError`` saying what to rerun if missing or damaged)."""
    run.require("data")
    try:
        return UserRoles.load(run.stage_dir("data") / USER_ROLES_FILE, data)
    except ValueError as err:
        raise RunError(f"{err}; rerun `pmg pipeline --run {run.root} --force data` (every later stage follows)") from err


def _run_data_stage(config: DatasetConfig, run: RunDirectory, upstream: str, force: bool) -> StageResult:
    reused = not force and _is_current(config, run, stage_fingerprint("data", config, upstream))
    data, split, stage_fp = prepare_dataset(config, run, upstream=upstream, force=force)
    record = run.record("data") or {}
    rejected, skipped = record.get("rejected_rows", 0), record.get("skipped_images", 0)
    set_aside = f" ({rejected} rows rejected: {run.stage_dir('data') / REJECTED_FILE})" if rejected else ""
    set_aside += f" ({skipped} unreadable images skipped: {run.stage_dir('data') / SKIPPED_IMAGES_FILE})" if skipped else ""
    return StageResult(
        stage_fp,
        f"{data.num_users} users, {data.num_items} items, {data.num_interactions} interactions{set_aside}; "
        f"split {split.scheme}: train {len(split.train)}, val {len(split.val)}, test {len(split.test)}; users: "
        f"{config.users.evaluation_fraction:.0%} evaluation, {config.users.selection_fraction:.0%} selection, the rest training",
        reused,
    )


DATA_STAGE = Stage("data", "data", DatasetConfig, _run_data_stage, "build or convert the dataset and split it")
