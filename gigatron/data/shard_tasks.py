"""One token-shard dataset built by many tasks (a SLURM job array), then merged into one manifest.

The unit of work is an input file. Each file is tokenized and packed on its own: its documents,
each followed by eos, are cut into samples of seq_len + 1 tokens (the file's last partial sample
is dropped), and sample j of file u goes to "valid" by the hash rule of `UNIT_SPLIT_RULE`. Its
shards are `<split>-u<UUUUUU>-<NNNNNN>.tar` with member keys `u<UUUUUU>-<jjjjjjjjjj>`. Task i of
n takes files i, i+n, i+2n, ... (after glob expansion, in order), so what each file becomes does
not depend on n: **the merged dataset is byte-identical for every n**.

Against a single-process `gigatron data shard` of the same inputs, an array build differs in
exactly this: no sample spans two files (each file's tail is dropped, not carried into the next
file), each file has its own shards (a file's last shard may be short), and the train/valid hash
is of (file, sample) instead of the stream position, with no forced valid sample.

Progress lives in `<out>/_tasks/`: `unit-<UUUUUU>.json` when a file's shards are in place (a
requeued task skips those files) and `task-<i>-of-<n>.json` when task i finished. `merge` checks
that every task and every file finished with the same settings, that every shard is there with
its recorded size, writes `manifest.json` (shards in file order), and removes `_tasks/`. `out` may
be a directory or a URL (tasks then build each file locally and upload it).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gigatron.data.documents import expand_patterns, iter_documents
from gigatron.data.errors import DataError
from gigatron.data.manifest import MANIFEST_NAME, TEXT_FORMAT
from gigatron.data.remote import RemoteStore, is_url
from gigatron.data.sp_tokenizer import load_tokenizer, tokenizer_manifest_entry
from gigatron.data.text_shards import (
    SPLITS,
    _check_arguments,
    _route,
    _samples,
    _ShardWriter,
    _token_stream,
    _write_json_atomic,
    token_dtype,
    tokenizer_pool,
)

TASKS_DIR = "_tasks"
UNIT_SPLIT_RULE = ("sample j (0-based) of input file u (0-based, after glob expansion) is valid iff "
                   "int.from_bytes(blake2b((u * 2**32 + j).to_bytes(8, 'little'), digest_size=8).digest(), "
                   "'little') < floor(valid_fraction * 2**64)")
_UNIT_STRIDE = 2**32


def task_from_environment(env: dict[str, str] | None = None) -> tuple[int, int] | None:
    """(task index, task count) of a SLURM array task, from SLURM_ARRAY_TASK_ID/_MIN/_COUNT; else None."""
    env = dict(os.environ) if env is None else env
    if "SLURM_ARRAY_TASK_ID" not in env or "SLURM_ARRAY_TASK_COUNT" not in env:
        return None
    try:
        task, first, count = (int(env["SLURM_ARRAY_TASK_ID"]), int(env.get("SLURM_ARRAY_TASK_MIN", "0")),
                              int(env["SLURM_ARRAY_TASK_COUNT"]))
    except ValueError as exc:
        raise ValueError(f"SLURM_ARRAY_TASK_ID/_MIN/_COUNT are not integers ({exc})") from exc
    if int(env.get("SLURM_ARRAY_TASK_STEP", "1")) != 1:
        raise ValueError("the array must be contiguous (--array=0-N, no :step) to number its tasks")
    return task - first, count


class _Destination:
    """Where task output goes: a local directory, or a URL written through a RemoteStore."""

    def __init__(self, out: str | Path) -> None:
        self.url = str(out).rstrip("/") if is_url(str(out)) else None
        self.store = RemoteStore(self.url) if self.url else None
        self.local = None if self.url else Path(out).expanduser().absolute()

    def __str__(self) -> str:
        return self.url or str(self.local)

    def read_json(self, name: str) -> dict[str, Any] | None:
        if self.store is not None:
            if self.store.size(name) is None:
                return None
            return json.loads(self.store.read_bytes(name))
        path = self.local / name
        return json.loads(path.read_text()) if path.is_file() else None

    def write_json(self, name: str, payload: dict[str, Any]) -> None:
        if self.store is not None:
            self.store.write_bytes(name, (json.dumps(payload, indent=2) + "\n").encode())
            return
        (self.local / name).parent.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(self.local / name, payload)

    def size(self, name: str) -> int | None:
        if self.store is not None:
            return self.store.size(name)
        path = self.local / name
        return path.stat().st_size if path.is_file() else None

    def put(self, built: Path, name: str) -> None:
        """Move (local) or upload (URL) the finished file `built` to `name`."""
        if self.store is not None:
            self.store.upload(built, name)
        else:
            os.replace(built, self.local / name)

    def list_tasks(self) -> list[str]:
        if self.store is not None:
            return self.store.list(TASKS_DIR)
        folder = self.local / TASKS_DIR
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

    def remove_tasks(self) -> None:
        if self.store is not None:
            self.store.remove(TASKS_DIR)
        else:
            shutil.rmtree(self.local / TASKS_DIR, ignore_errors=True)

    def scratch_parent(self) -> Path:
        """Where a task builds its files before moving them in: beside them (same filesystem) locally."""
        if self.local is not None:
            self.local.mkdir(parents=True, exist_ok=True)
            return self.local
        return Path(tempfile.gettempdir())


def _settings(inputs: list[Path], tok: Any, seq_len: int, samples_per_shard: int, valid_fraction: float,
              on_error: str) -> dict[str, Any]:
    """What every task and file of one build must agree on."""
    listing = "\n".join(str(p.absolute()) for p in inputs)
    return {"format": TEXT_FORMAT, "seq_len": seq_len, "dtype": token_dtype(tok.vocab_size),
            "vocab_size": int(tok.vocab_size), "tokenizer": tokenizer_manifest_entry(tok),
            "samples_per_shard": samples_per_shard, "valid_fraction": valid_fraction, "on_error": on_error,
            "inputs": len(inputs), "inputs_sha256": hashlib.sha256(listing.encode()).hexdigest()}


def _unit_record_name(unit: int) -> str:
    return f"{TASKS_DIR}/unit-{unit:06d}.json"


def _task_record_name(task: int, tasks: int) -> str:
    return f"{TASKS_DIR}/task-{task:05d}-of-{tasks:05d}.json"


def write_shard_task(inputs: list[str], tokenizer: str, seq_len: int, out: str | Path, task_index: int,
                     num_tasks: int, *, samples_per_shard: int = 4096, valid_fraction: float = 0.01,
                     workers: int = 4, on_error: str = "raise",
                     log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Task `task_index` of `num_tasks`: tokenize its share of the input files into `out`.

    Files whose shards an earlier try of this build already put in place are skipped. Returns the
    task record written to `<out>/_tasks/`.
    """
    _check_arguments(seq_len, samples_per_shard, valid_fraction, workers, on_error)
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
        raise ValueError(f"--num-tasks must be a positive integer, got {num_tasks!r}")
    if not 0 <= task_index < num_tasks:
        raise ValueError(f"--task-index {task_index} must be in [0, {num_tasks})")
    log = log or (lambda text: print(text, flush=True))
    files = expand_patterns(list(inputs))
    dest = _Destination(out)
    if dest.size(MANIFEST_NAME) is not None:
        raise FileExistsError(f"{dest}: already holds a merged dataset (manifest.json); array tasks write into "
                              "a new directory: remove it or choose another --out")
    tok = load_tokenizer(tokenizer)
    settings = _settings(files, tok, seq_len, samples_per_shard, valid_fraction, on_error)
    mine = list(range(task_index, len(files), num_tasks))
    started = time.perf_counter()
    units, tokens = [], 0
    pool = tokenizer_pool(tok, workers) if workers > 1 and mine else None
    try:
        for unit in mine:
            record = dest.read_json(_unit_record_name(unit))
            if record is not None and record["settings"] == settings and _shards_present(dest, record):
                log(f"[shard] {files[unit]}: done by an earlier try, kept")
            else:
                record = _build_unit(files[unit], unit, tok, settings, dest, workers, pool)
                dest.write_json(_unit_record_name(unit), record)
            units.append(unit)
            tokens += record["total_tokens"]
            log(f"[shard] task {task_index}/{num_tasks}: {files[unit]} -> "
                f"{sum(len(s) for s in record['splits'].values())} shards")
    finally:
        if pool is not None:
            pool.terminate()
    elapsed = time.perf_counter() - started
    task = {"settings": settings, "task_index": task_index, "num_tasks": num_tasks, "units": units,
            "total_tokens": tokens, "seconds": round(elapsed, 3)}
    dest.write_json(_task_record_name(task_index, num_tasks), task)
    return task


