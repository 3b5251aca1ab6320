"""The embedded catalog: a seeded fashion-like multimodal dataset with known ground truth.

Items have visual attributes (category silhouette, colour, pattern) that only the image
shows well and textual attributes (material, style, brand) that only the text names.
Each user has a visual taste (colour, pattern) and a textual taste (material, style),
drawn independently, so the two modalities carry different signals. Interactions are
sampled without replacement from a softmax over taste affinity + item popularity + noise;
ratings rise with affinity; reviews mention what the user liked.

Two profiles (``CatalogConfig.profile``): ``default`` (long histories, every interaction
taste-driven) and ``sparse`` (short histories, part of them popularity-driven, and a
``shade`` taste that only the images show). ``docs/catalog.md`` describes both.

Because the ground truth is written beside the data, later stages can measure
personalization exactly. The same config and seed give byte-identical files.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pmg.data.format import AttributeSpec, InteractionData, Item, write_dataset

__all__ = [
    "CatalogConfig",
    "SparseProfileConfig",
    "CATALOG_PROFILES",
    "CatalogProfile",
    "CATEGORIES",
    "COLOURS",
    "PATTERNS",
    "PATTERN_ALIASES",
    "MATERIALS",
    "STYLES",
    "BRANDS",
    "SHADES",
    "shade_colour",
    "render_item_image",
    "generate_catalog",
    "write_catalog",
]

# RGB chosen to stay far apart so that a small classifier (and a person) can tell them apart.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "orange": (255, 127, 14),
    "yellow": (238, 210, 30),
    "green": (44, 160, 44),
    "blue": (31, 90, 200),
    "purple": (128, 60, 170),
    "pink": (247, 129, 191),
    "brown": (120, 72, 36),
}
PATTERNS = ("plain", "stripes", "dots", "checks")
PATTERN_WORDS = {"plain": "solid", "stripes": "striped", "dots": "polka-dot", "checks": "checked"}
# Every word the catalog's texts use for a pattern, the prompt word (PATTERN_WORDS) first.
PATTERN_ALIASES = {"plain": ("solid", "plain"), "stripes": ("striped",), "dots": ("polka-dot", "dotted"), "checks": ("checked",)}
MATERIALS = ("cotton", "silk", "wool", "denim", "leather", "linen")
STYLES = ("casual", "formal", "sporty", "vintage", "bohemian", "minimalist")
BRANDS = ("Alder", "Birchwood", "Cobalt", "Dune", "Ember", "Fjord", "Grove", "Harbor", "Iris", "Juniper", "Kestrel", "Loom")
class CatalogProfile(StrEnum):
    """The catalog's profile (``data.catalog.profile``; see the module docstring)."""

    default = "default"
    sparse = "sparse"


CATALOG_PROFILES = tuple(profile.value for profile in CatalogProfile)
# The sparse profile's hidden visual taste. The factors keep all 16 shaded colours apart: the
# closest pair of different colours (dark blue / dark purple) is 23 CIELAB units apart (the
# unshaded palette's closest, blue / purple, 30) and each colour's two shades at least 28.
SHADES = ("light", "dark")
_DARK_SCALE = 0.72
_LIGHT_MIX = 0.38

# Silhouettes as polygons in unit coordinates (x right, y down); extra shapes drawn by
# name in ``_draw_silhouette``. Distinct outlines make category a visual attribute.
_SILHOUETTES: dict[str, list[tuple[float, float]]] = {
    "t-shirt": [(0.30, 0.15), (0.40, 0.10), (0.60, 0.10), (0.70, 0.15), (0.92, 0.32), (0.80, 0.45),
                (0.72, 0.38), (0.72, 0.90), (0.28, 0.90), (0.28, 0.38), (0.20, 0.45), (0.08, 0.32)],
    "dress": [(0.40, 0.08), (0.60, 0.08), (0.63, 0.36), (0.88, 0.92), (0.12, 0.92), (0.37, 0.36)],
    "trousers": [(0.28, 0.08), (0.72, 0.08), (0.78, 0.92), (0.57, 0.92), (0.50, 0.38), (0.43, 0.92), (0.22, 0.92)],
    "skirt": [(0.34, 0.25), (0.66, 0.25), (0.86, 0.78), (0.14, 0.78)],
    "shoe": [(0.10, 0.50), (0.42, 0.52), (0.48, 0.32), (0.62, 0.32), (0.66, 0.52), (0.90, 0.62),
             (0.92, 0.78), (0.10, 0.78)],
    "bag": [(0.18, 0.40), (0.82, 0.40), (0.88, 0.88), (0.12, 0.88)],
    "hat": [(0.32, 0.22), (0.68, 0.22), (0.74, 0.60), (0.26, 0.60)],
    "jacket": [(0.30, 0.10), (0.43, 0.08), (0.50, 0.22), (0.57, 0.08), (0.70, 0.10), (0.88, 0.28), (0.94, 0.88),
               (0.80, 0.88), (0.75, 0.42), (0.75, 0.92), (0.25, 0.92), (0.25, 0.42), (0.20, 0.88), (0.06, 0.88),
               (0.12, 0.28)],
}
CATEGORIES = tuple(_SILHOUETTES)
_BACKGROUND = (236, 236, 236)

