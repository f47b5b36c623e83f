"""Manifests, the latest pointer, fallback to an intact checkpoint, and pruning."""

from __future__ import annotations

import pytest

from gigatron.checkpoint.files import (
    LATEST,
    choose_resume_tag,
    list_tags,
    prune,
    tag_for_step,
    verify_manifest,
    write_manifest,
)


def make_tag(root, step: int, complete: bool = True) -> str:
    tag = tag_for_step(step)
    (root / tag / "sub").mkdir(parents=True)
    (root / tag / "weights.bin").write_bytes(bytes(range(256)) * (step + 1))
    (root / tag / "sub" / "rng.pt").write_bytes(b"rng")
    if complete:
        write_manifest(root / tag)
    return tag


def test_manifest_detects_truncation_corruption_and_loss(tmp_path) -> None:
    tag = make_tag(tmp_path, 1)
    assert verify_manifest(tmp_path / tag) is None
    weights = tmp_path / tag / "weights.bin"
    data = weights.read_bytes()
    weights.write_bytes(data[:-1])
    assert "bytes" in verify_manifest(tmp_path / tag)
    weights.write_bytes(data[:-1] + b"\x00")
    assert "sha256" in verify_manifest(tmp_path / tag)
    weights.unlink()
    assert "missing" in verify_manifest(tmp_path / tag)


def test_resume_prefers_latest_and_falls_back_past_damage(tmp_path) -> None:
    for step in (2, 4, 6):
        make_tag(tmp_path, step)
    make_tag(tmp_path, 8, complete=False)  # a save that crashed: newer than latest, never used
    (tmp_path / LATEST).write_text(tag_for_step(6))
    assert choose_resume_tag(tmp_path) == tag_for_step(6)
    (tmp_path / tag_for_step(6) / "weights.bin").write_bytes(b"short")
    messages = []
    assert choose_resume_tag(tmp_path, log=messages.append) == tag_for_step(4)
    assert "step_00000006" in messages[0]


def test_no_checkpoint_means_fresh_start_but_all_damaged_is_an_error(tmp_path) -> None:
    assert choose_resume_tag(tmp_path) is None
    make_tag(tmp_path, 3)
    (tmp_path / LATEST).write_text(tag_for_step(3))
    (tmp_path / tag_for_step(3) / "weights.bin").unlink()
    with pytest.raises(RuntimeError, match="no intact checkpoint"):
        choose_resume_tag(tmp_path, log=lambda _: None)


def test_prune_keeps_newest_complete_and_current(tmp_path) -> None:
    for step in (1, 2, 3, 4):
        make_tag(tmp_path, step)
    make_tag(tmp_path, 0, complete=False)
    removed = prune(tmp_path, keep_last=2, current=tag_for_step(4))
    assert sorted(removed) == [tag_for_step(0), tag_for_step(1), tag_for_step(2)]
    assert list_tags(tmp_path) == [tag_for_step(3), tag_for_step(4)]
