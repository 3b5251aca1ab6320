"""The one on-disk dataset format every stage reads, and its in-memory form.

A dataset is a directory::

    dataset.json        {"format": "pmg-dataset", "version": 1, "name": ..., "source": ...,
                         "image_fit": "pad" | "squash" | "crop" (optional, see below),
                         "attributes": {"colour": {"modality": "visual", "values": [...],
                                                   "aliases": {value: [word, ...]} (optional),
                                                   "hidden": true (optional: ground truth only)}, ...},
                         "item_kind": {"subject": "a movie poster", "subject_attribute": null,
                                       "caption_attributes": ["genres"], "audience": "A viewer"}
                                      (optional, each key too: what an item is, :class:`ItemKind`)}
    items.jsonl         one item per line:
                        {"item_id": str, "title": str, "description": str,
                         "image": "images/<file>" | null, "attributes": {name: value}}
    interactions.csv    header user_id,item_id,timestamp,rating,review
                        timestamp: integer seconds; rating: number or empty; review: text or empty
    users.jsonl         optional ground truth, one user per line:
                        {"user_id": str, "tastes": {attribute name: value}}
    images/             item images (any format Pillow reads), paths relative to the dataset

``item_kind`` is optional and was added within version 1: a folder without it reads as the
embedded catalog's kind (subjects "a <category>", else "a product"), and a reader that does not
know it ignores it, so neither way of reading breaks and the version stays 1.

Ids are strings on disk and contiguous integers in memory; the index → id lists are the
saved id maps. Items may lack an image or text: they keep a missing-modality mask and are
counted in the load report, never dropped.

``image_fit`` says how models read the images into a square (``pmg.data.images.ImageFit``); it
is written only when some image is not square (a square image reads the same under every
fit), and a dataset without it is read with the default, ``pad``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pmg.atomic import atomic_directory
from pmg.data.images import ImageChecks, ImageFit, OnBadImages, SkippedImage
from pmg.data.records import (
    DatasetError,
    Duplicates,
    OnBadRows,
    RejectedRow,
    RowRejections,
    parse_number,
    read_delimited,
    read_json_lines,
    read_text,
)

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "INTERACTION_COLUMNS",
    "VALUE_SEPARATOR",
    "DatasetError",
    "AttributeSpec",
    "DEFAULT_SUBJECT",
    "Item",
    "ItemKind",
    "LoadReport",
    "InteractionData",
    "read_dataset",
    "write_dataset",
]

FORMAT_NAME = "pmg-dataset"
FORMAT_VERSION = 1
INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp", "rating", "review")
# Between the values of a set-valued item attribute (MovieLens genres "Action|Crime|Thriller").
VALUE_SEPARATOR = "|"


@dataclass(frozen=True)
class AttributeSpec:
    """A ground-truth attribute: which modality shows it and its possible values.

    ``aliases``: per value, the words texts use for it (the first is the word a prompt uses;
    the catalog's pattern ``stripes`` is written "striped"); a value without aliases is its own
    word. ``hidden``: ground truth only, never in any item text or metadata a model may read
    (the sparse catalog's shade): the judge and the evaluation read it, keyword extraction
    and prompts do not.
    """

    modality: str
    values: tuple[str, ...]
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)
    hidden: bool = False

    def words(self, value: str) -> tuple[str, ...]:
        """Every word that names ``value`` in a text: its aliases first, then the value itself."""
        forms = (*self.aliases.get(value, ()), value)
        return tuple(dict.fromkeys(forms))

    def prompt_word(self, value: str) -> str:
        """The word a prompt uses for ``value``."""
        return self.words(value)[0]

    def to_json(self) -> dict:
        """The ``dataset.json`` form (``aliases`` and ``hidden`` only when set)."""
        out: dict = {"modality": self.modality, "values": list(self.values)}
        if self.aliases:
            out["aliases"] = {value: list(words) for value, words in self.aliases.items()}
        if self.hidden:
            out["hidden"] = True
        return out

    @classmethod
    def from_json(cls, spec: dict) -> AttributeSpec:
        """Inverse of :meth:`to_json`."""
        aliases = {str(value): tuple(str(w) for w in words) for value, words in (spec.get("aliases") or {}).items()}
        return cls(modality=spec["modality"], values=tuple(spec["values"]), aliases=aliases, hidden=bool(spec.get("hidden", False)))


# The image subject of an item whose dataset says no other: what the embedded catalog's prompts have always said.
DEFAULT_SUBJECT = "a product"


@dataclass(frozen=True)
class ItemKind:
    """What a dataset's items are, in the words its prompts and captions use (``dataset.json``'s
    ``item_kind``; every field optional, the defaults are the embedded catalog's).

    ``subject``: the image subject's noun phrase ("a movie poster"); None: not said, so the
    generator's ``generator.image.default_subject``, else :data:`DEFAULT_SUBJECT`, stands in
    (:func:`pmg.data.subjects.image_subject` states the order). ``subject_attribute``: the item
    attribute that names an item's own subject ("category": "dress" → "a dress"); None: every
    item's subject is ``subject``. ``caption_attributes``: item attributes whose values
    (``|``-separated, as MovieLens genres) describe an item in image captions and prompts
    ("a movie poster of Heat (1995), action, crime"). ``audience``: who would love the item in the
    text prompt of a user without tokens ("A viewer would love:"); None: "A shopper".
    """

    subject: str | None = None
    subject_attribute: str | None = "category"
    caption_attributes: tuple[str, ...] = ()
    audience: str | None = None

    def __post_init__(self) -> None:
        for name in ("subject", "audience"):
            value = getattr(self, name)
            if value is not None and not value.strip():
                raise ValueError(f"item_kind.{name} must be a non-empty phrase or null, got {value!r}")
        object.__setattr__(self, "caption_attributes", tuple(self.caption_attributes))

    def to_json(self) -> dict:
        """The ``dataset.json`` form: only the fields that differ from the defaults (the catalog's: ``{}``)."""
        default = ItemKind()
        out: dict = {}
        for name in ("subject", "subject_attribute", "caption_attributes", "audience"):
            value = getattr(self, name)
            if value != getattr(default, name):
                out[name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_json(cls, spec: dict) -> ItemKind:
        """Inverse of :meth:`to_json`; absent fields take the defaults."""
        unknown = sorted(set(spec) - {"subject", "subject_attribute", "caption_attributes", "audience"})
        if unknown:
            raise ValueError(f"unknown item_kind keys {unknown}")
        default = cls()
        if not isinstance(spec.get("caption_attributes", []), list):
            raise ValueError(f"caption_attributes must be a list of attribute names, got {spec['caption_attributes']!r}")
        return cls(subject=spec.get("subject", default.subject),
                   subject_attribute=spec.get("subject_attribute", default.subject_attribute),
                   caption_attributes=tuple(str(a) for a in spec.get("caption_attributes", default.caption_attributes)),
                   audience=spec.get("audience", default.audience))


@dataclass
class Item:
    """One catalog item. ``image`` is absolute once loaded (or None if the item has none)."""

    item_id: str
    title: str = ""
    description: str = ""
    image: Path | None = None
    attributes: dict[str, str] = field(default_factory=dict)

    def value_set(self, attribute: str) -> tuple[str, ...]:
        """The item's values of a set-valued attribute, written ``|``-separated (MovieLens genres:
        ``"Action|Crime"`` → ``("Action", "Crime")``), stripped, empty parts dropped, in order;
        ``()`` when the item has no such attribute. A single value is a set of one."""
        parts = (part.strip() for part in self.attributes.get(attribute, "").split(VALUE_SEPARATOR))
        return tuple(dict.fromkeys(part for part in parts if part))

    @property
    def text(self) -> str:
        """Title and description joined: the item's text modality."""
        return ". ".join(part for part in (self.title.strip(), self.description.strip()) if part)


@dataclass
class LoadReport:
    """What a loader saw: counts of everything kept, repaired or flagged."""

    items: int = 0
    users: int = 0
    interactions: int = 0
    items_without_image: int = 0
    items_without_text: int = 0
    duplicate_interactions_dropped: int = 0
    notes: list[str] = field(default_factory=list)
    # Interaction rows set aside under on_bad_rows: skip, each with its file, line and reason.
    rejected: list[RejectedRow] = field(default_factory=list)
    # Item images left out under on_bad_images: skip (each item kept, without image), with the reason.
    skipped_images: list[SkippedImage] = field(default_factory=list)

    def summary(self) -> str:
        parts = [
            f"{self.users} users",
            f"{self.items} items",
            f"{self.interactions} interactions",
            f"{self.items_without_image} items without image",
            f"{self.items_without_text} items without text",
        ]
        if self.duplicate_interactions_dropped:
            parts.append(f"{self.duplicate_interactions_dropped} duplicate interactions dropped")
        if self.rejected:
            parts.append(f"{len(self.rejected)} rows rejected")
        if self.skipped_images:
            parts.append(f"{len(self.skipped_images)} unreadable images skipped")
        return ", ".join(parts) + "".join(f"\n  note: {n}" for n in self.notes)


@dataclass
class InteractionData:
    """Users, items and interactions with contiguous integer ids.

    Arrays are aligned, one entry per interaction, ``N`` entries:
    ``user`` int64 [N] in [0, U), ``item`` int64 [N] in [0, I), ``timestamp`` int64 [N],
    ``rating`` float32 [N] (NaN when unknown), ``review`` list of N strings ('' when none).
    ``user_ids`` [U] and ``items`` [I] map indices back to the raw ids.
    ``user_tastes`` holds ground-truth tastes per attribute, [U] values each, when known.
    ``image_fit``: how models read the images into a square (``ImageFit``); None when the
    dataset records none (every image square, or an older dataset): readers use ``pad``.
    ``item_kind``: what the items are, in the words of prompts and captions (:class:`ItemKind`).
    """

    name: str
    user_ids: list[str]
    items: list[Item]
    user: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    rating: np.ndarray
    review: list[str]
    attributes: dict[str, AttributeSpec] = field(default_factory=dict)
    user_tastes: dict[str, list[str]] | None = None
    source: str = ""
    report: LoadReport = field(default_factory=LoadReport)
    image_fit: ImageFit | None = None
    item_kind: ItemKind = field(default_factory=ItemKind)

    def __post_init__(self) -> None:
        self.user = np.asarray(self.user, dtype=np.int64)
        self.item = np.asarray(self.item, dtype=np.int64)
        self.timestamp = np.asarray(self.timestamp, dtype=np.int64)
        self.rating = np.asarray(self.rating, dtype=np.float32)
        n = len(self.user)
        lengths = {len(self.item), len(self.timestamp), len(self.rating), len(self.review)}
        if lengths != {n}:
            raise ValueError(f"interaction arrays differ in length: user {n}, others {sorted(lengths)}")
        if n and (self.user.min() < 0 or self.user.max() >= len(self.user_ids)):
            raise ValueError("user index out of range of user_ids")
        if n and (self.item.min() < 0 or self.item.max() >= len(self.items)):
            raise ValueError("item index out of range of items")
        if self.user_tastes is not None:
            for name, values in self.user_tastes.items():
                if len(values) != len(self.user_ids):
                    raise ValueError(f"user_tastes[{name!r}] has {len(values)} entries for {len(self.user_ids)} users")

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.items)

    @property
    def num_interactions(self) -> int:
        return len(self.user)

    @property
    def has_image(self) -> np.ndarray:
        """Bool [I]: the item has an image file."""
        return np.array([it.image is not None for it in self.items], dtype=bool)

    @property
    def has_text(self) -> np.ndarray:
        """Bool [I]: the item has a title or description."""
        return np.array([bool(it.text) for it in self.items], dtype=bool)

    def user_index(self) -> dict[str, int]:
        return {u: i for i, u in enumerate(self.user_ids)}

    def item_index(self) -> dict[str, int]:
        return {it.item_id: i for i, it in enumerate(self.items)}

    def taste_labels(self, attribute: str) -> np.ndarray:
        """Int64 [U]: each user's ground-truth taste for ``attribute`` as an index into its values."""
        if self.user_tastes is None or attribute not in self.user_tastes:
            raise KeyError(f"dataset {self.name!r} has no ground-truth taste {attribute!r}")
        values = self.attributes[attribute].values
        lookup = {v: i for i, v in enumerate(values)}
        return np.array([lookup[v] for v in self.user_tastes[attribute]], dtype=np.int64)

    def item_labels(self, attribute: str) -> np.ndarray:
        """Int64 [I]: each item's ``attribute`` as an index into its values (-1 when unknown)."""
        if attribute not in self.attributes:
            raise KeyError(f"dataset {self.name!r} has no attribute {attribute!r}")
        lookup = {v: i for i, v in enumerate(self.attributes[attribute].values)}
        return np.array([lookup.get(it.attributes.get(attribute, ""), -1) for it in self.items], dtype=np.int64)

    def subset(self, rows: np.ndarray) -> InteractionData:
        """The same users and items with only the interactions at ``rows`` (int or bool index)."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        return InteractionData(
            name=self.name,
            user_ids=self.user_ids,
            items=self.items,
            user=self.user[rows],
            item=self.item[rows],
            timestamp=self.timestamp[rows],
            rating=self.rating[rows],
            review=[self.review[i] for i in rows],
            attributes=self.attributes,
            user_tastes=self.user_tastes,
            source=self.source,
            report=self.report,
            image_fit=self.image_fit,
            item_kind=self.item_kind,
        )

    @property
    def image_read_fit(self) -> ImageFit:
        """The fit every reader of this dataset's images uses: ``image_fit``, or ``pad`` when None."""
        return self.image_fit or ImageFit.pad

    def refresh_report(self) -> LoadReport:
        """Recount the report's totals from the data (keeps its notes and repair counts)."""
        self.report.items = self.num_items
        self.report.users = self.num_users
        self.report.interactions = self.num_interactions
        self.report.items_without_image = int((~self.has_image).sum())
        self.report.items_without_text = int((~self.has_text).sum())
        return self.report


# ---------------------------------------------------------------- writing


def write_dataset(
    data: InteractionData,
    out: str | Path,
    *,
    image_bytes: Sequence[tuple[str, bytes] | None] | None = None,
) -> Path:
    """Write ``data`` in the dataset format to directory ``out``, atomically.

    Images are copied from each item's ``image`` path into ``out/images``, or, when
    ``image_bytes`` is given ([I] entries of ``(file name, encoded bytes)`` or None), written
    from memory. The directory appears complete or not at all.
    """
    out = Path(out)
    if image_bytes is not None and len(image_bytes) != data.num_items:
        raise ValueError(f"image_bytes has {len(image_bytes)} entries for {data.num_items} items")
    with atomic_directory(out) as tmp:
        (tmp / "images").mkdir()
        image_names: list[str | None] = []
        for index, it in enumerate(data.items):
            if image_bytes is not None:
                entry = image_bytes[index]
                if entry is None:
                    image_names.append(None)
                    continue
                name = f"images/{entry[0]}"
                (tmp / name).write_bytes(entry[1])
            elif it.image is None:
                image_names.append(None)
                continue
            else:
                source = Path(it.image)
                if not source.is_file():
                    raise DatasetError(source, f"image of item {it.item_id!r} does not exist")
                # Index-based names: raw item ids may hold characters a file name cannot.
                name = f"images/{index:06d}{source.suffix.lower()}"
                (tmp / name).write_bytes(source.read_bytes())
            image_names.append(name)
        meta = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "name": data.name,
            "source": data.source,
            "attributes": {k: spec.to_json() for k, spec in data.attributes.items()},
            **({"image_fit": data.image_fit.value} if data.image_fit is not None else {}),
            "counts": {"users": data.num_users, "items": data.num_items, "interactions": data.num_interactions},
        }
        # Only when it says something: the catalog's dataset.json stays as it always was.
        if kind := data.item_kind.to_json():
            meta["item_kind"] = kind
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        with open(tmp / "items.jsonl", "w", encoding="utf-8") as f:
            for it, image in zip(data.items, image_names, strict=True):
                row = {
                    "item_id": it.item_id,
                    "title": it.title,
                    "description": it.description,
                    "image": image,
                    "attributes": it.attributes,
                }
                f.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")
        with open(tmp / "interactions.csv", "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(INTERACTION_COLUMNS)
            for u, i, t, r, text in zip(data.user, data.item, data.timestamp, data.rating, data.review, strict=True):
                writer.writerow(
                    [data.user_ids[u], data.items[i].item_id, int(t), "" if math.isnan(r) else f"{r:g}", text]
                )
        if data.user_tastes is not None:
            with open(tmp / "users.jsonl", "w", encoding="utf-8") as f:
                names = sorted(data.user_tastes)
                for idx, uid in enumerate(data.user_ids):
                    tastes = {n: data.user_tastes[n][idx] for n in names}
                    f.write(json.dumps({"user_id": uid, "tastes": tastes}, sort_keys=True) + "\n")
    return out


# ---------------------------------------------------------------- reading


def read_dataset(root: str | Path, *, check_images: bool = True, duplicates: Duplicates | str = Duplicates.error,
                 on_bad_rows: OnBadRows | str = OnBadRows.error, on_bad_images: OnBadImages | str = OnBadImages.error) -> InteractionData:
    """Read a dataset directory written by ``write_dataset`` (or by hand, following the format).

    Args:
        root: the dataset directory.
        check_images: decode every referenced image (``pmg.data.images.verify_image``): a missing,
            non-image, truncated or damaged file goes to ``on_bad_images``.
        duplicates: ``error`` (default) or ``drop`` for repeated (user, item, timestamp) rows (``Duplicates``).
        on_bad_rows: ``error`` (default) or ``skip``: interaction rows that cannot be used are set
            aside in ``report.rejected`` (``OnBadRows``).
        on_bad_images: ``error`` (default) or ``skip``: an item whose image cannot be read is
            kept without image and listed in ``report.skipped_images`` (``OnBadImages``).

    Raises:
        DatasetError: a missing file, a wrong format version, a malformed line, an unknown
            id, a missing or unreadable image; the message names the file and line.
    """
    root = Path(root)
    duplicates = Duplicates(duplicates)
    if not root.is_dir():
        raise DatasetError(root, "dataset directory does not exist")
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise DatasetError(meta_path, "missing: not a pmg dataset directory (convert it with `pmg data convert`)")
    try:
        meta = json.loads(read_text(meta_path))
    except json.JSONDecodeError as err:
        raise DatasetError(meta_path, f"not valid JSON: {err.msg}", line=err.lineno) from err
    if meta.get("format") != FORMAT_NAME:
        raise DatasetError(meta_path, f"format is {meta.get('format')!r}, expected {FORMAT_NAME!r}")
    if meta.get("version") != FORMAT_VERSION:
        raise DatasetError(meta_path, f"format version {meta.get('version')!r} is not supported (expected {FORMAT_VERSION})")
    attributes = {name: AttributeSpec.from_json(spec) for name, spec in meta.get("attributes", {}).items()}
    try:
        item_kind = ItemKind.from_json(meta.get("item_kind") or {})
    except (TypeError, ValueError, AttributeError) as err:
        raise DatasetError(meta_path, f"item_kind: {err}") from err
    report = LoadReport()
    rejections = RowRejections(on_bad_rows)
    image_checks = ImageChecks(on_bad_images)
    try:
        image_fit = ImageFit(meta["image_fit"]) if meta.get("image_fit") is not None else None
    except ValueError as err:
        raise DatasetError(meta_path, f"image_fit {meta['image_fit']!r} is not one of {[f.value for f in ImageFit]}") from err

    items_path = root / "items.jsonl"
    items: list[Item] = []
    item_index: dict[str, int] = {}
    for number, row in read_json_lines(items_path, required=("item_id",)):
        item_id = str(row["item_id"])
        if item_id in item_index:
            raise DatasetError(items_path, f"duplicate item_id {item_id!r}", line=number, column="item_id")
        item_index[item_id] = len(items)
        image_path: Path | None = None
        if row.get("image"):
            image_path = (root / str(row["image"])).resolve()
            if check_images:
                image_path = image_checks.checked(image_path, item_id=item_id, owner=items_path, line=number)
        items.append(
            Item(
                item_id=item_id,
                title=str(row.get("title") or ""),
                description=str(row.get("description") or ""),
                image=image_path,
                attributes={str(k): str(v) for k, v in (row.get("attributes") or {}).items()},
            )
        )

    inter_path = root / "interactions.csv"
    user_index: dict[str, int] = {}
    columns: dict[str, list] = {"user": [], "item": [], "timestamp": [], "rating": [], "review": []}
    seen: dict[tuple[int, int, int], int] = {}
    for number, row in read_delimited(inter_path, required=INTERACTION_COLUMNS[:3], rejections=rejections):
        parsed = None
        with rejections.row():
            parsed = _interaction_fields(inter_path, number, row, item_index)
        if parsed is None:
            continue
        item, t, rating = parsed
        # A duplicate repeats a user seen before; a user only gets an index with a row that is kept.
        key = (user_index.get(row["user_id"], -1), item, t)
        if key in seen:
            if duplicates is Duplicates.error:
                rejections.reject(DatasetError(
                    inter_path,
                    f"duplicate interaction (same user, item and timestamp as line {seen[key]}); "
                    "remove it or read with duplicates='drop'",
                    line=number,
                ))
                continue
            report.duplicate_interactions_dropped += 1
            continue
        u = user_index.setdefault(row["user_id"], len(user_index))
        seen[(u, item, t)] = number
        columns["user"].append(u)
        columns["item"].append(item)
        columns["timestamp"].append(t)
        columns["rating"].append(rating)
        columns["review"].append(row.get("review", ""))
    if not columns["user"]:
        raise DatasetError(inter_path, "no interactions")
    user_ids = list(user_index)

    tastes: dict[str, list[str]] | None = None
    users_path = root / "users.jsonl"
    if users_path.is_file():
        by_user = {str(r["user_id"]): r["tastes"] for _, r in read_json_lines(users_path, required=("user_id", "tastes"))}
        unknown = [u for u in user_ids if u not in by_user]
        if unknown:
            raise DatasetError(users_path, f"no ground truth for {len(unknown)} users, e.g. {unknown[0]!r}")
        names = sorted({k for tastes_of in by_user.values() for k in tastes_of})
        tastes = {n: [str(by_user[u].get(n, "")) for u in user_ids] for n in names}

    data = InteractionData(
        name=str(meta.get("name", root.name)),
        user_ids=user_ids,
        items=items,
        user=np.array(columns["user"]),
        item=np.array(columns["item"]),
        timestamp=np.array(columns["timestamp"]),
        rating=np.array(columns["rating"]),
        review=columns["review"],
        attributes=attributes,
        user_tastes=tastes,
        source=str(meta.get("source", "")),
        report=report,
        image_fit=image_fit,
        item_kind=item_kind,
    )
    report.rejected = rejections.rows
    report.skipped_images = image_checks.skipped
    data.refresh_report()
    return data


def _interaction_fields(path: Path, number: int, row: dict[str, str], item_index: dict[str, int]) -> tuple[int, int, float]:
    """(item index, timestamp, rating) of one ``interactions.csv`` row; ``DatasetError`` naming the problem."""
    item_id = row["item_id"]
    if item_id not in item_index:
        raise DatasetError(path, f"unknown item_id {item_id!r} (not in items.jsonl)", line=number, column="item_id")
    t = int(parse_number(path, number, "timestamp", row["timestamp"], int))
    raw_rating = row.get("rating", "")
    rating = math.nan if raw_rating == "" else float(parse_number(path, number, "rating", raw_rating, float))
    return item_index[item_id], t, rating