# Templates that name the visual attributes (colour, pattern) and templates that do not:
# real product texts name the colour only sometimes, and the catalog keeps it that way so
# that the text modality carries mostly the textual tastes (``visual_words_in_text``).
_TITLE_TEMPLATES_VISUAL = (
    "{brand} {colour} {pattern_word} {material} {category}",
    "{style_cap} {material} {category} in {colour}",
    "{colour_cap} {pattern_word} {category} by {brand}",
    "{brand} {style} {category}, {material}, {colour}",
)
_TITLE_TEMPLATES_PLAIN = (
    "{brand} {style} {material} {category}",
    "{style_cap} {material} {category} by {brand}",
    "{material_cap} {category}, {style} cut",
    "{brand} {material} {category} for a {style} look",
)
_DESCRIPTION_TEMPLATES_VISUAL = (
    "A {style} {category} made of {material}. The {colour} {pattern_phrase} gives it character.",
    "Cut from soft {material}, this {category} has a {style} look and a {colour} {pattern_phrase}.",
    "{brand} presents a {colour} {category} with a {pattern_phrase}, in {material} for a {style} wardrobe.",
    "Our {style} {category}: {material}, {colour}, {pattern_phrase}.",
)
_DESCRIPTION_TEMPLATES_PLAIN = (
    "A {style} {category} made of {material}.",
    "Cut from soft {material}, this {category} has a {style} look.",
    "{brand} presents a {category} in {material} for a {style} wardrobe.",
    "Our {style} {category} in {material}, made to last.",
)
_PATTERN_PHRASES = {"plain": "plain finish", "stripes": "striped pattern", "dots": "dotted pattern", "checks": "checked pattern"}
# Reviews name liked attributes through these phrases only: the shade has none, so no review names it.
_LIKE_PHRASES = {
    "colour": ("Love the {v} colour.", "The {v} is exactly my shade.", "Great {v} tone."),
    "pattern": ("The {w} pattern is lovely.", "Really like the {w} look.", "Nice {w} design."),
    "material": ("The {v} feels great.", "Good quality {v}.", "I like the {v} fabric."),
    "style": ("Very {v}, just my style.", "Perfect for a {v} outfit.", "Fits my {v} taste."),
}
_NEUTRAL_REVIEWS = ("It is okay.", "Not really for me.", "Fine, nothing special.", "Arrived on time.")


@dataclass
class SparseProfileConfig:
    """What only the ``sparse`` profile reads (``data.catalog.sparse.*``)."""

    # History lengths: lognormal with this median and log-spread, at least ``min_interactions``
    # (3: leave-last-out then keeps one training row beside the validation and test rows).
    median_interactions: float = 6.0
    history_spread: float = 0.8
    min_interactions: int = 3
    # Share of interactions drawn from the taste softmax; the rest follow popularity alone.
    taste_share: float = 0.6
    shade_weight: float = 1.5

    def validate(self) -> None:
        if self.min_interactions < 3:
            raise ValueError("catalog.sparse.min_interactions must be >= 3 (leave-last-out needs a training row)")
        if self.median_interactions < self.min_interactions:
            raise ValueError("catalog.sparse.median_interactions must be >= catalog.sparse.min_interactions")
        if self.history_spread < 0:
            raise ValueError("catalog.sparse.history_spread must be >= 0")
        if not 0.0 <= self.taste_share <= 1.0:
            raise ValueError("catalog.sparse.taste_share must be in [0, 1]")


