"""Write and load image-text WebDataset shards.

A dataset directory holds `manifest.json` and tars `train-NNNNNN.tar`. Sample i has key
f"{i:010d}" and three members: `<key>.jpg` or `<key>.png` (the original encoded bytes; WebP is
re-encoded to PNG), `<key>.txt` (the caption, UTF-8) and `<key>.json`
({"width", "height", "source"}, the size as displayed, i.e. after EXIF orientation).

    {
      "format": "gigatron-image-shards/1",
      "num_samples": N,
      "skipped": k, "skipped_reasons": {"missing_caption": 1, ...},
      "skipped_examples": [{"reason": "...", "error": "..."}],   (at most 20)
      "inputs": {"path": "...", "kind": "directory" | "jsonl"},
      "samples_per_shard": 1000,
      "splits": {"train": {"num_samples": N,
                           "shards": [{"file": "train-000000.tar", "samples": n, "bytes": b, "sha256": h}]}},
      "stats": {"width": {"min", "max", "mean"}, "height": {...}, "aspect_ratio": {...},
                "image_bytes": B, "formats": {"jpg": n, "png": m}}
    }
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from gigatron.data.errors import DataError
from gigatron.data.image_pipeline import oriented_size
from gigatron.data.manifest import MANIFEST_NAME, ShardInfo
from gigatron.data.tar_writer import RollingTarWriter

IMAGE_FORMAT = "gigatron-image-shards/1"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
SPLIT = "train"
ON_ERROR = ("raise", "skip")
# PIL format name -> member extension; WebP is re-encoded because not every consumer decodes it.
_STORED_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "png"}
_MAX_SKIPPED_EXAMPLES = 20


class _Skip(DataError):
    """A bad input item; `reason` is the manifest's per-reason key."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class _Item:
    """One input before validation: an image path and where its caption comes from."""

    image: Path
    caption_file: Path | None  # directory inputs: the same-stem .txt
    caption: str | None  # jsonl inputs: the caption string
    origin: str  # what error messages name: the image path, or "<jsonl>:line N (<image>)"
    bad_line: str | None = None  # jsonl inputs: why the line could not be parsed


@dataclass(frozen=True)
class _Sample:
    data: bytes
    ext: str
    caption: str
    width: int
    height: int
    source: str


@dataclass(frozen=True)
class ImageDataset:
    """A parsed, checked image-shard manifest."""

    root: Path
    splits: dict[str, list[ShardInfo]]
    raw: dict[str, Any]

    def num_samples(self, split: str = SPLIT) -> int:
        """Samples in a split (0 if the split is absent)."""
        return sum(s.samples for s in self.splits.get(split, []))


# ---------------------------------------------------------------- inputs


def _directory_items(root: Path) -> Iterator[_Item]:
    images = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise DataError(f"{root}: no input images; expected files ending in {', '.join(IMAGE_SUFFIXES)} "
                        "(each with a same-stem .txt caption)")
    for image in images:
        yield _Item(image, image.with_suffix(".txt"), None, str(image))


def _jsonl_items(path: Path) -> Iterator[_Item]:
    base = path.parent
    seen = 0
    with open(path, "rb") as handle:
        for number, raw_line in enumerate(handle, start=1):
            where = f"{path}:line {number}"
            if not raw_line.strip():
                continue
            seen += 1
            try:
                # utf-8-sig: editors that add a BOM put it before line 1, which json.loads rejects.
                entry = json.loads(raw_line.decode("utf-8-sig"))
            except (UnicodeDecodeError, ValueError) as exc:
                yield _bad_line(where, f"not a valid UTF-8 JSON object ({exc})")
                continue
            if not isinstance(entry, dict):
                yield _bad_line(where, f"expected a JSON object, got {type(entry).__name__}")
                continue
            image, caption = entry.get("path"), entry.get("caption")
            if not isinstance(image, str) or not image:
                yield _bad_line(where, f"'path' must be a non-empty string, got {image!r}")
                continue
            if not isinstance(caption, str):
                yield _bad_line(where, f"'caption' must be a string, got {caption!r}")
                continue
            yield _Item(base / image, None, caption, f"{where} ({base / image})")
    if not seen:
        raise DataError(f"{path}: no input images; expected lines like "
                        '{"path": "img.jpg", "caption": "a red circle"}')


def _bad_line(where: str, message: str) -> _Item:
    # Carried as an item so that raise-or-skip is decided in one place (_prepare raises it).
    return _Item(Path(), None, None, where, bad_line=f"{where}: {message}")


def _items(inputs: str | Path) -> tuple[str, Iterator[_Item]]:
    """("directory" | "jsonl", the input items in order); errors for a missing or unsupported path."""
    path = Path(inputs)
    if path.is_dir():
        return "directory", _directory_items(path)
    if path.is_file() and path.suffix.lower() == ".jsonl":
        return "jsonl", _jsonl_items(path)
    if not path.exists():
        raise DataError(f"{path}: input not found; expected a directory of images with .txt captions "
                        "or a .jsonl file of {\"path\", \"caption\"} lines")
    raise DataError(f"{path}: unsupported input; expected a directory of images with .txt captions "
                    "or a file ending in .jsonl")


