"""The memory metric is this process's own (not a parent's peak, as ru_maxrss was after fork)."""

from __future__ import annotations

import os

import numpy as np

from gigatron.pretrain.metrics import memory_gib, reset_peak_memory


def test_a_forked_child_reports_its_own_peak_not_its_parents():
    big = np.ones(400 * 2**20 // 8)  # the parent's peak: 400 MiB more than the child will hold
    del big
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: what a zygote's fork of a trainer is
        reset_peak_memory("cpu")
        current, peak = memory_gib("cpu")
        os.write(write, f"{current} {peak}".encode())
        os._exit(0)
    os.waitpid(pid, 0)
    current, peak = map(float, os.read(read, 100).split())
    _, parent_peak = memory_gib("cpu")
    assert parent_peak - peak > 0.3, (parent_peak, peak)
    assert peak >= current > 0
