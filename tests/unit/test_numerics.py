"""The numerical-fault guard's verdicts (one process), the checkpoint's finiteness check, the
injection hook's syntax and the faults section's validation. Real runs under each policy:
tests/integration/test_numerical_faults.py."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from gigatron.config import ConfigError, load_config
from gigatron.config.schema import FaultsConfig
from gigatron.pretrain.numerics import StepGuard, loss_injections, state_nonfinite
from tests.conftest import SMOKE


def _step(guard: StepGuard, loss: float, nonfinite_grad: bool = False) -> bool:
    guard.begin_step()
    guard.observe(torch.tensor(loss, dtype=torch.float64))
    return guard.decide(nonfinite_grad)


def test_nonfinite_loss_or_gradient_is_rejected_and_not_remembered():
    guard = StepGuard(FaultsConfig(), "cpu")
    target = SimpleNamespace(overflow=None)
    guard.overflow_target = target
    assert not _step(guard, 2.0) and target.overflow is False
    assert _step(guard, math.nan) and guard.fault.reason == "non-finite loss" and target.overflow is True
    assert _step(guard, 2.0, nonfinite_grad=True) and guard.fault.reason == "non-finite gradient"
    assert _step(guard, math.inf)
    assert list(guard.recent) == [2.0]


def test_a_spike_is_judged_against_the_median_of_a_full_window():
    guard = StepGuard(FaultsConfig(spike_factor=2.0, spike_window=3), "cpu")
    assert not _step(guard, 1.0) and not _step(guard, 9.0)  # window not full: no judgement yet
    assert not _step(guard, 1.2)
    assert _step(guard, 2.5) and guard.fault.reason == "loss spike"  # > 2 x median(1.0, 9.0, 1.2)
    assert "2.5000 > 2 x median 1.2000 of the last 3 steps" in guard.fault.detail
    assert not _step(guard, 2.3)
    assert list(guard.recent) == [9.0, 1.2, 2.3]


def test_the_first_call_of_a_step_decides_for_every_parameter_group():
    guard = StepGuard(FaultsConfig(), "cpu")
    guard.begin_step()
    guard.observe(torch.tensor(1.0))
    assert guard.decide(True) and guard.decide(False)  # ZeRO's second group cannot overturn it
    assert guard.rejected(engine_skipped=True).reason == "non-finite gradient"


def test_a_step_deepspeed_skipped_before_asking_is_a_fault_too():
    guard = StepGuard(FaultsConfig(), "cpu")
    guard.begin_step()
    guard.observe(torch.tensor(3.0))
    fault = guard.rejected(engine_skipped=True)
    assert fault.reason == "non-finite gradient" and fault.loss == 3.0
    assert guard.rejected(engine_skipped=False) is None


def test_the_window_round_trips_through_a_checkpoint():
    guard = StepGuard(FaultsConfig(spike_window=4), "cpu")
    for loss in (1.0, 2.0, 3.0):
        _step(guard, loss)
    other = StepGuard(FaultsConfig(spike_window=4), "cpu")
    other.load_state_dict(guard.state_dict())
    assert list(other.recent) == [1.0, 2.0, 3.0]


def test_state_nonfinite_sees_weights_and_adam_moments():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    engine = SimpleNamespace(module=model, optimizer=optimizer)
    assert not state_nonfinite(engine, "cpu")
    optimizer.state[model.weight]["exp_avg_sq"][0, 0] = math.inf
    assert state_nonfinite(engine, "cpu")
    optimizer.state[model.weight]["exp_avg_sq"][0, 0] = 0.0
    with torch.no_grad():
        model.bias[0] = math.nan
    assert state_nonfinite(engine, "cpu")


def test_loss_injections():
    assert loss_injections("7:nan, 12:10") == {7: pytest.approx(math.nan, nan_ok=True), 12: 10.0}
    assert loss_injections("") == {}
    with pytest.raises(ValueError, match="STEP:FACTOR"):
        loss_injections("7")


def test_an_unknown_fault_policy_is_refused_when_the_config_loads():
    with pytest.raises(ConfigError, match="faults.policy"):
        load_config(SMOKE, ["faults.policy=retry"])


def test_the_straggler_detector_names_the_slow_rank_of_one_process():
    from gigatron.pretrain.stragglers import StragglerDetector, injected_sleep

    detector = StragglerDetector(interval=2, factor=1.5, device="cpu")
    detector.add(1.0, 0.1, 0.3)
    assert detector.maybe_report(1) is None
    detector.add(1.0, 0.1, 0.3)
    report = detector.maybe_report(2)
    assert report.slow == [] and report.ranks[0]["own_s"] == pytest.approx(0.3)  # one rank: no yardstick
    assert injected_sleep(2, "1:0.5,2:0.25") == 0.25 and injected_sleep(0, "1:0.5") == 0.0