def _shards_present(dest: _Destination, record: dict[str, Any]) -> bool:
    return all(dest.size(s["file"]) == s["bytes"] for shards in record["splits"].values() for s in shards)


def _build_unit(path: Path, unit: int, tok: Any, settings: dict[str, Any], dest: _Destination, workers: int,
                pool: Any) -> dict[str, Any]:
    """Tokenize and pack one input file into its own shards, then move them into place."""
    stats: dict[str, Any] = {}
    documents = iter_documents([glob.escape(str(path))], on_error=settings["on_error"], stats=stats)
    scratch = Path(tempfile.mkdtemp(prefix=f".unit-{unit:06d}.tmp-", dir=dest.scratch_parent()))
    sample_len = settings["seq_len"] + 1
    writers = {split: _ShardWriter(scratch, split, settings["samples_per_shard"], sample_len, settings["dtype"],
                                   prefix=f"{split}-u{unit:06d}", key_prefix=f"u{unit:06d}-")
               for split in SPLITS}
    counts = {"total_tokens": 0, "dropped_tokens": 0}
    try:
        try:
            _route(_samples(_token_stream(tok, documents, workers, pool), sample_len, counts), writers,
                   settings["valid_fraction"], hash_base=unit * _UNIT_STRIDE)
            for writer in writers.values():
                writer.close()
        finally:
            for writer in writers.values():
                writer.abort()
        if writers["train"].count + writers["valid"].count >= _UNIT_STRIDE:
            raise DataError(f"{path}: more than 2**32 samples in one file; split the file")
        for writer in writers.values():
            for shard in writer.shards:
                dest.put(scratch / shard["file"], shard["file"])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"settings": settings, "unit": unit, "source": stats["sources"][0] if stats.get("sources") else
            {"path": str(path.absolute())}, "documents": stats.get("documents", 0),
            "skipped_documents": stats.get("skipped_documents", 0),
            "skipped_examples": stats.get("skipped_examples", []), **counts,
            "splits": {split: [{**s, "key_prefix": f"u{unit:06d}-", "first_index": i * settings["samples_per_shard"]}
                               for i, s in enumerate(w.shards)] for split, w in writers.items()}}


