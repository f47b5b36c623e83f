"""Learning-rate schedules against their definitions."""

from __future__ import annotations

import math

import pytest

from gigatron.config.schema import TrainConfig
from gigatron.pretrain.schedule import lr_at


def test_warmup_is_linear_to_peak() -> None:
    t = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=4, schedule="cosine")
    assert [lr_at(s, 20, t) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]


def test_cosine_reaches_min_at_last_step_and_is_half_way_in_the_middle() -> None:
    t = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=0, schedule="cosine")
    assert lr_at(0, 11, t) == pytest.approx(1.0)
    assert lr_at(5, 11, t) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(10, 11, t) == pytest.approx(0.1)


def test_wsd_holds_then_decays_linearly() -> None:
    t = TrainConfig(lr=1.0, min_lr=0.0, warmup_steps=2, schedule="wsd", decay_fraction=0.25)
    lrs = [lr_at(s, 20, t) for s in range(20)]
    assert lrs[:2] == [0.5, 1.0]
    assert all(lr == 1.0 for lr in lrs[2:15])
    assert lrs[15:] == pytest.approx([0.8, 0.6, 0.4, 0.2, 0.0])


def test_constant() -> None:
    t = TrainConfig(lr=0.3, warmup_steps=0, schedule="constant")
    assert {lr_at(s, 100, t) for s in range(100)} == {0.3}
