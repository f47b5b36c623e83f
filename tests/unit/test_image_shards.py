"""write_image_shards / load_image_dataset: round trip, bad inputs, skip counting, overwrite safety."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from gigatron.data.errors import DataError
from gigatron.data.image_shards import IMAGE_FORMAT, load_image_dataset, write_image_shards
from gigatron.data.manifest import verify_shard


def _encode(size: tuple[int, int], fmt: str, colour: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format=fmt)
    return out.getvalue()


def _image_dir(root: Path) -> dict[str, tuple[bytes, str, tuple[int, int]]]:
    """a.jpg, b.png, c.webp with captions; returns name -> (bytes, caption, (w, h))."""
    root.mkdir()
    specs = {"a.jpg": ((64, 32), "JPEG", "a wide red thing"), "b.png": ((20, 40), "PNG", "ünïcode caption ✓"),
             "c.webp": ((30, 30), "WEBP", "a square webp")}
    made = {}
    for name, (size, fmt, caption) in specs.items():
        data = _encode(size, fmt)
        (root / name).write_bytes(data)
        (root / name).with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
        made[name] = (data, caption, size)
    return made


def _members(tar_path: Path) -> dict[str, bytes]:
    with tarfile.open(tar_path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def _all_members(out: Path) -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    for tar_path in sorted(out.glob("train-*.tar")):
        members.update(_members(tar_path))
    return members


def test_directory_round_trip(tmp_path: Path) -> None:
    made = _image_dir(tmp_path / "in")
    out = tmp_path / "out"
    manifest = write_image_shards(str(tmp_path / "in"), out, samples_per_shard=2)
    assert manifest["format"] == IMAGE_FORMAT
    assert (manifest["num_samples"], manifest["skipped"]) == (3, 0)
    assert [s["samples"] for s in manifest["splits"]["train"]["shards"]] == [2, 1]
    assert json.loads((out / "manifest.json").read_text()) == manifest
    members = _all_members(out)
    assert len(members) == 9
    for i, name in enumerate(sorted(made)):
        data, caption, (w, h) = made[name]
        key = f"{i:010d}"
        assert members[f"{key}.txt"].decode("utf-8") == caption
        meta = json.loads(members[f"{key}.json"])
        assert (meta["width"], meta["height"]) == (w, h)
        assert meta["source"] == str(tmp_path / "in" / name)
        if name.endswith(".webp"):
            # Re-encoded to PNG with the same pixels.
            png = Image.open(io.BytesIO(members[f"{key}.png"]))
            assert png.format == "PNG" and png.size == (w, h)
            assert png.convert("RGB").tobytes() == Image.open(io.BytesIO(data)).convert("RGB").tobytes()
        else:
            ext = "jpg" if name.endswith(".jpg") else "png"
            assert members[f"{key}.{ext}"] == data  # the original encoded bytes, untouched
    dataset = load_image_dataset(out)
    assert dataset.num_samples("train") == 3
    assert all(verify_shard(s) is None for s in dataset.splits["train"])
    assert not list(tmp_path.glob(".out.*"))  # no temp directories left behind


def test_jsonl_round_trip_and_reproducible(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    data = _encode((48, 16), "PNG")
    (tmp_path / "imgs" / "x.png").write_bytes(data)
    jsonl = tmp_path / "captions.jsonl"
    # A leading BOM (some editors add one) and a blank line are both fine.
    jsonl.write_text("\ufeff" + json.dumps({"path": "imgs/x.png", "caption": "  one  "}) + "\n\n"
                     + json.dumps({"path": str(tmp_path / "imgs" / "x.png"), "caption": "two"}) + "\n")
    first = write_image_shards(str(jsonl), tmp_path / "o1")
    second = write_image_shards(str(jsonl), tmp_path / "o2")
    assert first["num_samples"] == 2
    members = _all_members(tmp_path / "o1")
    assert members["0000000000.png"] == data and members["0000000001.png"] == data
    assert [members[f"000000000{i}.txt"] for i in (0, 1)] == [b"one", b"two"]
    # Same inputs, same tar bytes: shard checksums are reproducible.
    assert first["splits"] == second["splits"]


def _expect_error(inputs: Path, out: Path, *fragments: str) -> None:
    with pytest.raises(DataError) as info:
        write_image_shards(str(inputs), out)
    for fragment in fragments:
        assert fragment in str(info.value)
    assert not out.exists()  # nothing half-written
    assert not list(out.parent.glob(f".{out.name}.*"))


def test_missing_caption_names_the_file(tmp_path: Path) -> None:
    _image_dir(tmp_path / "in")
    (tmp_path / "in" / "b.txt").unlink()
    _expect_error(tmp_path / "in", tmp_path / "out", str(tmp_path / "in" / "b.txt"), "not found")


def test_empty_caption(tmp_path: Path) -> None:
    _image_dir(tmp_path / "in")
    (tmp_path / "in" / "a.txt").write_text("  \n")
    _expect_error(tmp_path / "in", tmp_path / "out", str(tmp_path / "in" / "a.txt"), "empty")


def test_non_utf8_caption(tmp_path: Path) -> None:
    _image_dir(tmp_path / "in")
    (tmp_path / "in" / "c.txt").write_bytes(b"caf\xe9")
    _expect_error(tmp_path / "in", tmp_path / "out", str(tmp_path / "in" / "c.txt"), "UTF-8")


def test_truncated_png(tmp_path: Path) -> None:
    _image_dir(tmp_path / "in")
    data = _encode((64, 64), "PNG")
    (tmp_path / "in" / "b.png").write_bytes(data[: len(data) // 2])
    _expect_error(tmp_path / "in", tmp_path / "out", str(tmp_path / "in" / "b.png"), "not a readable image")


def test_bad_jsonl_line_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(_encode((8, 8), "PNG"))
    jsonl = tmp_path / "captions.jsonl"
    jsonl.write_text(json.dumps({"path": "x.png", "caption": "ok"}) + "\n{not json\n")
    _expect_error(jsonl, tmp_path / "out", f"{jsonl}:line 2")
    jsonl.write_text(json.dumps({"path": "x.png"}) + "\n")
    _expect_error(jsonl, tmp_path / "out", f"{jsonl}:line 1", "'caption'")
    jsonl.write_text(json.dumps({"path": "missing.png", "caption": "gone"}) + "\n")
    _expect_error(jsonl, tmp_path / "out", f"{jsonl}:line 1", "missing.png", "not found")


def test_no_images(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "orphan.txt").write_text("a caption without an image")
    _expect_error(tmp_path / "in", tmp_path / "out", "no input images")
    _expect_error(tmp_path / "nowhere", tmp_path / "out", "not found")


def test_skip_counts_each_reason(tmp_path: Path) -> None:
    made = _image_dir(tmp_path / "in")
    (tmp_path / "in" / "a.txt").unlink()
    (tmp_path / "in" / "d.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "in" / "d.txt").write_text("corrupt")
    (tmp_path / "in" / "e.png").write_bytes(_encode((8, 8), "PNG"))
    (tmp_path / "in" / "e.txt").write_bytes(b"\xff\xfe")
    manifest = write_image_shards(str(tmp_path / "in"), tmp_path / "out", on_error="skip")
    assert manifest["num_samples"] == 2  # b.png and c.webp
    assert manifest["skipped"] == 3
    assert manifest["skipped_reasons"] == {"bad_image": 1, "missing_caption": 1, "non_utf8_caption": 1}
    assert len(manifest["skipped_examples"]) == 3
    members = _all_members(tmp_path / "out")
    assert members["0000000000.png"] == made["b.png"][0]  # keys stay dense after skips


def test_skip_bad_jsonl_line(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(_encode((8, 8), "PNG"))
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("[1, 2]\n" + json.dumps({"path": "x.png", "caption": "fine"}) + "\n")
    manifest = write_image_shards(str(jsonl), tmp_path / "out", on_error="skip")
    assert (manifest["num_samples"], manifest["skipped_reasons"]) == (1, {"bad_jsonl_line": 1})


def test_all_skipped_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(_encode((8, 8), "PNG"))
    with pytest.raises(DataError, match="all 1 were skipped"):
        write_image_shards(str(tmp_path / "in"), tmp_path / "out", on_error="skip")


def test_overwrite_protection_and_failed_overwrite_keeps_old(tmp_path: Path) -> None:
    _image_dir(tmp_path / "in")
    out = tmp_path / "out"
    write_image_shards(str(tmp_path / "in"), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(DataError, match="overwrite"):
        write_image_shards(str(tmp_path / "in"), out)
    # A failing overwrite leaves the old dataset exactly as it was.
    (tmp_path / "in" / "a.txt").unlink()
    with pytest.raises(DataError, match="a.txt"):
        write_image_shards(str(tmp_path / "in"), out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    manifest = write_image_shards(str(tmp_path / "in"), out, overwrite=True, on_error="skip")
    assert load_image_dataset(out).num_samples() == manifest["num_samples"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]


def test_refuses_directory_with_foreign_files(tmp_path: Path) -> None:
    _image_dir(tmp_path / "in")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.md").write_text("mine")
    with pytest.raises(DataError, match="notes.md"):
        write_image_shards(str(tmp_path / "in"), tmp_path / "out", overwrite=True)
    assert (tmp_path / "out" / "notes.md").read_text() == "mine"


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="on_error"):
        write_image_shards(str(tmp_path), tmp_path / "out", on_error="ignore")
    with pytest.raises(ValueError, match="samples_per_shard"):
        write_image_shards(str(tmp_path), tmp_path / "out", samples_per_shard=0)


def test_load_image_dataset_checks(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        load_image_dataset(tmp_path)
    path = tmp_path / "manifest.json"
    path.write_text("{")
    with pytest.raises(DataError, match="not valid JSON"):
        load_image_dataset(tmp_path)
    path.write_text(json.dumps({"format": "gigatron-text-shards/1"}))
    with pytest.raises(DataError, match="expected 'gigatron-image-shards/1'"):
        load_image_dataset(tmp_path)
    path.write_text(json.dumps({"format": IMAGE_FORMAT, "splits": {}}))
    with pytest.raises(DataError, match="missing key 'num_samples'"):
        load_image_dataset(tmp_path)
    path.write_text(json.dumps({"format": IMAGE_FORMAT, "num_samples": 1,
                                "splits": {"train": {"shards": [{"file": "t.tar", "samples": 1}]}}}))
    with pytest.raises(DataError, match=r"splits.train.shards\[0\] is malformed"):
        load_image_dataset(tmp_path)
    path.write_text(json.dumps({"format": IMAGE_FORMAT, "num_samples": 5, "splits": {"train": {"shards": [
        {"file": "t.tar", "samples": 1, "bytes": 1, "sha256": "x"}]}}}))
    with pytest.raises(DataError, match="num_samples is 5 but the shards hold 1"):
        load_image_dataset(tmp_path)


def test_unsupported_format_and_misnamed_file(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    png = _encode((8, 8), "PNG")
    (tmp_path / "in" / "looks.jpg").write_bytes(png)  # PNG content under a .jpg name
    (tmp_path / "in" / "looks.txt").write_text("misnamed")
    (tmp_path / "in" / "z.png").write_bytes(_encode((8, 8), "GIF"))
    (tmp_path / "in" / "z.txt").write_text("a gif")
    manifest = write_image_shards(str(tmp_path / "in"), tmp_path / "out", on_error="skip")
    assert manifest["skipped_reasons"] == {"bad_image": 1}
    assert "format GIF is not supported" in manifest["skipped_examples"][0]["error"]
    assert _all_members(tmp_path / "out")["0000000000.png"] == png  # stored under its real format
