"""Converters from public dataset layouts into ``InteractionData``.

- MovieLens: ml-latest(-small) ``ratings.csv``/``movies.csv``/``tags.csv``, ml-100k
  ``u.data``/``u.item``, ml-1m ``ratings.dat``/``movies.dat``; an optional folder of posters
  named ``{movieId}.jpg`` (or .png) gives the image modality.
- Amazon Reviews 2023: a reviews JSONL and an item-metadata JSONL, images from a local
  folder named ``{parent_asin}.jpg``.
- A generic table: any CSV or JSONL of interactions (and optionally of items), with a
  column mapping.

Items without an image or text keep a missing-modality mask and are counted in the load
report; nothing is dropped silently. An interaction row that cannot be used (an unknown item
id, a field that is not a number) stops the load, or with ``on_bad_rows="skip"`` is set aside
in ``report.rejected`` with its file, line and reason. Every image is decoded at load
(``pmg.data.images``): one that is missing, not an image, truncated or damaged stops the load,
or with ``on_bad_images="skip"`` leaves its item without image, listed in
``report.skipped_images``.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pmg.data.format import InteractionData, Item, ItemKind, LoadReport
from pmg.data.images import ImageChecks, OnBadImages
from pmg.data.records import (
    DatasetError,
    Duplicates,
    OnBadRows,
    RowRejections,
    parse_number,
    read_delimited,
    read_json_lines,
)

__all__ = ["AMAZON_ITEM_KIND", "MOVIELENS_ITEM_KIND", "load_movielens", "load_amazon2023", "TableMapping", "load_table"]

# What the items of each source are (pmg.data.format.ItemKind): a movie's image is its poster,
# described by its genres; an Amazon item's is a product photo. The generic table keeps the
# catalog's kind (an item's "category" attribute names its subject) unless told otherwise.
MOVIELENS_ITEM_KIND = ItemKind(subject="a movie poster", subject_attribute=None, caption_attributes=("genres",), audience="A viewer")
AMAZON_ITEM_KIND = ItemKind(subject="a product photo", subject_attribute=None, caption_attributes=("main_category",))

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
_ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)


def _find_image(folder: Path | None, stem: str, checks: ImageChecks) -> Path | None:
    """``folder/{stem}.jpg`` (or another image suffix) when there is one and it reads (``checks``)."""
    if folder is None:
        return None
    for suffix in _IMAGE_SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return checks.checked(candidate, item_id=stem)
    return None


class _Builder:
    """Collects interactions with raw ids, then assigns contiguous indices in first-seen order."""

    def __init__(self, source: Path, items: dict[str, Item], duplicates: Duplicates | str, rejections: RowRejections,
                 image_checks: ImageChecks) -> None:
        self.source = source
        self.items = items
        self.duplicates = Duplicates(duplicates)
        self.rejections = rejections
        self.report = LoadReport(rejected=rejections.rows, skipped_images=image_checks.skipped)
        self.rows: list[tuple[str, str, int, float, str]] = []
        self.seen: dict[tuple[str, str, int], int] = {}

    def add(self, path: Path, line: int, user: str, item: str, timestamp: int, rating: float, review: str) -> None:
        """Keep one interaction; ``DatasetError`` for an unknown item or a duplicate under ``duplicates="error"``."""
        if item not in self.items:
            raise DatasetError(path, f"unknown item id {item!r} (not in the item file)", line=line)
        key = (user, item, timestamp)
        if key in self.seen:
            if self.duplicates is Duplicates.error:
                raise DatasetError(
                    path,
                    f"duplicate interaction (same user, item and timestamp as line {self.seen[key]}); "
                    "remove it or load with duplicates='drop'",
                    line=line,
                )
            self.report.duplicate_interactions_dropped += 1
            return
        self.seen[key] = line
        self.rows.append((user, item, timestamp, rating, review))

    def build(self, name: str, item_kind: ItemKind) -> InteractionData:
        if not self.rows:
            raise DatasetError(self.source, "no interactions found")
        user_index: dict[str, int] = {}
        item_ids = list(self.items)
        item_index = {item_id: i for i, item_id in enumerate(item_ids)}
        users = [user_index.setdefault(r[0], len(user_index)) for r in self.rows]
        data = InteractionData(
            name=name,
            user_ids=list(user_index),
            items=[self.items[i] for i in item_ids],
            user=np.array(users),
            item=np.array([item_index[r[1]] for r in self.rows]),
            timestamp=np.array([r[2] for r in self.rows]),
            rating=np.array([r[3] for r in self.rows]),
            review=[r[4] for r in self.rows],
            source=str(self.source),
            report=self.report,
            item_kind=item_kind,
        )
        data.refresh_report()
        return data


# ---------------------------------------------------------------- MovieLens


def load_movielens(
    root: str | Path, *, posters: str | Path | None = None, duplicates: Duplicates | str = Duplicates.error, max_tags: int = 8,
    on_bad_rows: OnBadRows | str = OnBadRows.error, on_bad_images: OnBadImages | str = OnBadImages.error,
) -> InteractionData:
    """Read a MovieLens release (latest/latest-small, 100k or 1m, detected from its files).

    Item text is the title, the genres and the most frequent user tags; a user's tags on a
    movie become the review of that rating. With ``posters``, ``{movieId}.jpg`` is the image.
    Items are :data:`MOVIELENS_ITEM_KIND`: "a movie poster", described by its genres.
    ``on_bad_rows``: what a rating row that cannot be used does (``OnBadRows``); ``on_bad_images``:
    what a poster that cannot be read does (``OnBadImages``).
    """
    root = Path(root)
    poster_dir = Path(posters) if posters is not None else None
    if poster_dir is not None and not poster_dir.is_dir():
        raise DatasetError(poster_dir, "posters folder does not exist: give a folder of {movieId}.jpg files (data.images=DIR; "
                                       "`pmg data posters` writes stand-ins)")
    poster_files = _Posters(poster_dir, ImageChecks(on_bad_images))
    if (root / "ratings.csv").is_file() or (root / "movies.csv").is_file():
        return _movielens_latest(root, poster_files, duplicates, max_tags, RowRejections(on_bad_rows))
    if (root / "u.data").is_file():
        return _movielens_100k(root, poster_files, duplicates, RowRejections(on_bad_rows))
    if (root / "ratings.dat").is_file():
        return _movielens_1m(root, poster_files, duplicates, RowRejections(on_bad_rows))
    raise DatasetError(root, "not a MovieLens folder: expected ratings.csv+movies.csv, u.data+u.item, or ratings.dat+movies.dat")


@dataclass
class _Posters:
    """A MovieLens load's poster folder (None: no posters) and how its unreadable files are handled."""

    folder: Path | None
    checks: ImageChecks


