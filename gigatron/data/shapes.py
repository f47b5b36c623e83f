"""A synthetic captioned-shapes image set for smoke-testing image models.

Each PNG shows 1-3 flat-coloured shapes (circle, square, triangle) on a plain background of a
contrasting colour. The image is divided into a 3x3 grid; each shape sits in its own cell (so
shapes never overlap) and its caption phrase names that cell, e.g.
"a red circle at the top left and a blue square in the centre on a grey background".
Shapes are drawn without anti-aliasing, so the pixel at a named cell's centre has exactly the
shape's colour (the shape always covers it). Image i depends only on (seed, i): the same seed gives
the same bytes, and a longer set starts with the shorter one.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 30),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 180),
    "orange": (245, 140, 20),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "grey": (128, 128, 128),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "teal": (0, 128, 128),
}
SHAPES = ("circle", "square", "triangle")
# (width, height): square, landscape and portrait, so aspect bucketing has something to do.
SIZES = ((256, 256), (320, 192), (192, 320), (384, 256), (256, 384), (320, 256), (256, 320))
# Grid cell (column, row) -> caption phrase.
POSITIONS: dict[tuple[int, int], str] = {
    (0, 0): "at the top left", (1, 0): "at the top centre", (2, 0): "at the top right",
    (0, 1): "at the centre left", (1, 1): "in the centre", (2, 1): "at the centre right",
    (0, 2): "at the bottom left", (1, 2): "at the bottom centre", (2, 2): "at the bottom right",
}
CAPTIONS_NAME = "captions.jsonl"
# A shape colour is used on a background only if this far away in RGB space, so it stays visible.
MIN_CONTRAST = 140.0
# Radius bounds and centre jitter as fractions of the smaller cell side; the jitter stays below
# half the smallest radius, so even a triangle (inradius = r / 2) still covers the cell centre.
_RADIUS = (0.28, 0.40)
_JITTER = 0.09


def _contrasting(background: tuple[int, int, int]) -> list[str]:
    return [name for name, rgb in COLOURS.items() if math.dist(rgb, background) >= MIN_CONTRAST]


def cell_centre(width: int, height: int, cell: tuple[int, int]) -> tuple[int, int]:
    """Pixel (x, y) at the centre of grid cell (column, row) of a width x height image."""
    column, row = cell
    return int((column + 0.5) * width / 3), int((row + 0.5) * height / 3)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, centre: tuple[float, float], radius: float,
                colour: tuple[int, int, int]) -> None:
    x, y = centre
    if shape == "circle":
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour)
    elif shape == "square":
        half = radius * 0.8
        draw.rectangle((x - half, y - half, x + half, y + half), fill=colour)
    else:  # an upward equilateral triangle inscribed in the circle of this radius
        dx = radius * math.sqrt(3) / 2
        draw.polygon([(x, y - radius), (x - dx, y + radius / 2), (x + dx, y + radius / 2)], fill=colour)


def _join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def render_shape_image(seed: int, index: int, max_shapes: int = 3) -> tuple[Image.Image, str]:
    """Image `index` of the set for `seed`, and its caption; at most `max_shapes` (1-3) shapes.

    max_shapes=3 is the original set; smaller values keep each image's size and background and
    drop shapes (the draws that follow differ).
    """
    if max_shapes not in (1, 2, 3):
        raise ValueError(f"max_shapes must be 1, 2 or 3, got {max_shapes!r}")
    rng = np.random.default_rng([seed, index])
    width, height = SIZES[rng.integers(len(SIZES))]
    background_name = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    image = Image.new("RGB", (width, height), BACKGROUNDS[background_name])
    draw = ImageDraw.Draw(image)
    palette = _contrasting(BACKGROUNDS[background_name])
    cells = sorted(POSITIONS)
    chosen = sorted(rng.choice(len(cells), size=int(rng.integers(1, 4)), replace=False).tolist())[:max_shapes]
    cell_side = min(width, height) / 3
    phrases = []
    # Chosen cells are sorted, so captions list shapes top to bottom, then left to right.
    for cell in sorted((cells[i] for i in chosen), key=lambda c: (c[1], c[0])):
        shape = SHAPES[rng.integers(len(SHAPES))]
        colour = palette[rng.integers(len(palette))]
        radius = cell_side * rng.uniform(*_RADIUS)
        cx, cy = cell_centre(width, height, cell)
        jx, jy = rng.uniform(-_JITTER, _JITTER, size=2) * cell_side
        _draw_shape(draw, shape, (cx + jx, cy + jy), radius, COLOURS[colour])
        article = "an" if colour[0] in "aeiou" else "a"
        phrases.append(f"{article} {colour} {shape} {POSITIONS[cell]}")
    return image, f"{_join(phrases)} on a {background_name} background"


def generate_shapes(out_dir: Path, count: int, seed: int = 0, max_shapes: int = 3) -> Path:
    """Write `count` shape PNGs and `captions.jsonl` ({"path", "caption"} lines) into `out_dir`.

    Deterministic: the same seed gives byte-identical files. Returns the path of captions.jsonl,
    which `write_image_shards` accepts as input. The jsonl is written last (atomically), so it only
    ever lists images that exist.
    """
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(count):
        image, caption = render_shape_image(seed, index, max_shapes)
        name = f"shape-{index:06d}.png"
        # Fixed settings and no metadata chunks, so the PNG bytes depend only on the pixels.
        image.save(out_dir / name, format="PNG", compress_level=6)
        lines.append(json.dumps({"path": name, "caption": caption}))
    captions = out_dir / CAPTIONS_NAME
    tmp = captions.with_name(CAPTIONS_NAME + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, captions)
    return captions
