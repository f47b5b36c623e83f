"""The shapes alignment detector, checked against references that do not go through it.

The references: the caption format rebuilt by hand, the pixels `shapes.py` guarantees (a claimed
cell's centre pixel has the claimed colour, every other cell centre is background), shapes drawn
here with numpy masks rather than PIL, and deliberately wrong pairings whose expected score is
known (near zero). The accuracy floors sit just under what was measured, so a broken detector fails.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gigatron.data.shapes import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, cell_centre, render_shape_image
from gigatron.data.shapes_alignment import (
    ClaimResult,
    ShapeClaim,
    check_claim,
    parse_caption,
    score_alignment,
)

SEED = 11
COUNT = 300


@pytest.fixture(scope="module")
def rendered() -> list[tuple[Image.Image, str]]:
    return [render_shape_image(SEED, index) for index in range(COUNT)]


def _caption(claims: list[ShapeClaim], background: str) -> str:
    """The caption format, written out independently of both the renderer and the parser."""
    phrases = []
    for claim in claims:
        article = "an" if claim.colour in ("orange",) else "a"  # the only palette colour with a vowel
        phrases.append(f"{article} {claim.colour} {claim.shape} {POSITIONS[claim.cell]}")
    body = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"{body} on a {background} background"


def _resized(image: Image.Image, short_side: int, resample: Image.Resampling) -> np.ndarray:
    scale = short_side / min(image.size)
    size = (round(image.width * scale), round(image.height * scale))
    return np.asarray(image.resize(size, resample))


def test_parse_caption_inverts_the_generator(rendered: list[tuple[Image.Image, str]]) -> None:
    assert [name for name in COLOURS if name[0] in "aeiou"] == ["orange"]  # what _caption assumes
    counts, shapes = set(), set()
    for image, caption in rendered:
        claims, background = parse_caption(caption)
        assert _caption(claims, background) == caption
        assert image.getpixel((0, 0)) == BACKGROUNDS[background]
        claimed = {claim.cell: claim for claim in claims}
        # Pixels as the independent reference: claimed cell centres have the claimed colour and
        # every other cell centre is background, so colours and cells were read correctly.
        for cell in POSITIONS:
            pixel = image.getpixel(cell_centre(image.width, image.height, cell))
            expected = COLOURS[claimed[cell].colour] if cell in claimed else BACKGROUNDS[background]
            assert pixel == expected, (caption, cell)
        counts.add(len(claims))
        shapes.update(claim.shape for claim in claims)
    assert counts == {1, 2, 3} and shapes == set(SHAPES)


@pytest.mark.parametrize(
    "caption",
    [
        "",
        "a red circle at the top left",  # no background
        "a red circle at the top left on a grey background.",
        "A red circle at the top left on a grey background",
        "an red circle at the top left on a grey background",
        "a orange circle at the top left on a grey background",
        "a pink circle at the top left on a grey background",
        "a red hexagon at the top left on a grey background",
        "a red circle in the middle on a grey background",
        "a red circle at the top left on a pink background",
        "a red circle at the top left on an grey background",
        "a red circle at the top left, a blue square in the centre on a grey background",
        "a red circle at the top left and a blue square at the top left on a grey background",
        "a red circle at the top left and  a blue square in the centre on a grey background",
        "a red circle at the top left and a blue square in the centre and a green triangle at the"
        " bottom right on a grey background",
    ],
)
def test_parse_caption_rejects_other_text(caption: str) -> None:
    with pytest.raises(ValueError, match="not a shapes caption") as error:
        parse_caption(caption)
    assert repr(caption) in str(error.value)


def test_native_renderings_score_perfectly(rendered: list[tuple[Image.Image, str]]) -> None:
    images = [np.asarray(image) for image, _ in rendered]
    scores = score_alignment(images, [caption for _, caption in rendered])
    assert scores["claims"] == sum(len(parse_caption(caption)[0]) for _, caption in rendered)
    assert scores["images"] == COUNT
    # Measured on these 300 images (613 claims): every axis 1.0, shape included (a floor of 0.97
    # was the requirement), and 1.0 on 600 images each of seeds 0 and 1 as well.
    assert scores["colour_accuracy"] == 1.0 and scores["position_accuracy"] == 1.0
    assert scores["shape_accuracy"] >= 0.99 and scores["image_accuracy"] >= 0.98
    assert scores["background_accuracy"] == 1.0


# Measured on these 300 images (613 claims), as colour / shape / position / image accuracy:
#   short side 64, NEAREST and BICUBIC: 1.0 / 1.0 / 1.0 / 1.0
#   short side 32, NEAREST:             1.0 / 1.0 / 1.0 / 1.0
#   short side 32, BICUBIC:             1.0 / 0.984 / 1.0 / 0.967
# On 600 images each of seeds 0 and 1: 1.0 everywhere at 64; at 32 NEAREST >= 0.999 on every
# axis; at 32 BICUBIC colour 0.998, shape 0.983-0.985, position 1.0. (Asked-for floors were colour
# 0.95 at 64 and 0.9 at 32; the floors here are tighter, leaving room only for that spread and for
# small changes in PIL's resampling, so a broken detector fails.)
@pytest.mark.parametrize(
    ("short_side", "resample", "colour", "shape", "position"),
    [
        (64, Image.Resampling.NEAREST, 0.99, 0.99, 0.99),
        (64, Image.Resampling.BICUBIC, 0.99, 0.98, 0.99),
        (32, Image.Resampling.NEAREST, 0.98, 0.97, 0.99),
        (32, Image.Resampling.BICUBIC, 0.98, 0.95, 0.99),
    ],
)
def test_downscaled_renderings_score_high(
    rendered: list[tuple[Image.Image, str]], short_side: int, resample: Image.Resampling,
    colour: float, shape: float, position: float,
) -> None:
    images = [_resized(image, short_side, resample) for image, _ in rendered]
    assert min(min(image.shape[:2]) for image in images) == short_side
    scores = score_alignment(images, [caption for _, caption in rendered])
    assert scores["colour_accuracy"] >= colour, scores
    assert scores["shape_accuracy"] >= shape, scores
    assert scores["position_accuracy"] >= position, scores


def test_mismatched_captions_score_near_zero(rendered: list[tuple[Image.Image, str]]) -> None:
    images = [np.asarray(image) for image, _ in rendered[:200]]
    captions = [caption for _, caption in rendered[:200]]
    # Caption i with image i + 1: a claimed cell is usually empty there, and when it is not the
    # colour matches about 1 time in 6. Measured on these 200: colour 0.020, position 0.020,
    # shape 0.008, image 0.0 (at most 0.027 / 0.027 / 0.008 / 0.003 on 600 images of seeds 0, 1).
    scores = score_alignment(images[1:] + images[:1], captions)
    assert scores["colour_accuracy"] < 0.1 and scores["position_accuracy"] < 0.1
    assert scores["shape_accuracy"] < 0.1 and scores["image_accuracy"] < 0.02


@pytest.mark.parametrize("size", [(32, 32), (64, 96), (128, 200)])
def test_uniform_grey_image_matches_no_claim(size: tuple[int, int]) -> None:
    grey = np.full((*size, 3), BACKGROUNDS["grey"], dtype=np.uint8)
    # Purple is the palette colour nearest to grey (RGB distance ~103), so a detector that only
    # snapped to the palette would call this image purple everywhere; the background it estimates
    # from the border takes those pixels instead, so no claim at all is met, purple included.
    nearest = min(COLOURS, key=lambda name: np.linalg.norm(np.subtract(COLOURS[name], BACKGROUNDS["grey"])))
    assert nearest == "purple"
    for colour in COLOURS:
        for shape in SHAPES:
            for cell in POSITIONS:
                result = check_claim(grey, ShapeClaim(colour, shape, cell))
                assert result == ClaimResult(False, False, False, None, None), (colour, shape, cell)


def test_uniform_images_score_zero(rendered: list[tuple[Image.Image, str]]) -> None:
    captions = [caption for _, caption in rendered[:60]]
    for rgb in (*BACKGROUNDS.values(), COLOURS["red"], COLOURS["yellow"]):
        flat = [np.full((48, 64, 3), rgb, dtype=np.uint8)] * len(captions)
        scores = score_alignment(flat, captions)
        assert scores["colour_accuracy"] == scores["shape_accuracy"] == scores["position_accuracy"] == 0.0, rgb
        assert scores["image_accuracy"] == 0.0


def _mask(shape: str, height: int, width: int, centre: tuple[float, float], radius: float) -> np.ndarray:
    """Pixels whose centres fall inside a shape, drawn with numpy rather than PIL."""
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    dx, dy = xs - centre[0], ys - centre[1]
    if shape == "circle":
        return dx**2 + dy**2 <= radius**2
    if shape == "square":
        return (np.abs(dx) <= radius) & (np.abs(dy) <= radius)
    if shape == "triangle":  # apex up, base below; the centroid at `centre`
        return (dy <= radius / 2) & (np.abs(dx) <= (dy + radius) / np.sqrt(3))
    if shape == "down-triangle":
        return (dy >= -radius / 2) & (np.abs(dx) <= (radius - dy) / np.sqrt(3))
    raise AssertionError(shape)


@pytest.mark.parametrize(("width", "height"), [(96, 96), (150, 90), (40, 60)])
def test_hand_drawn_shapes(width: int, height: int) -> None:
    cells = [(0, 0), (2, 1), (1, 2)]
    shapes = ["circle", "square", "triangle"]
    colours = ["orange", "white", "green"]
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[:] = BACKGROUNDS["teal"]
    radius = 0.32 * min(width, height) / 3
    for cell, shape, colour in zip(cells, shapes, colours, strict=True):
        centre = ((cell[0] + 0.5) * width / 3 + 0.6, (cell[1] + 0.5) * height / 3 - 0.4)
        image[_mask(shape, height, width, centre, radius)] = COLOURS[colour]
    for cell, shape, colour in zip(cells, shapes, colours, strict=True):
        result = check_claim(image, ShapeClaim(colour, shape, cell))
        assert result == ClaimResult(True, True, True, colour, shape), (cell, shape, result)
        # Each axis fails on its own: another kind, another colour, another cell.
        other = SHAPES[(SHAPES.index(shape) + 1) % 3]
        assert check_claim(image, ShapeClaim(colour, other, cell)) == ClaimResult(True, False, True, colour, shape)
        wrong = check_claim(image, ShapeClaim("red", shape, cell))
        assert (wrong.colour, wrong.shape, wrong.position, wrong.detected_colour) == (False, False, False, colour)
        moved = check_claim(image, ShapeClaim(colour, shape, (1, 1)))
        assert not moved.colour and not moved.position and moved.detected_colour is None


def test_other_forms_are_not_counted_as_shapes() -> None:
    image = np.full((120, 120, 3), BACKGROUNDS["grey"], dtype=np.uint8)
    image[_mask("down-triangle", 120, 120, (60, 60), 14)] = COLOURS["red"]
    result = check_claim(image, ShapeClaim("red", "triangle", (1, 1)))
    assert result.colour and result.position and result.detected_shape is None and not result.shape
    # A same-coloured shape in the next cell neither moves this one nor counts for it.
    image[_mask("circle", 120, 120, (100, 60), 12)] = COLOURS["red"]
    assert check_claim(image, ShapeClaim("red", "circle", (2, 1))).correct
    assert not check_claim(image, ShapeClaim("red", "circle", (1, 1))).shape


def test_bad_inputs_raise() -> None:
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    claim = ShapeClaim("red", "circle", (0, 0))
    for bad in (image.astype(np.float32), image[..., :2], image[0], np.zeros((2, 32, 3), dtype=np.uint8)):
        with pytest.raises(ValueError, match="uint8 RGB image"):
            check_claim(bad, claim)
    for bad_claim in (ShapeClaim("pink", "circle", (0, 0)), ShapeClaim("red", "oval", (0, 0)),
                      ShapeClaim("red", "circle", (3, 0))):
        with pytest.raises(ValueError, match="not a shapes claim"):
            check_claim(image, bad_claim)
    caption = "a red circle at the top left on a grey background"
    with pytest.raises(ValueError, match="2 images but 1 captions"):
        score_alignment([image, image], [caption])
    with pytest.raises(ValueError, match="at least one image"):
        score_alignment([], [])
    with pytest.raises(ValueError, match="not a shapes caption"):
        score_alignment([image], ["a red blob"])


def test_main_object_colour_is_named_by_its_caption():
    """object_colour_accuracy: the largest object's colour is one the caption names (1.0 on renderings,
    low against other images' captions)."""
    from gigatron.data.shapes import render_shape_image
    from gigatron.data.shapes_alignment import score_alignment

    pairs = [render_shape_image(5, i) for i in range(60)]
    images = [np.asarray(image) for image, _ in pairs]
    captions = [caption for _, caption in pairs]
    assert score_alignment(images, captions)["object_colour_accuracy"] == 1.0
    assert score_alignment(images, captions[1:] + captions[:1])["object_colour_accuracy"] < 0.5