@dataclass
class CatalogConfig:
    """Size and behaviour of the generated catalog.

    ``profile`` picks the generative process (``docs/catalog.md``):

    ``default``: every user draws ``interactions_per_user`` items on average (Poisson, at least
    ``min_interactions_per_user``) without replacement from one softmax over taste affinity
    (the weighted matches of colour, pattern, material, style) + ``popularity_weight`` × log
    popularity + ``noise`` × N(0, 1) per item.

    ``sparse``: the same items, tastes and softmax, with three changes (``sparse`` settings):
    (1) short histories, a lognormal count of median ``sparse.median_interactions`` (6) and a
    long tail, at least ``sparse.min_interactions`` (3); (2) each interaction comes from the
    taste softmax with probability ``sparse.taste_share`` (0.6), else from popularity alone
    (probability proportional to popularity), so part of a history says nothing of the taste;
    (3) a hidden visual attribute ``shade`` (light / dark): every item has one, drawn in its
    image by lightening or darkening the fill colour, every user a shade taste that weighs
    ``sparse.shade_weight`` in the affinity and counts in the rating, and no title, description
    or review names it (its ``AttributeSpec`` is ``hidden``).
    """

    seed: int = 0
    profile: CatalogProfile = CatalogProfile.default
    num_users: int = 1000
    num_items: int = 2000
    interactions_per_user: float = 30.0
    min_interactions_per_user: int = 5
    image_size: int = 64
    # Taste affinity weights: how much a match on each attribute raises the chance to interact.
    colour_weight: float = 2.0
    pattern_weight: float = 1.5
    material_weight: float = 2.0
    style_weight: float = 1.5
    popularity_weight: float = 0.5
    noise: float = 1.0
    start_timestamp: int = 1_704_067_200  # 2024-01-01 UTC
    span_days: int = 365
    # Share of items whose title and description name the colour and pattern.
    visual_words_in_text: float = 0.5
    missing_image_rate: float = 0.0
    missing_text_rate: float = 0.0
    name: str = "catalog"
    sparse: SparseProfileConfig = field(default_factory=SparseProfileConfig)

    def validate(self) -> None:
        # load_config checks the type; a config built directly in Python is checked here.
        if self.profile not in CATALOG_PROFILES:
            raise ValueError(f"catalog.profile {self.profile!r} is not one of {CATALOG_PROFILES}")
        if self.num_users < 1 or self.num_items < 2:
            raise ValueError("catalog needs num_users >= 1 and num_items >= 2")
        if self.min_interactions_per_user < 1 or self.min_interactions_per_user > self.num_items:
            raise ValueError("min_interactions_per_user must be in [1, num_items]")
        if self.interactions_per_user < self.min_interactions_per_user:
            raise ValueError("interactions_per_user must be >= min_interactions_per_user")
        if self.image_size < 16:
            raise ValueError("image_size must be >= 16")
        for name in ("missing_image_rate", "missing_text_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1)")
        if not 0.0 <= self.visual_words_in_text <= 1.0:
            raise ValueError("visual_words_in_text must be in [0, 1]")
        self.sparse.validate()
        if self.profile == "sparse" and self.sparse.min_interactions > self.num_items:
            raise ValueError("catalog.sparse.min_interactions must be <= num_items")