def _movie_item(movie_id: str, title: str, genres: list[str], tags: list[str], posters: _Posters) -> Item:
    description = "Genres: " + ", ".join(genres) + "." if genres else ""
    if tags:
        description += (" " if description else "") + "Tags: " + ", ".join(tags) + "."
    attributes = {"genres": "|".join(genres)} if genres else {}
    return Item(
        item_id=movie_id, title=title.strip(), description=description,
        image=_find_image(posters.folder, movie_id, posters.checks), attributes=attributes,
    )


def _movielens_latest(root: Path, posters: _Posters, duplicates: Duplicates | str, max_tags: int,
                      rejections: RowRejections) -> InteractionData:
    tags_by_movie: dict[str, Counter[str]] = defaultdict(Counter)
    tags_by_rating: dict[tuple[str, str], list[str]] = defaultdict(list)
    tags_path = root / "tags.csv"
    if tags_path.is_file():
        for _, row in read_delimited(tags_path, required=("userId", "movieId", "tag", "timestamp")):
            tag = row["tag"].strip()
            tags_by_movie[row["movieId"]][tag.lower()] += 1
            tags_by_rating[(row["userId"], row["movieId"])].append(tag)
    movies_path = root / "movies.csv"
    items: dict[str, Item] = {}
    for line, row in read_delimited(movies_path, required=("movieId", "title", "genres")):
        movie_id = row["movieId"]
        if movie_id in items:
            raise DatasetError(movies_path, f"duplicate movieId {movie_id!r}", line=line, column="movieId")
        genres = [] if row["genres"] == "(no genres listed)" else row["genres"].split("|")
        top_tags = [t for t, _ in tags_by_movie[movie_id].most_common(max_tags)]
        items[movie_id] = _movie_item(movie_id, row["title"], genres, top_tags, posters)
    ratings_path = root / "ratings.csv"
    builder = _Builder(root, items, duplicates, rejections, posters.checks)
    for line, row in read_delimited(ratings_path, required=("userId", "movieId", "rating", "timestamp"), rejections=rejections):
        with rejections.row():
            builder.add(
                ratings_path, line, row["userId"], row["movieId"],
                int(parse_number(ratings_path, line, "timestamp", row["timestamp"], int)),
                float(parse_number(ratings_path, line, "rating", row["rating"], float)),
                "; ".join(tags_by_rating.get((row["userId"], row["movieId"]), [])),
            )
    return builder.build(root.name, MOVIELENS_ITEM_KIND)


