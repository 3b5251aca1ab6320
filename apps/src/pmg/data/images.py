"""Reading item images: the one place a file becomes an RGB square that a model sees.

Real image folders hold any size and aspect ratio (MovieLens posters are 2:3), grayscale,
palette (with transparency), CMYK JPEG, RGBA PNG/WebP, 16-bit PNG, EXIF-rotated photos, and
some truncated or non-image files. Every reader goes through ``open_image``:

- the whole file is decoded, so a truncated file is an error, not a half-grey picture;
- EXIF orientation is applied (a photo shows the way up its camera recorded);
- any mode becomes RGB: transparency is composited on white, 16-bit grayscale is scaled to
  8 bits (not clipped to white), CMYK, YCbCr, L and 1 go through Pillow's conversions;

and ``fit_square`` makes it ``size`` x ``size`` the ``ImageFit`` way. A square image gives
exactly the pixels of ``convert("RGB").resize((size, size), BICUBIC)`` under every fit, so
datasets of square images (the catalog) read as they always have.

A file that cannot be read raises ``DatasetError`` naming the file and the problem; a load's
``on_bad_images`` (``OnBadImages``, applied by ``ImageChecks``) says whether that stops the load
or leaves the item without an image.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pmg.data.records import DatasetError, write_csv_rows

if TYPE_CHECKING:
    import torch

__all__ = [
    "ImageFit",
    "OnBadImages",
    "WHITE",
    "SkippedImage",
    "ImageChecks",
    "write_skipped_images",
    "verify_image",
    "image_is_square",
    "open_image",
    "rgb_image",
    "fit_square",
    "load_image",
    "image_tensor",
    "load_image_tensor",
]

WHITE = (255, 255, 255)

# Modes that carry an alpha channel; other modes may carry a ``transparency`` entry in ``info``
# (a palette index, a grey level or an RGB colour key).
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


class ImageFit(StrEnum):
    """How an image of any aspect ratio becomes a square (``data.image_fit``).

    ``pad`` (the default): scaled so its long side fills the square, centred, the short side
    letterboxed with a fill colour (white); nothing is cut and nothing is stretched.
    ``squash``: stretched to the square (the aspect ratio is lost).
    ``crop``: the centred square of its short side, scaled (the ends of the long side are cut).
    A square image gives the same pixels under every fit.
    """

    pad = "pad"
    squash = "squash"
    crop = "crop"


class OnBadImages(StrEnum):
    """What a load does with an item image it cannot read (``data.on_bad_images``): a missing
    file, a file that is not an image, a truncated or damaged one.

    ``error`` (the default): stop with the image's path and problem. ``skip``: keep the item
    without an image (it falls under the missing-image mask, ``InteractionData.has_image``);
    the load report counts it and the data stage lists every one in
    ``<run>/data/skipped_images.csv`` (item id, image, reason).
    """

    error = "error"
    skip = "skip"


@dataclass(frozen=True)
class SkippedImage:
    """An item image a load left out under ``on_bad_images: skip``: whose, which file, and why."""

    item_id: str
    image: str
    reason: str


def write_skipped_images(path: Path, images: Sequence[SkippedImage]) -> None:
    """``skipped_images.csv`` at ``path`` (atomically): a header, then one line per image left
    out (item_id, image, reason); with none, no file (a previous one is deleted)."""
    write_csv_rows(path, ("item_id", "image", "reason"), [(s.item_id, s.image, s.reason) for s in images])


class ImageChecks:
    """``on_bad_images`` applied to one load's item images: ``checked`` returns the image's path
    when it reads, raises its ``DatasetError`` under ``error`` and records it in ``skipped`` (and
    returns None) under ``skip``."""

    def __init__(self, policy: OnBadImages | str = OnBadImages.error) -> None:
        self.policy = OnBadImages(policy)
        self.skipped: list[SkippedImage] = []

    def checked(self, image: Path, *, item_id: str, owner: Path | None = None, line: int | None = None) -> Path | None:
        """``image`` if it decodes (``verify_image``), else per the policy. ``owner``/``line``: the
        file and line that name the image (an item table), put in front of the error's message."""
        try:
            verify_image(image)
        except DatasetError as err:
            if self.policy is OnBadImages.skip:
                self.skipped.append(SkippedImage(item_id, str(image), err.problem))
                return None
            if owner is None:
                raise
            raise DatasetError(owner, f"{image}: {err.problem}", line=line, column="image") from err
        return image


