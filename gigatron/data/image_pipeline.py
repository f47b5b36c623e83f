"""The reading side of image-text shards: decode a sample, resize/crop it, bucket it by aspect ratio.

The training loader groups WebDataset tar members by key and hands each sample over as
`{extension: bytes}` (e.g. `{"jpg": ..., "txt": ..., "json": ...}`) plus a `where` string such as
`"train-000003.tar:0000000012"` naming the shard and key; every error raised here includes `where`.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

from gigatron.data.errors import DataError

# Preference order matters only for the error message; a sample must hold exactly one of these.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXTENSION = "txt"
RESAMPLE = Image.Resampling.BICUBIC
# EXIF orientations 5..8 rotate by 90 degrees, so the displayed width and height swap.
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}
_EXIF_ORIENTATION = 0x0112


@dataclass
class ImageTextSample:
    """A decoded sample: an RGB image as displayed (EXIF orientation applied) and its caption."""

    image: Image.Image
    caption: str
    width: int
    height: int


def oriented_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of an opened image as displayed, i.e. after its EXIF orientation."""
    width, height = image.size
    if image.getexif().get(_EXIF_ORIENTATION, 1) in _TRANSPOSED_ORIENTATIONS:
        return height, width
    return width, height


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        # convert("RGB") clips 16-bit values at 255, turning most pixels white; rescale instead.
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if values.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.round(values * (255.0 / peak)).clip(0, 255).astype(np.uint8), mode="L")
    if image.has_transparency_data:
        # Dropping alpha exposes whatever colour the transparent pixels happen to hold (often black).
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _image_member(sample: dict[str, bytes], where: str) -> bytes:
    present = [ext for ext in IMAGE_EXTENSIONS if ext in sample]
    if not present:
        raise DataError(f"{where}: no image member; expected one of {', '.join(IMAGE_EXTENSIONS)}, "
                        f"found {', '.join(sorted(sample)) or 'no members'}")
    if len(present) > 1:
        raise DataError(f"{where}: several image members ({', '.join(present)}); expected exactly one")
    return sample[present[0]]


def _caption_member(sample: dict[str, bytes], where: str) -> str:
    if CAPTION_EXTENSION not in sample:
        raise DataError(f"{where}: no caption member '{CAPTION_EXTENSION}'; "
                        f"found {', '.join(sorted(sample)) or 'no members'}")
    try:
        # utf-8-sig: a BOM written by some editors is not part of the caption.
        return sample[CAPTION_EXTENSION].decode("utf-8-sig").strip()
    except UnicodeDecodeError as exc:
        raise DataError(f"{where}: caption member '{CAPTION_EXTENSION}' is not valid UTF-8 ({exc})") from exc


