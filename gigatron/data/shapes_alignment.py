"""A deterministic detector that checks whether an image matches a captioned-shapes caption.

Text-to-image alignment is usually scored with a learned model (CLIP score, VQA, object
detectors), which is itself a moving, noisy target. For the synthetic set of `shapes.py` the
ground truth is simple enough to check with pixels alone: every caption phrase claims one
flat-coloured shape (colour, kind, 3x3 grid cell). So a model trained on that set can be scored
with exact, reproducible numbers, as needed for fitting scaling laws of alignment ("On the
Scalability of Diffusion-based Text-to-Image Generation") without an evaluator model in the loop.

Every claim is checked on three separate axes, so a curve can show which one a model learns first:

* colour: is the object centred in the claimed cell of the claimed colour?
* position: is there a blob of the claimed colour whose centre of mass lies in the claimed cell?
* shape: is the claimed-colour blob at the claimed cell a circle, a square or a triangle?

All decisions use only the fixed palettes of `shapes.py` plus the image's own background colour
(estimated from its border), so the detector needs no training and gives the same answer on every
machine. It works on any image size (the grid is a fraction of the width and height); it has been
calibrated on renderings at their native size and resized so the shorter side is 64 or 32 pixels
(see tests/unit/test_shapes_alignment.py for the measured accuracies).

Known limits: below a shorter side of ~32 pixels a shape is only a few pixels across and the
checks degrade (at 24, bicubic: colour ~0.94, shape ~0.76 on correct renderings), so score such
images upsampled or not at all. Two same-coloured shapes that touch across a cell boundary merge
into one blob, whose centre of mass may then fall in neither cell. A square turned by 45 degrees
reads as a circle. The background is assumed to fill most of the image border.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from gigatron.data.shapes import BACKGROUNDS, COLOURS, MIN_CONTRAST, POSITIONS, SHAPES, cell_centre

__all__ = ["ClaimResult", "ShapeClaim", "check_claim", "parse_caption", "score_alignment"]

_CELL_OF = {phrase: cell for cell, phrase in POSITIONS.items()}


def _alternation(words: Sequence[str]) -> str:
    # Longest first, so that no alternative is cut short by a shorter one that is its prefix.
    return "|".join(re.escape(word) for word in sorted(words, key=len, reverse=True))


_PHRASE = re.compile(
    rf"(?P<article>an?) (?P<colour>{_alternation(list(COLOURS))}) (?P<shape>{_alternation(SHAPES)}) "
    rf"(?P<position>{_alternation(list(_CELL_OF))})"
)
_CAPTION = re.compile(rf"(?P<body>.+) on a (?P<background>{_alternation(list(BACKGROUNDS))}) background")

# A blob counts as an object only with at least this much area, as a fraction of the smaller cell
# side squared; the smallest shape of the set (a triangle of radius 0.28) covers about 0.10.
_MIN_AREA = 0.02
# A blob is compared with an ideal circle, square and upward equilateral triangle of its own area
# and centre of mass (the forms and orientation `shapes.py` draws), each rasterised the way a
# downscaled rendering is (a pixel is in when the template covers at least half of it), and named
# after the one it overlaps best, if that intersection-over-union reaches _MIN_IOU. Renderings of
# the set score >= 0.96 at native size and >= 0.78 even resized to a shorter side of 32 (bicubic);
# other forms score under it against all three from ~4 pixels across up (downward triangle
# ~0.68-0.71, 2:1 ellipse or rectangle ~0.6-0.7, five-pointed star ~0.6), so they count as none.
# A diamond (a square turned by 45 degrees) still reads as a circle (~0.85): a known limitation.
_MIN_IOU = 0.75
# Template coverage of a pixel is measured on up to 4 x 4 points inside it: fine sampling matters
# for blobs a few pixels across, and one point per pixel is enough for large ones.
_MAX_SUPERSAMPLE = 4
# Palette colours closer than this to the estimated background are taken for background: half the
# contrast `shapes.py` keeps between a shape and its background, so no drawn colour is lost.
_ABSORB = MIN_CONTRAST / 2
# The border ring used to estimate the background, as a fraction of the shorter image side.
_BORDER = 0.04


@dataclass(frozen=True)
class ShapeClaim:
    """One caption phrase: a `colour` `shape` in grid cell (column, row)."""

    colour: str
    shape: str
    cell: tuple[int, int]


@dataclass(frozen=True)
class ClaimResult:
    """Whether an image satisfies one claim, per axis, with what was seen (for messages).

    `detected_colour` is the palette name at the cell centre, or None where it looks like the
    background; `detected_shape` is the kind of the claimed-colour blob at the cell, or None when
    there is no such blob.
    """

    colour: bool
    shape: bool
    position: bool
    detected_colour: str | None = None
    detected_shape: str | None = None

    @property
    def correct(self) -> bool:
        """All three axes right: the phrase is fully rendered."""
        return self.colour and self.shape and self.position


def parse_caption(caption: str) -> tuple[list[ShapeClaim], str]:
    """Claims and background name of a shapes caption, in caption order.

    Inverts the format of `render_shape_image`: phrases "a|an <colour> <shape> <position>" joined
    by ", " with " and " before the last, then " on a <background> background". Also accepts any
    number of phrases and any order (the generator writes 1-3, top to bottom), but rejects
    anything else, including a wrong article or two claims on one cell, because a caption that is
    not in the set's format cannot be checked with pixels and should fail loudly, not score 0.
    """
    if not isinstance(caption, str):
        raise ValueError(f"not a shapes caption: {caption!r}")
    match = _CAPTION.fullmatch(caption)
    if match is None:
        raise ValueError(f"not a shapes caption: {caption!r}")
    body = match.group("body")
    head, sep, last = body.rpartition(" and ")
    phrases = [*head.split(", "), last] if sep else [body]
    claims = []
    for phrase in phrases:
        part = _PHRASE.fullmatch(phrase)
        if part is None:
            raise ValueError(f"not a shapes caption: {caption!r} (bad phrase {phrase!r})")
        colour = part.group("colour")
        if part.group("article") != ("an" if colour[0] in "aeiou" else "a"):
            raise ValueError(f"not a shapes caption: {caption!r} (wrong article in {phrase!r})")
        claims.append(ShapeClaim(colour, part.group("shape"), _CELL_OF[part.group("position")]))
    if len({claim.cell for claim in claims}) != len(claims):
        raise ValueError(f"not a shapes caption: {caption!r} (two shapes claim one cell)")
    return claims, match.group("background")


@dataclass(frozen=True)
class _Blobs:
    """Connected components of one colour: label image (0 = other colours), and per label the
    area and centre of mass in pixel-index coordinates."""

    labels: np.ndarray
    areas: np.ndarray
    cx: np.ndarray
    cy: np.ndarray


class _Analysis:
    """Per-image work shared by all claims on one image: background, palette labels, blobs."""

    def __init__(self, image: np.ndarray) -> None:
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 3:
            raise ValueError(
                f"expected a uint8 RGB image [H >= 3, W >= 3, 3], got {image.dtype} {tuple(image.shape)}"
            )
        self.image = image
        self.height, self.width = image.shape[:2]
        self.cell_side = min(self.width, self.height) / 3
        self.background = self._background()
        # Candidate colours: the palette plus the background. A palette colour that is (nearly) the
        # background, like white on a white one, is dropped, so its pixels read as background: a
        # shape of the background's colour would be invisible, so it cannot count as drawn.
        names = [n for n, rgb in COLOURS.items() if math.dist(rgb, self.background.tolist()) >= _ABSORB]
        self.names: list[str | None] = [*names, None]
        self.palette = np.array([COLOURS[n] for n in names] + [self.background], dtype=np.float32)
        self.labels = self._nearest(image.reshape(-1, 3)).reshape(self.height, self.width)
        self._blobs: dict[str, _Blobs] = {}
        self._coords: tuple[np.ndarray, np.ndarray] | None = None

    def _background(self) -> np.ndarray:
        """Median colour of a thin border ring: the set never draws there, and a generated image's
        background should fill most of it, which is all a median needs."""
        ring = max(1, round(_BORDER * min(self.width, self.height)))
        border = np.concatenate([
            self.image[:ring].reshape(-1, 3), self.image[-ring:].reshape(-1, 3),
            self.image[:, :ring].reshape(-1, 3), self.image[:, -ring:].reshape(-1, 3),
        ])
        return np.median(border, axis=0).astype(np.float32)

    def _nearest(self, pixels: np.ndarray) -> np.ndarray:
        """Index into `self.names` of the nearest candidate colour (Euclidean RGB) per pixel."""
        # One pass per candidate over flat channel arrays: several times faster than a
        # [pixels, candidates, 3] difference array or a thin matrix product. Ties keep the earlier
        # candidate, as argmin would.
        red, green, blue = (pixels[:, channel].astype(np.float32) for channel in range(3))
        best = np.full(len(pixels), np.inf, dtype=np.float32)
        index = np.zeros(len(pixels), dtype=np.intp)
        for k, (r, g, b) in enumerate(self.palette):
            distance = (red - r) ** 2 + (green - g) ** 2 + (blue - b) ** 2
            closer = distance < best
            best = np.where(closer, distance, best)
            index[closer] = k
        return index

    def centre(self, cell: tuple[int, int]) -> tuple[int, int]:
        """Pixel (x, y) of the cell centre; the renderer's own rounding, so at native size the
        centre pixel is the one `shapes.py` guarantees to be covered."""
        x, y = cell_centre(self.width, self.height, cell)
        return min(x, self.width - 1), min(y, self.height - 1)

    def in_cell(self, cell: tuple[int, int], x: float, y: float) -> bool:
        """Whether pixel-index coordinates (x, y) (pixel centres at +0.5) fall in the cell."""
        column, row = cell
        u, v = (x + 0.5) * 3 / self.width, (y + 0.5) * 3 / self.height
        return column <= u < column + 1 and row <= v < row + 1

    def cell_box(self, cell: tuple[int, int]) -> tuple[slice, slice]:
        """Row and column slices of the pixels whose centres lie in the cell."""
        column, row = cell

        def span(index: int, size: int) -> slice:  # the same rule as `in_cell`
            return slice(math.ceil(index * size / 3 - 0.5), math.ceil((index + 1) * size / 3 - 0.5))

        return span(row, self.height), span(column, self.width)

    def object_colour(self, cell: tuple[int, int] | None = None) -> str | None:
        """The colour of the largest sizeable blob of any palette colour: anywhere (the image's main
        object), or centred in `cell` (the object drawn there). None when only background and specks."""
        best, best_area = None, 0
        for colour in self.names:
            if colour is None:
                continue
            blobs = self.blobs(colour)
            for label in range(1, len(blobs.areas)):
                area = int(blobs.areas[label])
                if area >= self.min_area() and area > best_area and \
                        (cell is None or self.in_cell(cell, blobs.cx[label], blobs.cy[label])):
                    best, best_area = colour, area
        return best

    def blobs(self, colour: str) -> _Blobs:
        """4-connected components of the pixels labelled `colour`, with their areas and centroids."""
        if colour not in self._blobs:
            index = self.names.index(colour) if colour in self.names else -1
            labels, count = ndimage.label(self.labels == index)
            flat = labels.ravel()
            areas = np.bincount(flat, minlength=count + 1)
            if self._coords is None:
                self._coords = np.divmod(np.arange(flat.size, dtype=np.float64), self.width)
            ys, xs = self._coords
            with np.errstate(invalid="ignore", divide="ignore"):  # label 0 (not the colour) may be empty
                cx = np.bincount(flat, weights=xs, minlength=count + 1) / areas
                cy = np.bincount(flat, weights=ys, minlength=count + 1) / areas
            self._blobs[colour] = _Blobs(labels, areas, cx, cy)
        return self._blobs[colour]

    def min_area(self) -> int:
        return max(2, round(_MIN_AREA * self.cell_side**2))


def _classify(component: np.ndarray) -> str | None:
    """Circle, square or triangle (None: none of them) by overlap with ideal templates.

    Each template has the blob's area and centre of mass, so only the form is compared, at any
    scale. The overlap uses every pixel of the blob, so a few stray or missing edge pixels (noise,
    resampling blur) move it little, unlike features of the extremes such as a bounding box. The
    templates are rasterised at half coverage because that is what resampling a flat shape and
    snapping to the nearest colour produces: a small triangle loses its tip, and so does the
    template it is compared with.
    """
    rows, columns = np.nonzero(component)
    area = float(rows.size)
    cy, cx = rows.mean() + 0.5, columns.mean() + 0.5  # pixel i spans [i, i + 1)
    side = np.sqrt(area)  # of the square of this area
    triangle_side = np.sqrt(4 * area / np.sqrt(3))
    height = triangle_side * np.sqrt(3) / 2  # the centroid lies 2/3 of the height below the apex
    # A window around the centroid that holds every template (the triangle reaches furthest, to its
    # circumradius ~0.88 side); blob pixels outside it only add to the union, as they should.
    reach = int(np.ceil(0.88 * side)) + 2
    top, left, size = int(cy) - reach, int(cx) - reach, 2 * reach + 1
    keep = (rows >= top) & (rows < top + size) & (columns >= left) & (columns < left + size)
    blob = np.zeros((size, size), dtype=bool)
    blob[rows[keep] - top, columns[keep] - left] = True
    samples = int(np.clip(np.ceil(32 / side), 1, _MAX_SUPERSAMPLE))
    points = (np.arange(size)[:, None] + (np.arange(samples) + 0.5) / samples).reshape(-1)
    dy, dx = (points + top - cy)[:, None], (points + left - cx)[None, :]
    inside = {
        "circle": dx**2 + dy**2 <= area / np.pi,
        "square": (np.abs(dx) <= side / 2) & (np.abs(dy) <= side / 2),
        "triangle": (dy <= height / 3) & (np.abs(dx) <= (dy + 2 * height / 3) / height * triangle_side / 2),
    }
    iou = {}
    for name, covered in inside.items():
        template = covered.reshape(size, samples, size, samples).mean(axis=(1, 3)) >= 0.5
        overlap = np.count_nonzero(template & blob)
        iou[name] = overlap / (area + np.count_nonzero(template) - overlap)
    best = max(iou, key=iou.__getitem__)
    return best if iou[best] >= _MIN_IOU else None


def _check(analysis: _Analysis, claim: ShapeClaim) -> ClaimResult:
    if claim.colour not in COLOURS or claim.shape not in SHAPES or claim.cell not in POSITIONS:
        raise ValueError(f"not a shapes claim: {claim!r}")
    detected_colour = analysis.object_colour(claim.cell)
    blobs = analysis.blobs(claim.colour)
    labels = blobs.labels
    big = [k for k in range(1, blobs.areas.size) if blobs.areas[k] >= analysis.min_area()]

    # Position: some sizeable blob of the claimed colour has its centre of mass in the claimed
    # cell. Blobs, not raw pixels, so that a same-coloured shape in a neighbouring cell cannot
    # drag a centroid across the boundary; centroids, not mere overlap, so that a shape that only
    # grazes the cell from next door does not count.
    position = any(analysis.in_cell(claim.cell, float(blobs.cx[k]), float(blobs.cy[k])) for k in big)

    # Shape: the sizeable claimed-colour blob that covers the cell centre, or else the one with a
    # pixel nearest to it among those reaching into the cell; classified over its whole extent.
    detected_shape = None
    rows, columns = analysis.cell_box(claim.cell)
    inside = labels[rows, columns]
    candidates = [k for k in big if (inside == k).any()]
    if candidates:
        x, y = analysis.centre(claim.cell)
        chosen = int(labels[y, x])
        if chosen not in candidates:
            ys, xs = np.nonzero(np.isin(inside, candidates))
            nearest = np.argmin((ys + rows.start - y) ** 2 + (xs + columns.start - x) ** 2)
            chosen = int(inside[ys[nearest], xs[nearest]])
        detected_shape = _classify(labels == chosen)
    return ClaimResult(
        colour=detected_colour == claim.colour,
        shape=detected_shape == claim.shape,
        position=position,
        detected_colour=detected_colour,
        detected_shape=detected_shape,
    )


def check_claim(image: np.ndarray, claim: ShapeClaim) -> ClaimResult:
    """Check one claim against a uint8 [H, W, 3] image of any size.

    colour: pixels are snapped to the nearest of the palette and the image's background (median of
    a border ring); the largest sizeable blob of any palette colour centred in the claimed cell has
    the claimed colour (the object drawn there has the named colour).
    position: some 4-connected blob of claimed-colour pixels, at
    least 2% of a cell side squared, has its centre of mass inside the claimed cell.
    shape: that colour's blob covering (or nearest to) the cell centre overlaps an ideal shape of
    its own area and centre of mass best for the claimed kind, with intersection-over-union >= 0.75.
    """
    return _check(_Analysis(image), claim)


def score_alignment(images: Sequence[np.ndarray], captions: Sequence[str]) -> dict[str, float]:
    """Alignment of images with their captions, as fractions over all claims (and images).

    Returns colour_accuracy, shape_accuracy and position_accuracy (over all claims),
    image_accuracy (images whose every claim is right on all three axes), background_accuracy
    (images whose border median is nearest, among the set's backgrounds, to the named one; not part
    of image_accuracy, which is about the shapes), object_colour_accuracy (images whose largest
    object, wherever it is, has a colour the caption names: colour alone, without position), and
    the counts claims and images.
    """
    if len(images) != len(captions):
        raise ValueError(f"got {len(images)} images but {len(captions)} captions")
    if len(images) == 0:
        raise ValueError("score_alignment needs at least one image")
    background_rgb = np.array(list(BACKGROUNDS.values()), dtype=np.float32)
    totals = {"colour": 0, "shape": 0, "position": 0, "image": 0, "background": 0, "object_colour": 0, "claims": 0}
    for image, caption in zip(images, captions, strict=True):
        claims, background = parse_caption(caption)
        analysis = _Analysis(image)
        results = [_check(analysis, claim) for claim in claims]
        totals["claims"] += len(results)
        for axis in ("colour", "shape", "position"):
            totals[axis] += sum(getattr(result, axis) for result in results)
        totals["image"] += all(result.correct for result in results)
        nearest = int(((background_rgb - analysis.background) ** 2).sum(-1).argmin())
        totals["background"] += list(BACKGROUNDS)[nearest] == background
        totals["object_colour"] += analysis.object_colour() in {claim.colour for claim in claims}
    return {
        "colour_accuracy": totals["colour"] / totals["claims"],
        "shape_accuracy": totals["shape"] / totals["claims"],
        "position_accuracy": totals["position"] / totals["claims"],
        "image_accuracy": totals["image"] / len(images),
        "background_accuracy": totals["background"] / len(images),
        "object_colour_accuracy": totals["object_colour"] / len(images),
        "claims": float(totals["claims"]),
        "images": float(len(images)),
    }