# ---------------------------------------------------------------- validation


def _read_caption(item: _Item) -> str:
    if item.caption_file is not None:
        if not item.caption_file.is_file():
            raise _Skip("missing_caption", f"{item.image}: caption file {item.caption_file} not found "
                                           "(every image needs a same-stem .txt caption)")
        try:
            caption = item.caption_file.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise _Skip("non_utf8_caption", f"{item.caption_file}: caption is not valid UTF-8 ({exc})") from exc
    else:
        caption = item.caption or ""
        try:
            caption.encode("utf-8")
        except UnicodeEncodeError as exc:  # lone surrogates from JSON "\ud800" escapes
            raise _Skip("non_utf8_caption", f"{item.origin}: caption cannot be encoded as UTF-8 ({exc})") from exc
    caption = caption.strip()
    if not caption:
        where = item.caption_file if item.caption_file is not None else item.origin
        raise _Skip("empty_caption", f"{where}: caption is empty")
    return caption


def _read_image(item: _Item) -> tuple[bytes, str, int, int]:
    try:
        data = item.image.read_bytes()
    except OSError as exc:
        raise _Skip("missing_image", f"{item.origin}: image cannot be read ({exc})") from exc
    try:
        with Image.open(io.BytesIO(data)) as probe:
            kind = probe.format
            if kind not in _STORED_EXT:
                raise _Skip("bad_image", f"{item.origin}: image format {kind} is not supported; "
                                         "valid formats: JPEG, PNG, WEBP")
            probe.verify()
        # verify() leaves the image unusable and skips pixel data; a full decode catches truncation.
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            width, height = oriented_size(image)
            if kind == "WEBP":
                # PNG output drops EXIF, so bake the orientation into the pixels to keep width/height true.
                out = io.BytesIO()
                ImageOps.exif_transpose(image).save(out, format="PNG")
                data = out.getvalue()
    except _Skip:
        raise
    # PIL reports corrupt data with many exception types (OSError, SyntaxError, ValueError, ...).
    except Exception as exc:
        raise _Skip("bad_image", f"{item.origin}: not a readable image ({type(exc).__name__}: {exc})") from exc
    return data, _STORED_EXT[kind], width, height


def _prepare(item: _Item) -> _Sample:
    if item.bad_line is not None:
        raise _Skip("bad_jsonl_line", item.bad_line)
    if not item.image.is_file():
        raise _Skip("missing_image", f"{item.origin}: image file not found")
    caption = _read_caption(item)
    data, ext, width, height = _read_image(item)
    return _Sample(data, ext, caption, width, height, str(item.image))


# ---------------------------------------------------------------- writing


class _ShardWriter(RollingTarWriter):
    """Image, caption and size metadata per sample."""

    def __init__(self, directory: Path, samples_per_shard: int) -> None:
        super().__init__(directory, SPLIT, samples_per_shard)

    def write(self, key: str, sample: _Sample) -> None:  # type: ignore[override]
        meta = {"width": sample.width, "height": sample.height, "source": sample.source}
        super().write({"__key__": key, sample.ext: sample.data, "txt": sample.caption.encode("utf-8"),
                       "json": json.dumps(meta, ensure_ascii=False).encode("utf-8")})


def _stats(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "max": max(values), "mean": round(sum(values) / len(values), 4)}


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _is_dataset_file(name: str) -> bool:
    return (name in (MANIFEST_NAME, MANIFEST_NAME + ".tmp")
            or (name.startswith(f"{SPLIT}-") and (name.endswith(".tar") or name.endswith(".tar.tmp"))))


def check_destination(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: output exists and is not a directory; pass a new or empty directory")
    if not out.is_dir():
        return
    names = sorted(p.name for p in out.iterdir())
    if not names:
        return
    foreign = [n for n in names if not _is_dataset_file(n)]
    if foreign:
        # Overwriting swaps the whole directory, so anything else in it would be lost: refuse.
        raise DataError(f"{out}: output directory holds files that are not part of an image dataset "
                        f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); "
                        "pass a new or empty directory")
    if not overwrite:
        raise DataError(f"{out}: already holds a dataset ({', '.join(names[:3])}"
                        f"{', ...' if len(names) > 3 else ''}); pass overwrite=True (--overwrite) to replace it")


def swap_into_place(built: Path, out: Path) -> None:
    if not out.exists():
        os.replace(built, out)
        return
    # Moved (not copied) aside into a fresh directory, so the old dataset is never half-deleted.
    trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    old = trash / out.name
    os.replace(out, old)
    try:
        os.replace(built, out)
    except OSError:
        os.replace(old, out)  # put the previous dataset back before reporting the failure
        shutil.rmtree(trash, ignore_errors=True)
        raise
    shutil.rmtree(trash, ignore_errors=True)