def decode_image_sample(sample: dict[str, bytes], where: str) -> ImageTextSample:
    """Decode `{ext: bytes}` into an RGB image (EXIF orientation applied, alpha over white) and caption.

    `where` (e.g. "train-000003.tar:0000000012") is put in every DataError: missing or ambiguous
    image member, corrupt image bytes, missing or non-UTF-8 caption. An empty caption is allowed
    (unconditional samples); surrounding whitespace is stripped.
    """
    data = _image_member(sample, where)
    caption = _caption_member(sample, where)
    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            image = _to_rgb(ImageOps.exif_transpose(opened))
    # PIL reports corrupt data with many exception types (OSError, SyntaxError, ValueError, ...).
    except Exception as exc:
        raise DataError(f"{where}: image bytes ({len(data)} bytes) cannot be decoded: {exc}") from exc
    return ImageTextSample(image, caption, image.width, image.height)


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _cover_and_crop(image: Image.Image, height: int, width: int) -> Image.Image:
    # Scale so the image covers height x width, never below it after rounding, then crop the middle.
    scale = max(width / image.width, height / image.height)
    new_w = max(width, round(image.width * scale))
    new_h = max(height, round(image.height * scale))
    if (new_w, new_h) != image.size:
        image = image.resize((new_w, new_h), RESAMPLE)
    left = (new_w - width) // 2
    top = (new_h - height) // 2
    return image.crop((left, top, left + width, top + height))


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is `size`, then crop the centre `size` x `size` square."""
    _check_positive("size", size)
    return _cover_and_crop(image, size, size)


class AspectBuckets:
    """A fixed list of (height, width) buckets of area ~ base_size**2 with sides multiple of `multiple`.

    For every height h (a multiple of `multiple`, up to base_size) the width is the multiple nearest
    base_size**2 / h; buckets more elongated than `max_ratio`, or whose area is more than 10% off
    base_size**2, are dropped; each bucket's transpose is included, so the list is symmetric.
    Buckets are sorted by aspect ratio (width / height), tallest first.
    """

    AREA_TOLERANCE = 0.10

    def __init__(self, base_size: int = 256, multiple: int = 32, max_ratio: float = 4.0) -> None:
        _check_positive("base_size", base_size)
        _check_positive("multiple", multiple)
        if base_size % multiple:
            raise ValueError(f"base_size {base_size} must be a multiple of multiple={multiple}")
        if not max_ratio >= 1.0:
            raise ValueError(f"max_ratio must be >= 1.0, got {max_ratio!r}")
        self.base_size = base_size
        self.multiple = multiple
        self.max_ratio = float(max_ratio)
        target = base_size * base_size
        found: set[tuple[int, int]] = set()
        for height in range(multiple, base_size + 1, multiple):
            width = max(multiple, round(target / height / multiple) * multiple)
            # The small epsilon keeps exact ratios such as 128x512 at max_ratio=4.
            if width / height > self.max_ratio + 1e-9:
                continue
            if abs(width * height / target - 1.0) > self.AREA_TOLERANCE:
                continue
            found.update({(height, width), (width, height)})
        self.buckets: list[tuple[int, int]] = sorted(found, key=lambda hw: hw[1] / hw[0])
        self._log_ratios = [math.log(w / h) for h, w in self.buckets]

    def __len__(self) -> int:
        return len(self.buckets)

    def __repr__(self) -> str:
        return (f"AspectBuckets(base_size={self.base_size}, multiple={self.multiple}, "
                f"max_ratio={self.max_ratio}, buckets={self.buckets})")

    def bucket_for(self, width: int, height: int) -> tuple[int, int]:
        """The (height, width) bucket whose log aspect ratio is nearest that of a width x height image."""
        if width <= 0 or height <= 0:
            raise ValueError(f"image size must be positive, got width={width}, height={height}")
        target = math.log(width / height)
        # Ties go to the earlier (taller) bucket so the choice never depends on float noise in sorting.
        best = min(range(len(self.buckets)), key=lambda i: (abs(self._log_ratios[i] - target), i))
        return self.buckets[best]

    def resize_crop_to_bucket(self, image: Image.Image, bucket: tuple[int, int]) -> Image.Image:
        """Scale `image` so it covers the (height, width) bucket, then crop the centre to exactly it."""
        height, width = bucket
        _check_positive("bucket height", height)
        _check_positive("bucket width", width)
        return _cover_and_crop(image, height, width)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """float32 tensor [3, H, W] with values in [-1, 1] (0 -> -1, 255 -> 1)."""
    if image.mode != "RGB":
        image = _to_rgb(image)
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous().float().div_(127.5).sub_(1.0)


def group_by_bucket(samples: list[tuple[int, ImageTextSample]], buckets: AspectBuckets) -> list[list[int]]:
    """Split a global batch into same-bucket groups of the given indices.

    Groups come in order of their bucket's first appearance and keep the input order inside, so
    every rank computes the same grouping from the same batch; the batch itself is unchanged.
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for index, sample in samples:
        groups.setdefault(buckets.bucket_for(sample.width, sample.height), []).append(index)
    return list(groups.values())