def merge_shard_tasks(out: str | Path, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Check that every task of the build in `out` finished and write its one `manifest.json`."""
    log = log or (lambda text: print(text, flush=True))
    dest = _Destination(out)
    if dest.size(MANIFEST_NAME) is not None:
        raise FileExistsError(f"{dest}: already holds manifest.json; it was merged already")
    names = dest.list_tasks()
    task_names = [n for n in names if n.startswith("task-")]
    if not task_names:
        raise DataError(f"{dest}/{TASKS_DIR}: no task records; run the array tasks "
                        "(`gigatron data shard --task-index i --num-tasks n`) before merging")
    tasks = [dest.read_json(f"{TASKS_DIR}/{n}") for n in task_names]
    num_tasks = {t["num_tasks"] for t in tasks}
    if len(num_tasks) != 1:
        raise DataError(f"{dest}/{TASKS_DIR}: task records of different builds (--num-tasks {sorted(num_tasks)}); "
                        "remove the directory and build again")
    n = num_tasks.pop()
    settings = tasks[0]["settings"]
    for task in tasks:
        if task["settings"] != settings:
            raise DataError(f"{dest}: task {task['task_index']} ran with other settings than task "
                            f"{tasks[0]['task_index']} ({_difference(task['settings'], settings)})")
    missing = sorted(set(range(n)) - {t["task_index"] for t in tasks})
    if missing:
        raise DataError(f"{dest}: tasks {_ranges(missing)} of {n} did not finish (no {TASKS_DIR}/task-*-of-"
                        f"{n:05d}.json); rerun each with the same arguments and --task-index I --num-tasks {n}, "
                        "then merge again")
    units = sorted(u for t in tasks for u in t["units"])
    if units != list(range(settings["inputs"])):
        raise DataError(f"{dest}: the tasks covered input files {_ranges(units)}, expected 0-{settings['inputs'] - 1}")
    records = [dest.read_json(_unit_record_name(u)) for u in units]
    splits: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
    problems = []
    for record in records:
        for split in SPLITS:
            for shard in record["splits"][split]:
                size = dest.size(shard["file"])
                if size != shard["bytes"]:
                    problems.append(f"{shard['file']}: {'missing' if size is None else f'{size} bytes'}, "
                                    f"the task recorded {shard['bytes']}")
                splits[split].append(shard)
    if problems:
        raise DataError(f"{dest}: {len(problems)} shard(s) are not as their task wrote them: "
                        + "; ".join(problems[:5]))
    train = sum(s["samples"] for s in splits["train"])
    if train == 0:
        raise DataError(f"{dest}: the inputs gave no training samples; add text or lower seq_len")
    manifest = {
        "format": TEXT_FORMAT, "seq_len": settings["seq_len"], "dtype": settings["dtype"],
        "vocab_size": settings["vocab_size"], "tokenizer": settings["tokenizer"],
        "valid_fraction": settings["valid_fraction"], "split_rule": UNIT_SPLIT_RULE,
        "samples_per_shard": settings["samples_per_shard"], "packing": "per input file",
        "sources": [r["source"] for r in records],
        "splits": {split: {"num_samples": sum(s["samples"] for s in shards),
                           "num_tokens": sum(s["samples"] for s in shards) * (settings["seq_len"] + 1),
                           "shards": shards} for split, shards in splits.items()},
        "documents": sum(r["documents"] for r in records),
        "skipped_documents": sum(r["skipped_documents"] for r in records),
        "skipped_examples": [e for r in records for e in r["skipped_examples"]][:10],
        "total_tokens": sum(r["total_tokens"] for r in records),
        "dropped_tokens": sum(r["dropped_tokens"] for r in records),
    }
    dest.write_json(MANIFEST_NAME, manifest)
    dest.remove_tasks()
    log(f"[merge] {dest}: {n} tasks, {len(records)} input files, {train} train and "
        f"{manifest['splits']['valid']['num_samples']} valid samples")
    return manifest


def publish(built: Path, url: str, overwrite: bool) -> None:
    """Upload a dataset directory built locally to `url`: shards first, manifest.json last."""
    store = RemoteStore(url)
    if store.size(MANIFEST_NAME) is not None and not overwrite:
        raise FileExistsError(f"{url}: already holds a dataset (manifest.json); pass --overwrite to replace it")
    for path in sorted(built.iterdir()):
        if path.name != MANIFEST_NAME:
            store.upload(path, path.name)
    store.upload(built / MANIFEST_NAME, MANIFEST_NAME)


def _ranges(values: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5" (sbatch --array syntax)."""
    runs: list[list[int]] = []
    for v in sorted(values):
        if runs and runs[-1][1] == v - 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _difference(a: dict[str, Any], b: dict[str, Any]) -> str:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return ", ".join(f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in keys)
