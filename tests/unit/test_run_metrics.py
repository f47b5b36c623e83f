"""The memory metric is this process's own (not a parent's peak, as ru_maxrss was after fork); MFU
cannot pass 100% when the CPU peak measured at start came out low."""

from __future__ import annotations

import os

import numpy as np

from gigatron.pretrain.metrics import memory_gib, reset_peak_memory
from gigatron.pretrain.peak_flops import mfu_against


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


def test_mfu_never_passes_one_a_faster_step_raises_the_peak():
    assert mfu_against(50e9, 100e9) == (0.5, 100e9)
    mfu, peak = mfu_against(150e9, 100e9)  # a peak measured while the machine was busy
    assert (mfu, peak) == (1.0, 150e9)
    assert mfu_against(75e9, peak) == (0.5, 150e9)