def _build(items: Iterator[_Item], build_dir: Path, samples_per_shard: int, skip: bool) -> dict[str, Any]:
    writer = _ShardWriter(build_dir, samples_per_shard)
    reasons: Counter[str] = Counter()
    examples: list[dict[str, str]] = []
    widths: list[int] = []
    heights: list[int] = []
    formats: Counter[str] = Counter()
    image_bytes = 0
    try:
        for item in items:
            try:
                sample = _prepare(item)
            except _Skip as exc:
                if not skip:
                    raise
                reasons[exc.reason] += 1
                if len(examples) < _MAX_SKIPPED_EXAMPLES:
                    examples.append({"reason": exc.reason, "error": str(exc)})
                continue
            writer.write(f"{len(widths):010d}", sample)
            widths.append(sample.width)
            heights.append(sample.height)
            formats[sample.ext] += 1
            image_bytes += len(sample.data)
        writer.close()
    finally:
        writer.abort()
    if not widths:
        detail = ", ".join(f"{r}: {n}" for r, n in sorted(reasons.items()))
        raise DataError(f"no valid input images: all {sum(reasons.values())} were skipped ({detail})")
    return {
        "num_samples": len(widths),
        "skipped": sum(reasons.values()),
        "skipped_reasons": dict(sorted(reasons.items())),
        "skipped_examples": examples,
        "splits": {SPLIT: {"num_samples": len(widths), "shards": writer.shards}},
        "stats": {"width": _stats(widths), "height": _stats(heights),
                  "aspect_ratio": _stats([round(w / h, 4) for w, h in zip(widths, heights, strict=True)]),
                  "image_bytes": image_bytes, "formats": dict(sorted(formats.items()))},
    }


def write_image_shards(inputs: str, out: Path, samples_per_shard: int = 1000, on_error: str = "raise",
                       overwrite: bool = False) -> dict:
    """Validate captioned images and write them as WebDataset shards plus `manifest.json` under `out`.

    `inputs` is a directory (images *.jpg/*.jpeg/*.png/*.webp, each with a same-stem .txt caption,
    taken in name order) or a .jsonl file of {"path", "caption"} lines (paths relative to the file).
    A bad item (missing/empty/non-UTF-8 caption, missing or corrupt image, bad jsonl line) raises
    DataError naming it, or with on_error="skip" is left out and counted in the manifest.
    The dataset is built in a temporary sibling directory and moved into place only when complete,
    so a failure never leaves a partial dataset and never touches an existing one. An existing
    dataset in `out` is replaced only with overwrite=True. Returns the manifest.
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    if not isinstance(samples_per_shard, int) or isinstance(samples_per_shard, bool) or samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be a positive integer, got {samples_per_shard!r}")
    out = Path(out)
    check_destination(out, overwrite)
    kind, items = _items(inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    build_dir = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        manifest: dict[str, Any] = {"format": IMAGE_FORMAT, "inputs": {"path": str(inputs), "kind": kind},
                                    "samples_per_shard": samples_per_shard}
        manifest.update(_build(items, build_dir, samples_per_shard, on_error == "skip"))
        write_json_atomic(build_dir / MANIFEST_NAME, manifest)
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # an empty target is replaced by the finished build in one rename
        swap_into_place(build_dir, out)
    except BaseException:
        shutil.rmtree(build_dir, ignore_errors=True)
        raise
    return manifest


# ---------------------------------------------------------------- reading


def _require(raw: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in raw:
        raise DataError(f"{where}: missing key '{key}'")
    if not isinstance(raw[key], kind) or isinstance(raw[key], bool):
        raise DataError(f"{where}: key '{key}' must be {getattr(kind, '__name__', kind)}, got {raw[key]!r}")
    return raw[key]


def load_image_dataset(root: str | Path) -> ImageDataset:
    """Read and check `<root>/manifest.json` of an image-shard dataset; errors name the file and key."""
    root = Path(root)
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {root} a directory written by "
                                "`gigatron data shard-images`?")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict) or raw.get("format") != IMAGE_FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise DataError(f"{path}: format is {found!r}, expected {IMAGE_FORMAT!r}")
    total = _require(raw, "num_samples", int, str(path))
    splits: dict[str, list[ShardInfo]] = {}
    for name, split in _require(raw, "splits", dict, str(path)).items():
        if not isinstance(split, dict):
            raise DataError(f"{path}: splits.{name} must be an object, got {split!r}")
        shards = []
        for i, entry in enumerate(_require(split, "shards", list, f"{path}: splits.{name}")):
            try:
                shards.append(ShardInfo(root / entry["file"], int(entry["samples"]), int(entry["bytes"]),
                                        str(entry["sha256"])))
            except (KeyError, TypeError, ValueError) as exc:
                raise DataError(f"{path}: splits.{name}.shards[{i}] is malformed ({exc!r}); expected "
                                '{"file", "samples", "bytes", "sha256"}') from exc
        splits[name] = shards
    if SPLIT not in splits:
        raise DataError(f"{path}: splits has no '{SPLIT}' split (found {', '.join(splits) or 'none'})")
    counted = sum(s.samples for shards in splits.values() for s in shards)
    if counted != total:
        raise DataError(f"{path}: num_samples is {total} but the shards hold {counted} samples")
    return ImageDataset(root, splits, raw)
