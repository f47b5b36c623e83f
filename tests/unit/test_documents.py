"""Reading documents from .txt / .jsonl / .parquet files, and how bad data is reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gigatron.data.documents import check_utf8_file, iter_documents
from gigatron.data.errors import DataError


def _read(patterns: list[str], on_error: str = "raise") -> tuple[list[tuple[str, str]], dict]:
    stats: dict = {}
    return list(iter_documents(patterns, on_error, stats)), stats


def test_txt_one_document_per_file_in_sorted_glob_order(tmp_path: Path) -> None:
    for name, text in (("b.txt", "second"), ("a.txt", "first\nline two"), ("c.txt", "")):
        (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / "z.txt").write_text("explicit", encoding="utf-8")
    docs, stats = _read([str(tmp_path / "z.txt"), str(tmp_path / "[abc].txt")])
    assert [(Path(p).name, t) for p, t in docs] == [
        ("z.txt", "explicit"), ("a.txt", "first\nline two"), ("b.txt", "second"), ("c.txt", "")]
    assert stats["documents"] == 4 and stats["skipped_documents"] == 0
    assert [Path(s["path"]).name for s in stats["sources"]] == ["z.txt", "a.txt", "b.txt", "c.txt"]
    assert stats["sources"][0]["bytes"] == 8 and len(stats["sources"][0]["sha256"]) == 64


def test_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "one", "id": 1}) + "\n\n   \n" + json.dumps({"text": "twö"}) + "\n")
    docs, stats = _read([str(path)])
    assert [t for _, t in docs] == ["one", "twö"]
    assert stats["documents"] == 2


@pytest.mark.parametrize("line, message", [
    ('{"text": "ok"', r"d\.jsonl:2: not valid JSON"),
    ('{"body": "x"}', r"d\.jsonl:2: expected a JSON object with a string field 'text', got no 'text' field"),
    ('{"text": 5}', r"d\.jsonl:2: .*'text' = 5"),
    ('["text"]', r"d\.jsonl:2: .*got a list"),
    ('{"text": "\\ud800"}', r"d\.jsonl:2: text holds an unpaired surrogate"),
])
def test_bad_jsonl_line_is_named(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "good"}\n' + line + '\n{"text": "after"}\n')
    with pytest.raises(DataError, match=message):
        _read([str(path)])
    docs, stats = _read([str(path)], on_error="skip")
    assert [t for _, t in docs] == ["good", "after"]
    assert stats["skipped_documents"] == 1 and stats["documents"] == 2
    assert "d.jsonl:2" in stats["skipped_examples"][0]


def test_non_utf8_is_named_with_byte_offset(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("fine", encoding="utf-8")
    bad = tmp_path / "b.txt"
    bad.write_bytes("héllo ".encode() + b"\xc3\x28 tail")
    with pytest.raises(DataError, match=r"b\.txt: not valid UTF-8 at byte offset 7"):
        _read([str(tmp_path / "*.txt")])
    with pytest.raises(DataError, match="byte offset 7"):
        check_utf8_file(bad)
    docs, stats = _read([str(tmp_path / "*.txt")], on_error="skip")
    assert [t for _, t in docs] == ["fine"]
    assert stats == {**stats, "documents": 1, "skipped_documents": 1}

    lines = tmp_path / "c.jsonl"
    lines.write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    with pytest.raises(DataError, match=r"c\.jsonl:2: not valid UTF-8 at byte offset 25"):
        _read([str(lines)])


def test_check_utf8_offset_across_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gigatron.data.documents as documents

    monkeypatch.setattr(documents, "_CHUNK", 4)
    path = tmp_path / "a.txt"
    path.write_bytes("abcé".encode() + "ü".encode() + b"xy\xff")  # é straddles the first chunk boundary
    with pytest.raises(DataError, match="byte offset 9"):
        check_utf8_file(path)
    path.write_bytes("abcé".encode() + b"\xc3")  # truncated sequence at the end of the file
    with pytest.raises(DataError, match="byte offset 5"):
        check_utf8_file(path)


def test_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["alpha", "beta", None, "gamma"], "n": [1, 2, 3, 4]}), path,
                   row_group_size=2)
    with pytest.raises(DataError, match=r"d\.parquet: row 2: 'text' is null"):
        _read([str(path)])
    docs, stats = _read([str(path)], on_error="skip")
    assert [t for _, t in docs] == ["alpha", "beta", "gamma"]
    assert stats["skipped_documents"] == 1

    binary = tmp_path / "b.parquet"
    pq.write_table(pa.table({"text": pa.array([b"ok", b"ab\xffc"], type=pa.binary())}), binary)
    with pytest.raises(DataError, match=r"b\.parquet: row 1: not valid UTF-8 at byte offset 2"):
        _read([str(binary)])

    other = tmp_path / "o.parquet"
    pq.write_table(pa.table({"body": ["x"]}), other)
    with pytest.raises(DataError, match=r"o\.parquet: no 'text' column; columns are: body"):
        _read([str(other)])


def test_empty_glob_and_unsupported_extension(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"'.*\*\.md' matches no files"):
        iter_documents([str(tmp_path / "a.txt"), str(tmp_path / "*.md")], "raise", {})
    (tmp_path / "notes.csv").write_text("x")
    with pytest.raises(DataError, match=r"notes\.csv: unsupported file type '\.csv'; supported: .txt, .jsonl, .parquet"):
        iter_documents([str(tmp_path / "*")], "raise", {})
    with pytest.raises(ValueError, match="on_error must be one of raise, skip"):
        iter_documents([str(tmp_path / "a.txt")], "ignore", {})
