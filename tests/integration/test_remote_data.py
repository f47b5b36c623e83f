"""Training from a dataset served over HTTP equals training from the same shards on disk, bitwise.

A loopback server (tests/http_store.py) serves the default dataset's directory. The URL run uses a
cache smaller than the dataset (shards are evicted and fetched again), the server fails the first
two requests for every shard (a reset connection, a truncated transfer: retried and counted), and
the run is SIGKILLed after its first checkpoint and resumed, reusing the cache. A shard altered on
the server stops the resumed run with its URL named and leaves the checkpoint as it was.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from gigatron.data.default_dataset import ensure_default_dataset
from gigatron.data.global_order import GlobalOrder
from gigatron.data.manifest import load_text_dataset
from tests.conftest import REPO, BackgroundRun, assert_ok, pretrain_command, read_metrics, run_pretrain
from tests.http_store import StoreServer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread_per_run")]

STEPS = 12
SEED = 1234
BASE = [f"train.steps={STEPS}", f"train.seed={SEED}", "train.eval_interval=0", "data.num_workers=2",
        "data.source=shards", "checkpoint.interval=4"]


def _datasets(path: str) -> str:
    return f'data.datasets=[{{path: "{path}"}}]'


@pytest.fixture(scope="module")
def served(tmp_path_factory, corpus_ready):
    """(server, served directory, disk reference run): the reference trains while the tests start."""
    root = ensure_default_dataset()
    directory = tmp_path_factory.mktemp("served") / "shakespeare"
    shutil.copytree(root, directory, copy_function=os.symlink)  # links: altering one shard copies it
    reference = BackgroundRun(tmp_path_factory.mktemp("disk"), BASE + [_datasets(str(root))], threads=1)
    with StoreServer(directory, fail_first=2) as server:
        yield server, directory, reference
    reference.kill()


def _latest_step(out: Path) -> int:
    pointer = out / "checkpoints" / "latest"
    return int(pointer.read_text().strip().split("_")[1]) if pointer.is_file() else 0


def _shards_read_after(directory: Path, step: int) -> list[str]:
    """File names of the train shards that steps after `step` read (the run's global order)."""
    dataset = load_text_dataset(directory)
    shards = dataset.splits["train"]
    starts = np.cumsum([0] + [s.samples for s in shards])
    order = GlobalOrder([int(starts[-1])], None, SEED)
    _, samples = order(np.arange(step * 8, STEPS * 8))  # smoke: global batch 8
    return sorted({shards[int(np.searchsorted(starts, i, side="right")) - 1].path.name for i in samples})


def test_url_run_equals_disk_run_through_kill_eviction_retries_and_a_bad_shard(served, tmp_path):
    server, directory, reference = served
    cache = tmp_path / "cache"
    command = BASE + [_datasets(server.url + "/"), f"data.cache_dir={cache}", "data.cache_limit=8MB",
                      "data.retry_backoff_s=0.05"]
    out = tmp_path / "run"
    proc = subprocess.Popen(pretrain_command(out, command, fresh=True), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while _latest_step(out) < 4:
            assert proc.poll() is None, f"the URL run ended (exit {proc.returncode}) before its first checkpoint"
            assert time.monotonic() < deadline, "timed out waiting for the URL run's checkpoint"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = _latest_step(out)
    assert killed_at < STEPS, "the run finished before it could be killed"
    first = read_metrics(out)
    assert first[-1]["data_retries"] > 0 and first[-1]["data_evictions"] > 0, first[-1]

    # A shard the rest of the run needs changes on the server (same size) and leaves the cache.
    bad = _shards_read_after(directory, killed_at)[0]
    target = directory / bad
    original = target.resolve()
    data = bytearray(original.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.unlink()
    target.write_bytes(bytes(data))
    for name in (bad, bad + ".ok"):
        (cache / "remote").joinpath(next((cache / "remote").iterdir()).name, name).unlink(missing_ok=True)
    failed = run_pretrain(out, command)
    assert failed.returncode != 0
    assert f"{server.url}/{bad}" in failed.stderr and "sha256" in failed.stderr, failed.stderr[-3000:]
    assert _latest_step(out) == killed_at, "a checkpoint was written after the data failed"

    target.unlink()
    target.symlink_to(original)
    resumed = run_pretrain(out, command)
    assert_ok(resumed)
    assert f"step {killed_at}" in resumed.stdout
    losses = {r["step"]: r["loss"] for r in read_metrics(out)}
    expected = {r["step"]: r["loss"] for r in read_metrics(reference.wait())}
    assert losses == expected