def _movielens_100k(root: Path, posters: _Posters, duplicates: Duplicates | str, rejections: RowRejections) -> InteractionData:
    item_path = root / "u.item"
    fields = ["movie_id", "title", "release", "video_release", "url", *_ML100K_GENRES]
    items: dict[str, Item] = {}
    for line, row in read_delimited(item_path, required=("movie_id", "title"), delimiter="|", fieldnames=fields, encoding="latin-1"):
        genres = [g for g in _ML100K_GENRES if row[g] == "1" and g != "unknown"]
        if row["movie_id"] in items:
            raise DatasetError(item_path, f"duplicate movie id {row['movie_id']!r}", line=line)
        items[row["movie_id"]] = _movie_item(row["movie_id"], row["title"], genres, [], posters)
    data_path = root / "u.data"
    builder = _Builder(root, items, duplicates, rejections, posters.checks)
    fields = ["user_id", "item_id", "rating", "timestamp"]
    for line, row in read_delimited(data_path, required=fields, delimiter="\t", fieldnames=fields, rejections=rejections):
        with rejections.row():
            builder.add(
                data_path, line, row["user_id"], row["item_id"],
                int(parse_number(data_path, line, "timestamp", row["timestamp"], int)),
                float(parse_number(data_path, line, "rating", row["rating"], float)), "",
            )
    return builder.build(root.name, MOVIELENS_ITEM_KIND)


def _movielens_1m(root: Path, posters: _Posters, duplicates: Duplicates | str, rejections: RowRejections) -> InteractionData:
    movies_path = root / "movies.dat"
    items: dict[str, Item] = {}
    fields = ["movie_id", "title", "genres"]
    for line, row in read_delimited(movies_path, required=fields, delimiter="::", fieldnames=fields, encoding="latin-1"):
        if row["movie_id"] in items:
            raise DatasetError(movies_path, f"duplicate movie id {row['movie_id']!r}", line=line)
        items[row["movie_id"]] = _movie_item(row["movie_id"], row["title"], row["genres"].split("|"), [], posters)
    ratings_path = root / "ratings.dat"
    builder = _Builder(root, items, duplicates, rejections, posters.checks)
    fields = ["user_id", "movie_id", "rating", "timestamp"]
    for line, row in read_delimited(ratings_path, required=fields, delimiter="::", fieldnames=fields, encoding="latin-1",
                                    rejections=rejections):
        with rejections.row():
            builder.add(
                ratings_path, line, row["user_id"], row["movie_id"],
                int(parse_number(ratings_path, line, "timestamp", row["timestamp"], int)),
                float(parse_number(ratings_path, line, "rating", row["rating"], float)), "",
            )
    return builder.build(root.name, MOVIELENS_ITEM_KIND)


# ---------------------------------------------------------------- Amazon Reviews 2023


def load_amazon2023(
    reviews: str | Path, meta: str | Path, *, images: str | Path | None = None, duplicates: Duplicates | str = Duplicates.error,
    on_bad_rows: OnBadRows | str = OnBadRows.error, on_bad_images: OnBadImages | str = OnBadImages.error,
) -> InteractionData:
    """Read Amazon Reviews 2023 JSONL files (one category's ``<cat>.jsonl`` and ``meta_<cat>.jsonl``).

    Items are keyed by ``parent_asin``; text is the title, features and description; the
    image is ``{parent_asin}.jpg`` in ``images`` when present. Timestamps (milliseconds)
    become seconds; a review is its title and text. Items are :data:`AMAZON_ITEM_KIND` ("a product
    photo", described by its main category). ``on_bad_rows``: what a review line that
    cannot be used does (``OnBadRows``); ``on_bad_images``: what an image that cannot be read
    does (``OnBadImages``).
    """
    reviews, meta = Path(reviews), Path(meta)
    image_dir = Path(images) if images is not None else None
    if image_dir is not None and not image_dir.is_dir():
        raise DatasetError(image_dir, "images folder does not exist")
    image_checks = ImageChecks(on_bad_images)
    items: dict[str, Item] = {}
    for line, row in read_json_lines(meta, required=("parent_asin",)):
        asin = str(row["parent_asin"])
        if asin in items:
            raise DatasetError(meta, f"duplicate parent_asin {asin!r}", line=line, column="parent_asin")
        description = " ".join(_strings(row.get("features")) + _strings(row.get("description")))
        attributes = {"main_category": str(row["main_category"])} if row.get("main_category") else {}
        if row.get("store"):
            attributes["store"] = str(row["store"])
        items[asin] = Item(
            item_id=asin, title=str(row.get("title") or "").strip(), description=description.strip(),
            image=_find_image(image_dir, asin, image_checks), attributes=attributes,
        )
    rejections = RowRejections(on_bad_rows)
    builder = _Builder(reviews, items, duplicates, rejections, image_checks)
    for line, row in read_json_lines(reviews, required=("user_id", "parent_asin", "timestamp"), rejections=rejections):
        with rejections.row():
            _add_review(builder, reviews, line, row)
    return builder.build(reviews.stem, AMAZON_ITEM_KIND)


