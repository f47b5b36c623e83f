"""LiveTensorBytes: the peak of live tensor bytes, exact on a hand-counted sequence, and a run's
memory trace logged per rank."""

from __future__ import annotations

import pytest
import torch

from gigatron.planning.measure import LiveTensorBytes
from tests.conftest import assert_ok, read_metrics, run_pretrain


def test_counts_live_storages_once_and_forgets_freed_ones():
    with LiveTensorBytes() as tracker:
        a = torch.zeros(1000)  # 4,000 bytes
        view = a.view(10, 100)  # the same storage
        b = torch.ones(500, dtype=torch.float64)  # 4,000 bytes: 8,000 live
        del a, view, b
        c = torch.zeros(250)  # 1,000 bytes, the earlier ones freed
    assert tracker.peak == 8000
    assert tracker.current == 1000
    del c


@pytest.mark.slow  # a training run (~10 s)
def test_a_run_logs_each_ranks_peak(tmp_path, corpus_ready):
    proc = run_pretrain(tmp_path, ["train.steps=2", "checkpoint.save_final=false", "train.eval_interval=0",
                                   "logging.memory_trace=true"])
    assert_ok(proc)
    [record] = read_metrics(tmp_path, "memory")
    [peak] = record["peak_bytes"]
    # weights, AdamW's moments and gradients of 1.31M fp32 parameters are 21 MB; activations come on top
    assert 21e6 < peak < 200e6
    assert "[memory] peak live tensors per rank (MiB):" in proc.stdout


def test_a_storage_at_the_address_of_a_freed_one_is_counted():
    # The allocator gives a freed block's address to the next allocation of its size: the tracker
    # must not take the new storage for the dead one.
    with LiveTensorBytes() as tracker:
        for _ in range(10):
            a = torch.zeros(1000)
            del a
            b = torch.zeros(1000)
            c = torch.zeros(1000)
            del b, c
    assert tracker.peak == 8000


def test_views_of_tensors_made_before_are_not_new_memory():
    layer = torch.nn.Linear(100, 100)  # 40,400 bytes of weights, made before the mode
    x = torch.zeros(8, 100)
    with LiveTensorBytes() as tracker:
        out = layer(x)  # inside, linear is the weight's transpose (a view) and a matmul
    assert tracker.peak == out.untyped_storage().nbytes() == 8 * 100 * 4
