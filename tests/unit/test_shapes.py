"""The synthetic shapes set: deterministic by seed, and captions that match the pixels."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from gigatron.data.image_shards import write_image_shards
from gigatron.data.shapes import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, cell_centre, generate_shapes

_PHRASE = re.compile(r"an? (\w+) (circle|square|triangle) ((?:at|in) the [a-z ]+?)(?=, | and | on a )")
_CELL_OF = {phrase: cell for cell, phrase in POSITIONS.items()}


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_deterministic_by_seed(tmp_path: Path) -> None:
    first = generate_shapes(tmp_path / "a", 20, seed=3)
    generate_shapes(tmp_path / "b", 20, seed=3)
    generate_shapes(tmp_path / "c", 20, seed=4)
    generate_shapes(tmp_path / "d", 5, seed=3)
    assert first == tmp_path / "a" / "captions.jsonl"
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert _files(tmp_path / "a") != _files(tmp_path / "c")
    # Image i depends only on (seed, i): a shorter set is a prefix of a longer one.
    short = _files(tmp_path / "d")
    assert all(short[name] == _files(tmp_path / "a")[name] for name in short if name.endswith(".png"))


def test_captions_match_pixels(tmp_path: Path) -> None:
    jsonl = generate_shapes(tmp_path / "shapes", 60, seed=0)
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(lines) == 60
    seen_sizes, seen_shapes, counts = set(), set(), set()
    for entry in lines:
        image = Image.open(tmp_path / "shapes" / entry["path"]).convert("RGB")
        caption = entry["caption"]
        background = re.search(r" on an? (\w+) background$", caption).group(1)
        assert image.getpixel((0, 0)) == BACKGROUNDS[background]  # corners are never covered
        phrases = _PHRASE.findall(caption)
        assert 1 <= len(phrases) <= 3, caption
        for colour, shape, position in phrases:
            x, y = cell_centre(image.width, image.height, _CELL_OF[position])
            assert image.getpixel((x, y)) == COLOURS[colour], (entry["path"], caption, position)
            assert COLOURS[colour] != BACKGROUNDS[background]
            seen_shapes.add(shape)
        seen_sizes.add(image.size)
        counts.add(len(phrases))
    assert seen_shapes == set(SHAPES) and counts == {1, 2, 3}
    assert any(w > h for w, h in seen_sizes) and any(w < h for w, h in seen_sizes)


def test_shapes_feed_the_shard_writer(tmp_path: Path) -> None:
    jsonl = generate_shapes(tmp_path / "shapes", 12, seed=1)
    manifest = write_image_shards(str(jsonl), tmp_path / "out", samples_per_shard=5)
    assert manifest["num_samples"] == 12 and manifest["skipped"] == 0
    assert [s["samples"] for s in manifest["splits"]["train"]["shards"]] == [5, 5, 2]


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="count"):
        generate_shapes(tmp_path, 0)
    with pytest.raises(ValueError, match="seed"):
        generate_shapes(tmp_path, 1, seed=-1)


def test_max_shapes_keeps_sizes_and_backgrounds():
    from gigatron.data.shapes import render_shape_image

    for index in range(30):
        full_image, full = render_shape_image(0, index)
        one_image, one = render_shape_image(0, index, max_shapes=1)
        assert one.count(" and ") == 0 and one_image.size == full_image.size
        assert one.split(" on a ")[1] == full.split(" on a ")[1]
