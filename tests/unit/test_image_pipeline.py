"""The reading side: decode, resize/crop, aspect buckets, tensors and per-bucket grouping."""

from __future__ import annotations

import io
import math

import pytest
import torch
from PIL import Image

from gigatron.data.errors import DataError
from gigatron.data.image_pipeline import (
    AspectBuckets,
    ImageTextSample,
    decode_image_sample,
    group_by_bucket,
    resize_center_crop,
    to_tensor,
)

WHERE = "train-000003.tar:0000000012"


def _png(size: tuple[int, int], mode: str = "RGB", colour: object = (10, 200, 30)) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, colour).save(out, format="PNG")
    return out.getvalue()


def _sample(width: int, height: int) -> ImageTextSample:
    return ImageTextSample(Image.new("RGB", (width, height)), "c", width, height)


def test_decode_round_trip() -> None:
    decoded = decode_image_sample({"png": _png((40, 20)), "txt": b"a green box\n", "json": b"{}"}, WHERE)
    assert (decoded.width, decoded.height, decoded.caption) == (40, 20, "a green box")
    assert decoded.image.mode == "RGB" and decoded.image.getpixel((0, 0)) == (10, 200, 30)


def test_decode_composites_alpha_on_white() -> None:
    decoded = decode_image_sample({"png": _png((4, 4), "RGBA", (0, 0, 0, 0)), "txt": b""}, WHERE)
    assert decoded.image.getpixel((1, 1)) == (255, 255, 255)
    assert decoded.caption == ""


def test_decode_applies_exif_orientation() -> None:
    image = Image.new("RGB", (40, 20))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    out = io.BytesIO()
    image.save(out, format="JPEG", exif=exif.tobytes())
    decoded = decode_image_sample({"jpg": out.getvalue(), "txt": b"x"}, WHERE)
    assert (decoded.width, decoded.height) == (20, 40)


@pytest.mark.parametrize(("sample", "fragment"), [
    ({"txt": b"caption", "json": b"{}"}, "no image member"),
    ({"png": _png((4, 4)), "jpg": _png((4, 4)), "txt": b"x"}, "several image members"),
    ({"png": _png((8, 8))[:30], "txt": b"x"}, "cannot be decoded"),
    ({"jpg": b"not an image at all", "txt": b"x"}, "cannot be decoded"),
    ({"png": _png((4, 4))}, "no caption member"),
    ({"png": _png((4, 4)), "txt": b"caf\xe9"}, "not valid UTF-8"),
])
def test_decode_errors_name_where(sample: dict[str, bytes], fragment: str) -> None:
    with pytest.raises(DataError) as info:
        decode_image_sample(sample, WHERE)
    assert str(info.value).startswith(WHERE) and fragment in str(info.value)


@pytest.mark.parametrize("size", [(300, 200), (200, 300), (64, 64), (1000, 10), (10, 1000)])
def test_resize_center_crop_shape(size: tuple[int, int]) -> None:
    assert resize_center_crop(Image.new("RGB", size), 64).size == (64, 64)


def test_resize_center_crop_keeps_the_centre() -> None:
    # A wide image: left third red, middle green, right third blue; the crop must be green.
    image = Image.new("RGB", (300, 100), (255, 0, 0))
    image.paste((0, 255, 0), (100, 0, 200, 100))
    image.paste((0, 0, 255), (200, 0, 300, 100))
    cropped = resize_center_crop(image, 50)
    assert cropped.getpixel((2, 25)) == cropped.getpixel((47, 25)) == (0, 255, 0)
    with pytest.raises(ValueError, match="size"):
        resize_center_crop(image, 0)


def test_bucket_geometry() -> None:
    buckets = AspectBuckets(base_size=256, multiple=32, max_ratio=4.0)
    assert (256, 256) in buckets.buckets
    for h, w in buckets.buckets:
        assert h % 32 == 0 and w % 32 == 0
        assert abs(h * w / 256**2 - 1) <= 0.10
        assert max(h / w, w / h) <= 4.0
        assert (w, h) in buckets.buckets  # symmetric
    ratios = [w / h for h, w in buckets.buckets]
    assert ratios == sorted(ratios) and len(set(ratios)) == len(ratios)
    for base, multiple in [(512, 64), (1024, 64), (256, 16)]:
        other = AspectBuckets(base, multiple)
        assert all(abs(h * w / base**2 - 1) <= 0.10 for h, w in other.buckets)


def test_bucket_choice() -> None:
    buckets = AspectBuckets(256, 32, 4.0)
    assert buckets.bucket_for(500, 500) == (256, 256)
    assert buckets.bucket_for(1, 1) == (256, 256)
    assert buckets.bucket_for(10_000, 10) == (128, 512)  # extreme panorama -> widest bucket
    assert buckets.bucket_for(10, 10_000) == (512, 128)  # extreme portrait -> tallest bucket
    h, w = buckets.bucket_for(640, 480)
    assert w > h and math.isclose(w / h, 640 / 480, rel_tol=0.15)
    with pytest.raises(ValueError, match="positive"):
        buckets.bucket_for(0, 10)


def test_bucket_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="multiple of"):
        AspectBuckets(250, 32)
    with pytest.raises(ValueError, match="max_ratio"):
        AspectBuckets(256, 32, 0.5)


def test_resize_crop_to_bucket() -> None:
    buckets = AspectBuckets(256, 32)
    for size in [(640, 480), (100, 900), (256, 256), (33, 31)]:
        bucket = buckets.bucket_for(*size)
        out = buckets.resize_crop_to_bucket(Image.new("RGB", size), bucket)
        assert out.size == (bucket[1], bucket[0])


def test_to_tensor_range() -> None:
    image = Image.new("RGB", (3, 2), (0, 0, 0))
    image.putpixel((2, 1), (255, 128, 255))
    tensor = to_tensor(image)
    assert tensor.shape == (3, 2, 3) and tensor.dtype == torch.float32
    assert tensor.min().item() == -1.0 and tensor.max().item() == 1.0
    assert tensor[:, 1, 2].tolist() == pytest.approx([1.0, 128 / 127.5 - 1, 1.0], abs=1e-6)
    assert to_tensor(Image.new("L", (2, 2), 255)).shape == (3, 2, 2)


def test_group_by_bucket_deterministic_and_complete() -> None:
    buckets = AspectBuckets(256, 32)
    sizes = [(640, 480), (300, 300), (480, 640), (320, 240), (512, 512), (10_000, 10), (480, 640)]
    batch = [(100 + i, _sample(w, h)) for i, (w, h) in enumerate(sizes)]
    groups = group_by_bucket(batch, buckets)
    assert groups == [[100, 103], [101, 104], [102, 106], [105]]
    assert group_by_bucket(list(batch), buckets) == groups
    assert sorted(i for g in groups for i in g) == [i for i, _ in batch]
    for group in groups:
        by_index = dict(batch)
        assert len({buckets.bucket_for(by_index[i].width, by_index[i].height) for i in group}) == 1
    assert group_by_bucket([], buckets) == []
