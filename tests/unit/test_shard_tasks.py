"""Array builds: N tasks each tokenize their input files, `merge` writes one manifest, and the
dataset is byte-identical for every N."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import numpy as np
import pytest

from gigatron.commands import main
from gigatron.data.errors import DataError
from gigatron.data.manifest import load_text_dataset
from gigatron.data.shard_tasks import TASKS_DIR, merge_shard_tasks, task_from_environment, write_shard_task
from gigatron.data.text_shards import write_text_shards
from gigatron.data.token_source import TokenShardSource
from tests.http_store import local_s3

OPTIONS = {"samples_per_shard": 16, "valid_fraction": 0.1, "workers": 1, "log": lambda text: None}


@pytest.fixture
def inputs(tmp_path) -> list[str]:
    rng = np.random.default_rng(0)
    folder = tmp_path / "corpus"
    folder.mkdir()
    words = ["gigatron", "shard", "array", "merge", "token", "loader", "cache", "node"]
    for i in range(7):  # unequal sizes: some files fill several shards, one none
        with open(folder / f"part-{i}.jsonl", "w") as handle:
            for _ in range(int(rng.integers(0 if i == 3 else 5, 60))):
                handle.write(json.dumps({"text": " ".join(rng.choice(words, 30))}) + "\n")
    return [str(folder / "part-*.jsonl")]


def _build(inputs: list[str], out: Path, tasks: int, order: list[int] | None = None) -> dict:
    for i in order if order is not None else range(tasks):
        write_shard_task(inputs, "bytes", 31, out, i, tasks, **OPTIONS)
    return merge_shard_tasks(out, log=lambda text: None)


def _same_tree(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    _, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert not mismatch and not errors, (mismatch, errors)


def test_the_dataset_is_byte_identical_for_any_number_of_tasks(inputs, tmp_path):
    one = _build(inputs, tmp_path / "n1", 1)
    _build(inputs, tmp_path / "n3", 3, order=[2, 0, 1])  # tasks finish in any order
    _build(inputs, tmp_path / "n9", 9)  # more tasks than files: some do nothing
    _same_tree(tmp_path / "n1", tmp_path / "n3")
    _same_tree(tmp_path / "n1", tmp_path / "n9")
    assert not (tmp_path / "n3" / TASKS_DIR).exists()
    # Every file's tokens are there: each file packs its own samples, dropping only its tail.
    assert one["total_tokens"] == one["splits"]["train"]["num_tokens"] + one["splits"]["valid"]["num_tokens"] \
        + one["dropped_tokens"]
    assert one["splits"]["valid"]["num_samples"] > 0 and len(one["sources"]) == 7
    data = load_text_dataset(tmp_path / "n3")
    source = TokenShardSource(data, "train")
    assert len(source) == one["splits"]["train"]["num_samples"] and source[len(source) - 1].shape == (32,)
    assert main(["data", "inspect", str(tmp_path / "n3"), "--samples", "2"]) == 0


def test_what_differs_from_a_single_stream_build_is_only_the_packing(inputs, tmp_path):
    array = _build(inputs, tmp_path / "array", 2)
    stream = write_text_shards(inputs, "bytes", 31, tmp_path / "stream", samples_per_shard=16, valid_fraction=0.1,
                               workers=1)
    assert array["total_tokens"] == stream["total_tokens"] and array["documents"] == stream["documents"]
    assert array["sources"] == stream["sources"]
    # Tails are dropped per file (7 files, up to 31 tokens each) rather than once.
    assert stream["dropped_tokens"] <= array["dropped_tokens"] <= 7 * 31
    assert array["packing"] == "per input file" and "file u" in array["split_rule"]


def test_merge_names_the_tasks_that_did_not_finish(inputs, tmp_path):
    out = tmp_path / "out"
    for i in (0, 2, 4):
        write_shard_task(inputs, "bytes", 31, out, i, 5, **OPTIONS)
    with pytest.raises(DataError, match=r"tasks 1,3 of 5 did not finish"):
        merge_shard_tasks(out)
    write_shard_task(inputs, "bytes", 31, out, 1, 5, **{**OPTIONS, "valid_fraction": 0.2})
    with pytest.raises(DataError, match=r"task 1 ran with other settings than task 0 \(.*valid_fraction: 0.2 vs 0.1"):
        merge_shard_tasks(out)


def test_a_requeued_task_keeps_the_files_it_finished(inputs, tmp_path):
    out = tmp_path / "out"
    write_shard_task(inputs, "bytes", 31, out, 0, 2, **OPTIONS)
    lines: list[str] = []
    write_shard_task(inputs, "bytes", 31, out, 0, 2, **{**OPTIONS, "log": lines.append})
    assert sum("done by an earlier try" in line for line in lines) == 4  # files 0, 2, 4, 6
    # A shard lost since then is rebuilt with its whole file.
    next(out.glob("train-u000002-*.tar")).unlink()
    lines.clear()
    write_shard_task(inputs, "bytes", 31, out, 0, 2, **{**OPTIONS, "log": lines.append})
    assert sum("done by an earlier try" in line for line in lines) == 3
    write_shard_task(inputs, "bytes", 31, out, 1, 2, **OPTIONS)
    merge_shard_tasks(out, log=lambda text: None)
    _build(inputs, tmp_path / "fresh", 1)
    _same_tree(out, tmp_path / "fresh")


def test_a_merged_dataset_is_not_rebuilt_in_place(inputs, tmp_path):
    out = tmp_path / "out"
    _build(inputs, out, 1)
    with pytest.raises(FileExistsError, match="already holds a merged dataset"):
        write_shard_task(inputs, "bytes", 31, out, 0, 1, **OPTIONS)
    with pytest.raises(FileExistsError, match="merged already"):
        merge_shard_tasks(out)
    with pytest.raises(DataError, match="no task records"):
        merge_shard_tasks(tmp_path / "empty")


def test_task_numbers_come_from_slurm_array_variables():
    assert task_from_environment({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "4",
                                  "SLURM_ARRAY_TASK_COUNT": "3"}) == (1, 3)
    assert task_from_environment({"SLURM_JOB_ID": "7"}) is None
    with pytest.raises(ValueError, match="contiguous"):
        task_from_environment({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "2",
                               "SLURM_ARRAY_TASK_STEP": "2"})


def test_the_command_line_builds_an_array_and_checks_its_flags(inputs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "cli"
    base = ["data", "shard", "--input", *inputs, "--tokenizer", "bytes", "--seq-len", "31", "--shard-size", "16",
            "--workers", "1", "--out", str(out)]
    assert main([*base, "--task-index", "0"]) == 2
    assert "--task-index and --num-tasks go together" in capsys.readouterr().err
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    assert main(base) == 0
    assert "array task 1 of 2 (from SLURM_ARRAY_TASK_ID" in capsys.readouterr().out
    assert main([*base, "--task-index", "0", "--num-tasks", "2"]) == 0
    assert main(["data", "merge", str(out)]) == 0
    assert "train:" in capsys.readouterr().out


def test_array_build_and_plain_build_write_to_s3(inputs, tmp_path, monkeypatch):
    with local_s3(monkeypatch) as fs:
        fs.mkdir("gigatron-build")
        _build(inputs, "s3://gigatron-build/array", 2)  # type: ignore[arg-type]
        local = _build(inputs, tmp_path / "local", 1)
        remote = load_text_dataset("s3://gigatron-build/array")
        assert remote.raw == local
        write_text_shards(inputs, "bytes", 31, "s3://gigatron-build/plain", samples_per_shard=16, workers=1)
        assert load_text_dataset("s3://gigatron-build/plain").num_samples("train") > 0
        with pytest.raises(FileExistsError, match="already holds a dataset"):
            write_text_shards(inputs, "bytes", 31, "s3://gigatron-build/plain", workers=1)
        assert not fs.exists(f"gigatron-build/array/{TASKS_DIR}")