def _read(path: Path) -> Image.Image:
    """The image at ``path`` with every pixel decoded, in memory; ``DatasetError`` naming the
    file if it is missing, not an image, truncated or damaged.

    Pillow stops at a truncated file only while ``ImageFile.LOAD_TRUNCATED_IMAGES`` is False (its
    default, which pmg never changes) and the pixels are loaded, hence ``load()`` here.
    """
    if not path.is_file():
        raise DatasetError(path, "image file does not exist")
    try:
        with warnings.catch_warnings():
            # A huge image is read like any other; only Pillow's DecompressionBombError stops it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                return image.copy()  # keeps ``info`` (EXIF, transparency); closing the file drops the original
    except UnidentifiedImageError as err:
        raise DatasetError(path, "not a readable image: Pillow cannot identify its format") from err
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetError(path, f"not a readable image: truncated or damaged ({err})") from err


def verify_image(path: str | Path) -> None:
    """Decode the whole image at ``path``; ``DatasetError`` naming the file if it is missing,
    not an image, truncated or damaged."""
    _read(Path(path))


def image_is_square(path: str | Path) -> bool:
    """Whether the image at ``path`` is as wide as high (from its header; EXIF rotation keeps it)."""
    with Image.open(path) as image:
        width, height = image.size
    return width == height


def rgb_image(image: Image.Image) -> Image.Image:
    """``image`` upright (EXIF orientation applied) in mode RGB: any transparency composited on
    white, 16-bit grayscale scaled to 8 bits (65535 -> 255), every other mode converted by Pillow."""
    image = ImageOps.exif_transpose(image)
    if image.mode in _SIXTEEN_BIT_MODES:
        grey = np.clip(np.asarray(image, dtype=np.float64) / 257.0, 0, 255).round().astype(np.uint8)
        transparency = image.info.get("transparency")
        image = Image.fromarray(grey)  # uint8 [H, W]: mode L
        if transparency is not None:
            image.info["transparency"] = round(int(transparency) / 257)
    elif image.mode == "F":
        # Pillow's own reading of a float image: values on the 0..255 scale, clipped.
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).round().astype(np.uint8))
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (*WHITE, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def fit_square(image: Image.Image, size: int, fit: ImageFit | str = ImageFit.pad, fill: tuple[int, int, int] = WHITE) -> Image.Image:
    """An RGB ``image`` as ``size`` x ``size`` RGB by ``fit`` (bicubic); ``fill``: the pad colour."""
    fit = ImageFit(fit)
    width, height = image.size
    if width == height or fit is ImageFit.squash:
        return image.resize((size, size), Image.Resampling.BICUBIC)
    if fit is ImageFit.crop:
        side = min(width, height)
        left, top = (width - side) / 2, (height - side) / 2
        return image.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side))
    scale = size / max(width, height)
    inner = (max(1, round(width * scale)), max(1, round(height * scale)))
    canvas = Image.new("RGB", (size, size), fill)
    canvas.paste(image.resize(inner, Image.Resampling.BICUBIC), ((size - inner[0]) // 2, (size - inner[1]) // 2))
    return canvas


def open_image(path: str | Path) -> Image.Image:
    """The image at ``path``, fully decoded, upright and RGB at its own size (``rgb_image``);
    ``DatasetError`` naming the file if it is missing, not an image, truncated or damaged."""
    return rgb_image(_read(Path(path)))


def load_image(path: str | Path, size: int, fit: ImageFit | str = ImageFit.pad) -> Image.Image:
    """The image at ``path`` as an RGB ``size`` x ``size`` PIL image (``open_image``, ``fit_square``);
    ``np.asarray`` of it is uint8 [size, size, 3]."""
    return fit_square(open_image(path), size, fit)


def image_tensor(image: Image.Image, size: int, fit: ImageFit | str = ImageFit.pad) -> torch.Tensor:
    """A PIL image of any mode (``rgb_image``, ``fit_square``) as float32 [3, size, size] in [-1, 1]."""
    # Lazy: torch takes 3 s to import, and the data stage and `pmg data` (which import this
    # module through pmg.data.format) never need a tensor.
    import torch

    square = fit_square(rgb_image(image), size, fit)
    return torch.from_numpy(np.asarray(square, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0


def load_image_tensor(path: str | Path, size: int, fit: ImageFit | str = ImageFit.pad) -> torch.Tensor:
    """The image at ``path`` as float32 [3, size, size] in [-1, 1]; ``DatasetError`` if unreadable."""
    return image_tensor(_read(Path(path)), size, fit)