def _add_review(builder: _Builder, reviews: Path, line: int, row: dict) -> None:
    stamp = row["timestamp"]
    if not isinstance(stamp, int | float) or isinstance(stamp, bool):
        raise DatasetError(reviews, f"timestamp {stamp!r} is not a number", line=line, column="timestamp")
    rating = row.get("rating")
    if rating is not None and (not isinstance(rating, int | float) or isinstance(rating, bool)):
        raise DatasetError(reviews, f"rating {rating!r} is not a number", line=line, column="rating")
    text = " ".join(s for s in (str(row.get("title") or "").strip(), str(row.get("text") or "").strip()) if s)
    builder.add(
        reviews, line, str(row["user_id"]), str(row["parent_asin"]), int(stamp) // 1000,
        math.nan if rating is None else float(rating), text,
    )


def _strings(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value if v]
    return [str(value)]


# ---------------------------------------------------------------- generic table


@dataclass
class TableMapping:
    """Which columns of a user's CSV/JSONL files hold which field of the format."""

    user: str = "user_id"
    item: str = "item_id"
    timestamp: str = "timestamp"
    rating: str | None = "rating"
    review: str | None = "review"
    item_title: str = "title"
    item_description: str | None = "description"
    item_image: str | None = "image"
    extra_item_attributes: list[str] = field(default_factory=list)


def _table_rows(path: Path, required: list[str], rejections: RowRejections | None = None) -> Iterator[tuple[int, dict]]:
    if path.suffix.lower() in (".jsonl", ".json"):
        yield from read_json_lines(path, required=required, rejections=rejections)
    elif path.suffix.lower() in (".csv", ".tsv"):
        yield from read_delimited(path, required=required, delimiter="\t" if path.suffix.lower() == ".tsv" else ",",
                                  rejections=rejections)
    else:
        raise DatasetError(path, "unsupported file type: use .csv, .tsv or .jsonl")


def load_table(
    interactions: str | Path,
    *,
    items: str | Path | None = None,
    images: str | Path | None = None,
    mapping: TableMapping | None = None,
    duplicates: Duplicates | str = Duplicates.error,
    on_bad_rows: OnBadRows | str = OnBadRows.error,
    on_bad_images: OnBadImages | str = OnBadImages.error,
    item_kind: ItemKind | None = None,
) -> InteractionData:
    """Read any CSV/TSV/JSONL interaction table (and optional item table) through ``mapping``.

    ``item_kind``: what the items are (:class:`pmg.data.format.ItemKind`); None: the default
    kind (an item's ``category`` attribute, when mapped, names its subject, else "a product").

    Without an item table, items are the distinct ids of the interactions (no text, no
    image: both flagged missing). Image paths in the item table are relative to ``images``
    (or to the item file's folder). ``on_bad_rows``: what an interaction row that cannot be
    used does (``OnBadRows``); ``on_bad_images``: what an image that cannot be read does (``OnBadImages``).
    """
    m = mapping or TableMapping()
    inter_path = Path(interactions)
    image_checks = ImageChecks(on_bad_images)
    catalog: dict[str, Item] = {}
    if items is not None:
        items_path = Path(items)
        base = Path(images) if images is not None else items_path.parent
        for line, row in _table_rows(items_path, [m.item]):
            item_id = str(row[m.item])
            if item_id in catalog:
                raise DatasetError(items_path, f"duplicate item id {item_id!r}", line=line, column=m.item)
            image = None
            if m.item_image and row.get(m.item_image):
                image = image_checks.checked((base / str(row[m.item_image])).resolve(), item_id=item_id, owner=items_path, line=line)
            catalog[item_id] = Item(
                item_id=item_id,
                title=str(row.get(m.item_title) or ""),
                description=str(row.get(m.item_description) or "") if m.item_description else "",
                image=image,
                attributes={a: str(row[a]) for a in m.extra_item_attributes if row.get(a) not in (None, "")},
            )
    required = [m.user, m.item, m.timestamp]
    rejections = RowRejections(on_bad_rows)
    rows = list(_table_rows(inter_path, required, rejections))
    if items is None:
        for _, row in rows:
            catalog.setdefault(str(row[m.item]), Item(item_id=str(row[m.item])))
    builder = _Builder(inter_path, catalog, duplicates, rejections, image_checks)
    for line, row in rows:
        with rejections.row():
            rating_raw = row.get(m.rating) if m.rating else None
            rating = math.nan if rating_raw in (None, "") else float(parse_number(inter_path, line, m.rating or "", rating_raw, float))
            builder.add(
                inter_path, line, str(row[m.user]), str(row[m.item]),
                int(parse_number(inter_path, line, m.timestamp, row[m.timestamp], int)),
                rating, str(row.get(m.review) or "") if m.review else "",
            )
    return builder.build(inter_path.stem, item_kind or ItemKind())