def _draw_silhouette(draw: ImageDraw.ImageDraw, category: str, size: int, scale: float, dx: float, dy: float) -> None:
    def to_px(x: float, y: float) -> tuple[float, float]:
        return ((0.5 + (x - 0.5) * scale + dx) * size, (0.5 + (y - 0.5) * scale + dy) * size)

    draw.polygon([to_px(x, y) for x, y in _SILHOUETTES[category]], fill=255)
    if category == "bag":  # handle
        (x0, y0), (x1, y1) = to_px(0.32, 0.16), to_px(0.68, 0.62)
        draw.arc((x0, y0, x1, y1), start=180, end=360, fill=255, width=max(2, size // 16))
    elif category == "hat":  # brim
        (x0, y0), (x1, y1) = to_px(0.08, 0.54), to_px(0.92, 0.70)
        draw.ellipse((x0, y0, x1, y1), fill=255)


def _pattern_layer(colour: tuple[int, int, int], pattern: str, size: int, phase: int) -> Image.Image:
    """A full-size RGB layer of ``colour`` with ``pattern`` drawn in a lighter shade of it."""
    layer = Image.new("RGB", (size, size), colour)
    if pattern == "plain":
        return layer
    # A lighter shade keeps the base colour dominant, so colour stays readable under any pattern.
    accent = tuple(int(c + (255 - c) * 0.7) for c in colour)
    draw = ImageDraw.Draw(layer)
    period = max(4, size // 8)
    if pattern == "stripes":
        for y in range(-period + phase % period, size, period):
            draw.rectangle((0, y, size, y + period // 2 - 1), fill=accent)
    elif pattern == "dots":
        r = max(1, period // 4)
        for y in range(phase % period, size + period, period):
            for x in range(phase % period, size + period, period):
                draw.ellipse((x - r, y - r, x + r, y + r), fill=accent)
    elif pattern == "checks":
        for y in range(0, size, period):
            for x in range(0, size, period):
                if ((x // period) + (y // period)) % 2 == 0:
                    draw.rectangle((x, y, x + period - 1, y + period - 1), fill=accent)
    else:
        raise ValueError(f"unknown pattern {pattern!r}; expected one of {PATTERNS}")
    return layer


def shade_colour(colour: str, shade: str | None) -> tuple[int, int, int]:
    """The RGB of ``colour`` in ``shade`` (``None``: the plain colour of the default profile)."""
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; expected one of {tuple(COLOURS)}")
    rgb = COLOURS[colour]
    if shade is None:
        return rgb
    if shade == "dark":
        return tuple(int(round(c * _DARK_SCALE)) for c in rgb)  # type: ignore[return-value]
    if shade == "light":
        return tuple(int(round(c + (255 - c) * _LIGHT_MIX)) for c in rgb)  # type: ignore[return-value]
    raise ValueError(f"unknown shade {shade!r}; expected one of {SHADES}")


def render_item_image(
    category: str, colour: str, pattern: str, *, size: int = 64, rng: np.random.Generator | None = None,
    shade: str | None = None,
) -> Image.Image:
    """Draw an item: the category's silhouette filled with ``colour`` and ``pattern``.

    ``rng`` jitters position, scale and pattern phase so that items of the same attributes
    are not pixel copies; without it the drawing is canonical (centred, unit scale).
    ``shade`` ("light" / "dark", the sparse profile) lightens or darkens the fill colour.
    """
    if category not in _SILHOUETTES:
        raise ValueError(f"unknown category {category!r}; expected one of {CATEGORIES}")
    fill = shade_colour(colour, shade)
    scale, dx, dy, phase = 1.0, 0.0, 0.0, 0
    if rng is not None:
        scale = float(rng.uniform(0.85, 1.0))
        dx, dy = (float(v) for v in rng.uniform(-0.05, 0.05, size=2))
        phase = int(rng.integers(0, 64))
    # Draw the mask at 4x and downsample: smooth edges at small sizes.
    big = size * 4
    mask = Image.new("L", (big, big), 0)
    _draw_silhouette(ImageDraw.Draw(mask), category, big, scale, dx, dy)
    mask = mask.resize((size, size), Image.Resampling.LANCZOS)
    image = Image.new("RGB", (size, size), _BACKGROUND)
    image.paste(_pattern_layer(fill, pattern, size, phase), (0, 0), mask)
    return image


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def _sample_without_replacement(rng: np.random.Generator, logits: np.ndarray, k: int) -> np.ndarray:
    # Gumbel top-k draws k distinct items with the same law as sequential softmax sampling.
    keys = logits + rng.gumbel(size=logits.shape)
    return np.argpartition(-keys, k - 1)[:k]


def _fill(template: str, attrs: dict[str, str]) -> str:
    text = template.format(
        brand=attrs["brand"],
        colour=attrs["colour"],
        colour_cap=attrs["colour"].capitalize(),
        pattern_word=PATTERN_WORDS[attrs["pattern"]],
        pattern_phrase=_PATTERN_PHRASES[attrs["pattern"]],
        material=attrs["material"],
        material_cap=attrs["material"].capitalize(),
        category=attrs["category"],
        style=attrs["style"],
        style_cap=attrs["style"].capitalize(),
    )
    return re.sub(r"\ba ([aeiou])", r"an \1", text)


def _history_lengths(config: CatalogConfig, rng: np.random.Generator) -> np.ndarray:
    """Int64 [U]: how many distinct items each user interacts with."""
    if config.profile == "sparse":
        sparse = config.sparse
        drawn = rng.lognormal(np.log(sparse.median_interactions), sparse.history_spread, config.num_users)
        counts = np.maximum(sparse.min_interactions, np.rint(drawn).astype(np.int64))
    else:
        counts = np.maximum(
            config.min_interactions_per_user,
            rng.poisson(config.interactions_per_user - config.min_interactions_per_user, config.num_users)
            + config.min_interactions_per_user,
        )
    return np.minimum(counts, config.num_items)


def _mixed_history(rng: np.random.Generator, taste_logits: np.ndarray, log_pop: np.ndarray, k: int,
                   taste_share: float) -> np.ndarray:
    """``k`` distinct items, each from the taste softmax with probability ``taste_share``, else
    with probability proportional to popularity; shuffled, so that the two kinds mix in time."""
    n_taste = int(rng.binomial(k, taste_share))
    none = np.zeros(0, dtype=np.int64)
    by_taste = _sample_without_replacement(rng, taste_logits, n_taste) if n_taste else none
    rest = log_pop.copy()
    rest[by_taste] = -np.inf
    by_popularity = _sample_without_replacement(rng, rest, k - n_taste) if k > n_taste else none
    return np.concatenate([by_taste, by_popularity])[rng.permutation(k)]


def _generate(config: CatalogConfig) -> tuple[InteractionData, list[tuple[str, bytes] | None]]:
    config.validate()
    # Every draw of the default profile happens in the same order as before profiles existed
    # (its files are pinned); the sparse profile's extra draws come after the ones they follow.
    sparse = config.profile == "sparse"
    rng = np.random.default_rng(config.seed)
    n_items, n_users = config.num_items, config.num_users
    colours = tuple(COLOURS)

    # Items: attributes uniform at random, popularity heavy-tailed.
    item_attr = {
        "category": rng.integers(0, len(CATEGORIES), n_items),
        "colour": rng.integers(0, len(colours), n_items),
        "pattern": rng.integers(0, len(PATTERNS), n_items),
        "material": rng.integers(0, len(MATERIALS), n_items),
        "style": rng.integers(0, len(STYLES), n_items),
        "brand": rng.integers(0, len(BRANDS), n_items),
    }
    vocab = {
        "category": CATEGORIES, "colour": colours, "pattern": PATTERNS,
        "material": MATERIALS, "style": STYLES, "brand": BRANDS,
    }
    if sparse:
        item_attr["shade"] = rng.integers(0, len(SHADES), n_items)
        vocab["shade"] = SHADES
    popularity = rng.lognormal(mean=0.0, sigma=1.0, size=n_items)
    no_image = rng.random(n_items) < config.missing_image_rate
    no_text = rng.random(n_items) < config.missing_text_rate

    items: list[Item] = []
    images: list[tuple[str, bytes] | None] = []
    for i in range(n_items):
        attrs = {name: vocab[name][int(item_attr[name][i])] for name in vocab}
        visual = rng.random() < config.visual_words_in_text
        titles = _TITLE_TEMPLATES_VISUAL if visual else _TITLE_TEMPLATES_PLAIN
        descriptions = _DESCRIPTION_TEMPLATES_VISUAL if visual else _DESCRIPTION_TEMPLATES_PLAIN
        title = _fill(titles[int(rng.integers(len(titles)))], attrs)
        description = _fill(descriptions[int(rng.integers(len(descriptions)))], attrs)
        image_rng = np.random.default_rng([config.seed, i])
        item_id = f"i{i:05d}"
        if no_text[i]:
            title, description = "", ""
        if no_image[i]:
            images.append(None)
        else:
            picture = render_item_image(attrs["category"], attrs["colour"], attrs["pattern"], size=config.image_size,
                                        rng=image_rng, shade=attrs.get("shade"))
            images.append((f"{item_id}.png", _png_bytes(picture)))
        items.append(Item(item_id=item_id, title=title, description=description, attributes=attrs))

    # Users: visual and textual tastes drawn independently.
    taste = {
        "colour": rng.integers(0, len(colours), n_users),
        "pattern": rng.integers(0, len(PATTERNS), n_users),
        "material": rng.integers(0, len(MATERIALS), n_users),
        "style": rng.integers(0, len(STYLES), n_users),
    }
    weights = {
        "colour": config.colour_weight, "pattern": config.pattern_weight,
        "material": config.material_weight, "style": config.style_weight,
    }
    if sparse:
        taste["shade"] = rng.integers(0, len(SHADES), n_users)
        weights["shade"] = config.sparse.shade_weight
    counts = _history_lengths(config, rng)
    log_pop = np.log(popularity)
    span = config.span_days * 86_400

    users, item_col, times, ratings, reviews = [], [], [], [], []
    for u in range(n_users):
        matches = {name: item_attr[name] == taste[name][u] for name in weights}
        affinity = sum(weights[name] * matches[name] for name in weights)
        logits = affinity + config.popularity_weight * log_pop + config.noise * rng.standard_normal(n_items)
        if sparse:
            chosen = _mixed_history(rng, logits, log_pop, int(counts[u]), config.sparse.taste_share)
        else:
            chosen = _sample_without_replacement(rng, logits, int(counts[u]))
        # Each user is active over a random window; events inside it are sorted in time.
        start = config.start_timestamp + int(rng.integers(0, span // 2))
        stamps = np.sort(start + rng.integers(0, span // 2, len(chosen)))
        for i, t in zip(chosen, stamps, strict=True):
            liked = [name for name in weights if matches[name][i]]
            score = sum(weights[name] for name in liked) / sum(weights.values())  # in [0, 1]
            rating = float(np.clip(np.rint(1.5 + 3.5 * score + rng.normal(0, 0.6)), 1, 5))
            users.append(u)
            item_col.append(int(i))
            times.append(int(t))
            ratings.append(rating)
            reviews.append(_review(rng, [name for name in liked if name in _LIKE_PHRASES], items[int(i)].attributes))

    attributes = {
        "category": AttributeSpec("visual", CATEGORIES),
        "colour": AttributeSpec("visual", colours),
        "pattern": AttributeSpec("visual", PATTERNS, aliases=PATTERN_ALIASES),
        "material": AttributeSpec("textual", MATERIALS),
        "style": AttributeSpec("textual", STYLES),
        "brand": AttributeSpec("textual", BRANDS),
    }
    if sparse:
        attributes["shade"] = AttributeSpec("visual", SHADES, hidden=True)
    data = InteractionData(
        name=config.name,
        user_ids=[f"u{u:05d}" for u in range(n_users)],
        items=items,
        user=np.array(users),
        item=np.array(item_col),
        timestamp=np.array(times),
        rating=np.array(ratings),
        review=reviews,
        attributes=attributes,
        user_tastes={name: [vocab[name][int(v)] for v in values] for name, values in taste.items()},
        source=f"pmg catalog generator, seed {config.seed}" + (", sparse profile" if sparse else ""),
    )
    data.refresh_report()
    return data, images

def _review(rng: np.random.Generator, liked: list[str], attrs: dict[str, str]) -> str:
    if not liked:
        return _NEUTRAL_REVIEWS[int(rng.integers(len(_NEUTRAL_REVIEWS)))]
    picked = liked if len(liked) <= 2 else [liked[int(j)] for j in sorted(rng.choice(len(liked), 2, replace=False))]
    sentences = []
    for name in picked:
        options = _LIKE_PHRASES[name]
        template = options[int(rng.integers(len(options)))]
        sentences.append(template.format(v=attrs[name], w=PATTERN_WORDS.get(attrs.get("pattern", ""), "")))
    return " ".join(sentences)


def generate_catalog(config: CatalogConfig | None = None) -> tuple[InteractionData, list[tuple[str, bytes] | None]]:
    """Generate the catalog in memory.

    Returns the data (item ``image`` paths unset) and, per item, ``(file name, PNG bytes)``
    or None for items generated without an image.
    """
    return _generate(config or CatalogConfig())


def write_catalog(out: str | Path, config: CatalogConfig | None = None) -> Path:
    """Generate the catalog and write it in the dataset format to ``out`` (atomically)."""
    data, images = generate_catalog(config)
    return write_dataset(data, out, image_bytes=images)
