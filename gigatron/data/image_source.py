"""Image samples of image-shard datasets, addressed by index, as fixed-size uint8 arrays.

`source[i]` is `{"image": uint8 [3, S, S], "label": int64, "present": bool}`: the image decoded (EXIF applied,
alpha over white), scaled to cover S x S and centre-cropped, kept as bytes so that a batch of
large images costs one byte per pixel until the model reads it (see `models/layers/patches.py`).
The label is the index of the first of `classes` named in the caption (-1 with no classes);
`present` is False only for the placeholder of a sample that data.on_error=skip left out.

For text-to-image training two options add keys: a caption tokenizer gives "caption" (int64
[caption_len] token ids, −1 padded, longer captions cut), and aspect buckets keep each image's
aspect ratio: it is scaled and cropped to its bucket, placed top-left in a [3, S_max, S_max]
array, and "size" holds its (height, width).
"""

from __future__ import annotations

import re

import numpy as np

from gigatron.data.errors import DataError
from gigatron.data.image_pipeline import AspectBuckets, decode_image_sample, resize_center_crop
from gigatron.data.image_shards import SPLIT, ImageDataset
from gigatron.data.sharded_tars import ShardedTars

NO_LABEL = -1  # label of a sample when the run has no classes


class CaptionLabels:
    """Caption -> class index: the class name (a word or phrase) that occurs first in the caption."""

    def __init__(self, classes: list[str]) -> None:
        if not classes or len(set(classes)) != len(classes) or not all(c.strip() for c in classes):
            raise ValueError(f"images.classes={classes!r} must be distinct, non-empty names")
        self.classes = list(classes)
        self._patterns = [re.compile(rf"\b{re.escape(c.strip().lower())}\b") for c in classes]

    def __call__(self, caption: str, where: str) -> int:
        text = caption.lower()
        found = [(m.start(), i) for i, p in enumerate(self._patterns) if (m := p.search(text))]
        if not found:
            raise DataError(f"{where}: caption {caption!r} names none of images.classes {self.classes}")
        return min(found)[1]


def caption_ids(tokenizer, caption: str, length: int) -> np.ndarray:
    """A caption as `length` token ids, −1 padded (longer captions are cut)."""
    ids = tokenizer.encode(caption)[:length]
    out = np.full(length, -1, dtype=np.int64)
    out[:len(ids)] = ids
    return out


class ImageShardSource:
    """Samples [start, stop) of an image dataset's train split, decoded to `image_size`² uint8."""

    def __init__(self, dataset: ImageDataset, image_size: int, classes: list[str] | None,
                 start: int = 0, stop: int | None = None, verify: str = "auto", tokenizer=None,
                 caption_len: int = 0, buckets: AspectBuckets | None = None, latents: bool = False) -> None:
        self.tars = ShardedTars(dataset.splits[SPLIT], verify)
        total = len(self.tars)
        stop = total if stop is None else stop
        if not 0 <= start < stop <= total:
            raise DataError(f"{dataset.root}: samples [{start}, {stop}) requested of a dataset of {total}")
        self.root, self.image_size, self.start, self.stop = dataset.root, image_size, start, stop
        self.labels = CaptionLabels(classes) if classes else None
        self.tokenizer, self.caption_len, self.buckets = tokenizer, caption_len, buckets
        self.latents = latents
        if latents:
            if "latents" not in dataset.raw:
                raise DataError(f"{dataset.root}/manifest.json has no 'latents' entry: images.latents=true needs a "
                                "dataset written by gigatron.data.latent_shards.write_latent_shards")
            self.channels = int(dataset.raw["latents"]["channels"])
        self.side = max(max(b) for b in buckets.buckets) if buckets is not None else image_size

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} outside [0, {len(self)})")
        index, local = self.tars.find(self.start + i)
        where = f"{index.label}:{index.keys[local]}"
        if self.latents:
            values, caption = self._latent(index.read(local), where)
        else:
            sample = decode_image_sample(index.read(local), where)
            caption = sample.caption
            if self.buckets is None:
                image = resize_center_crop(sample.image, self.image_size)
            else:
                bucket = self.buckets.bucket_for(sample.width, sample.height)
                image = self.buckets.resize_crop_to_bucket(sample.image, bucket)
            values = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
        label = NO_LABEL if self.labels is None else self.labels(caption, where)
        return self._sample(values, caption, label, present=True)

    def _latent(self, members: dict[str, bytes], where: str) -> tuple[np.ndarray, str]:
        from gigatron.data.latent_shards import LATENT_EXTENSION, decode_latent

        if LATENT_EXTENSION not in members or "txt" not in members:
            raise DataError(f"{where}: a latent sample needs .{LATENT_EXTENSION} and .txt members, has "
                            f"{', '.join(sorted(members))}")
        latent = decode_latent(members[LATENT_EXTENSION], where)
        shape = tuple(latent.shape[1:])
        allowed = self.buckets.buckets if self.buckets is not None else [(self.image_size, self.image_size)]
        if latent.shape[0] != self.channels or shape not in allowed:
            raise DataError(f"{where}: latent of {latent.shape[0]} channels and {shape[0]}x{shape[1]} does not "
                            f"match the run ({self.channels} channels, sizes {allowed}: images.image_size, "
                            "images.aspect_buckets)")
        return latent, members["txt"].decode("utf-8-sig").strip()

    def _sample(self, values: np.ndarray, caption: str | None, label: int, present: bool) -> dict[str, np.ndarray]:
        """The sample dict of image (uint8) or latent (float32) values [C, h, w]: placed top-left in the
        fixed [C, S_max, S_max] array, with "size" under aspect buckets and "caption" with a tokenizer."""
        height, width = values.shape[1:]
        if self.buckets is None:
            image = np.ascontiguousarray(values)
        else:
            image = np.zeros((values.shape[0], self.side, self.side), dtype=values.dtype)
            image[:, :height, :width] = values
        out = {"image": image, "label": np.int64(label), "present": np.bool_(present)}
        if self.buckets is not None:
            out["size"] = np.array([height, width], dtype=np.int64)
        if self.tokenizer is not None:
            out["caption"] = caption_ids(self.tokenizer, caption or "", self.caption_len) if present else \
                np.full(self.caption_len, -1, dtype=np.int64)
        return out

    def placeholder(self) -> dict[str, np.ndarray]:
        """What a skipped sample becomes (data.on_error=skip): a black image marked absent, ignored by the loss."""
        values = np.zeros((self.channels, self.side, self.side), dtype=np.float32) if self.latents else \
            np.zeros((3, self.side, self.side), dtype=np.uint8)
        return self._sample(values, None, NO_LABEL, present=False)
