"""Numerical faults: a step whose loss or gradient is not finite, or whose loss spikes, is not applied.

The optimizer asks the `StepGuard` before it updates anything (`decide`, inside `optimizer.step()`
on every rank, after the gradients are reduced). One all-reduce over all ranks carries each rank's
"my gradients hold a NaN/inf" flag and its share of the step's loss, so every rank reaches the same
verdict from the same numbers and no rank steps alone:
- non-finite gradient: some rank's gradient holds a NaN or an infinity;
- non-finite loss: the step's mean loss is NaN or infinite;
- loss spike: with `faults.spike_factor` f > 0, the mean loss exceeds f x the median of the last
  `faults.spike_window` applied steps' losses (once that many steps were applied).
A rejected step leaves weights and optimizer moments as they were and is reported to DeepSpeed as
an overflow, so, as in Megatron-LM, it does not advance the learning-rate schedule. What follows
(skip, rollback, stop) is the training loop's business (`faults.policy`).

DeepSpeed's own ZeRO-1/2 optimizer rejects an fp32 step with a non-finite gradient norm before the
guard is asked; the loop treats that as the same fault (`StepGuard.rejected`).
"""

from __future__ import annotations

import json
import math
import statistics
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from gigatron.config.schema import FaultsConfig
from gigatron.pretrain.watchdog import FAULTS_DIR, ROLLBACKS


@dataclass
class Fault:
    """Why a step was not applied."""

    reason: str  # "non-finite gradient", "non-finite loss" or "loss spike"
    loss: float  # the step's mean loss (NaN when no rank saw it)
    detail: str  # e.g. "loss 9.81 > 3 x median 2.95 of the last 50 steps"


class StepGuard:
    """Decides, once per optimizer step and identically on every rank, whether to apply it."""

    def __init__(self, faults: FaultsConfig, device: Any) -> None:
        self.cfg = faults
        self.device = device
        self.recent: deque[float] = deque(maxlen=faults.spike_window)
        # Whose `.overflow` DeepSpeed reads after the step (the optimizer it holds); set by the engine.
        self.overflow_target: Any = None
        # The step's loss when the loop cannot observe it before the update (DeepSpeed's pipeline
        # engine): returns (sum over micro-batches, count) on ranks that hold it, else None.
        self.loss_source: Callable[[], tuple[torch.Tensor, int] | None] | None = None
        self.begin_step()

    def begin_step(self) -> None:
        """Forget the previous step's losses and verdict."""
        self._loss_sum: torch.Tensor | None = None  # on the loss's device: no sync per micro-batch
        self._count = 0
        self.fault: Fault | None = None
        self.decided = False

    def observe(self, loss: torch.Tensor) -> None:
        """One micro-batch's loss, before the step that applies it."""
        loss = loss.detach().double()
        self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        self._count += 1

    def decide(self, local_nonfinite: bool) -> bool:
        """Every rank, inside optimizer.step(): True when the step must not be applied. DeepSpeed's
        ZeRO steps the optimizer once per parameter group: the first call decides for the step."""
        if self.decided:
            return self.fault is not None
        loss_sum, count = self._loss_sum, self._count
        if self.loss_source is not None:
            held = self.loss_source()
            if held is not None:
                loss_sum, count = held[0].detach().double(), held[1]
        total = 0.0 if loss_sum is None else float(loss_sum)
        numbers = torch.tensor([float(local_nonfinite), total, float(count)], dtype=torch.float64)
        if dist.is_initialized() and dist.get_world_size() > 1:
            numbers = numbers.to(self.device)
            dist.all_reduce(numbers)
            numbers = numbers.cpu()
        flag, total, seen = numbers.tolist()
        loss = total / seen if seen else float("nan")
        self.fault = self._judge(flag > 0, loss)
        self.decided = True
        if self.fault is None:
            self.recent.append(loss)
        if self.overflow_target is not None:
            self.overflow_target.overflow = self.fault is not None
        return self.fault is not None

    def _judge(self, nonfinite_grad: bool, loss: float) -> Fault | None:
        if nonfinite_grad:
            return Fault("non-finite gradient", loss, "a gradient holds NaN or infinity")
        if not math.isfinite(loss):
            return Fault("non-finite loss", loss, f"loss {loss}")
        factor = self.cfg.spike_factor
        if factor > 0 and len(self.recent) == self.recent.maxlen:
            median = statistics.median(self.recent)
            if loss > factor * median:
                return Fault("loss spike", loss, f"loss {loss:.4f} > {factor:g} x median {median:.4f} of the last "
                                                 f"{len(self.recent)} steps")
        return None

    def rejected(self, engine_skipped: bool) -> Fault | None:
        """The fault of the step just taken, if it was not applied: the guard's verdict, or DeepSpeed
        having skipped it on a non-finite gradient norm before asking the guard."""
        if self.fault is not None:
            return self.fault
        if engine_skipped and not self.decided:
            loss = float(self._loss_sum) / self._count if self._count else float("nan")
            return Fault("non-finite gradient", loss, "DeepSpeed found the gradient norm non-finite")
        return None

    def state_dict(self) -> list[float]:
        """What a checkpoint keeps: the recent losses the spike test compares with."""
        return list(self.recent)

    def load_state_dict(self, recent: Iterable[float]) -> None:
        """Continue with a checkpoint's recent losses."""
        self.recent.clear()
        self.recent.extend(float(x) for x in recent)


def grads_nonfinite(params: Iterable[torch.nn.Parameter]) -> bool:
    """Whether any of this rank's gradients holds NaN or infinity (one fused norm per device)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return False
    norms = torch._foreach_norm(grads)
    return not bool(torch.stack([n.float() for n in norms]).isfinite().all())


def state_nonfinite(engine: Any, device: Any) -> bool:
    """Whether any rank's weights or optimizer state (AdamW moments, fp32 masters) hold NaN or
    infinity; a collective, so call it on every rank."""
    # By identity: at ZeRO-0 the optimizer holds the module's own parameters; checked once.
    tensors = {id(p): p.detach() for p in engine.module.parameters()}
    optimizer = engine.optimizer
    for holder in (optimizer, getattr(optimizer, "optimizer", None)):
        for state in getattr(holder, "state", {}).values():
            if isinstance(state, dict):
                tensors.update((id(v), v) for v in state.values() if torch.is_tensor(v) and v.is_floating_point())
        for group in getattr(holder, "param_groups", []):
            tensors.update((id(p), p.detach()) for p in group["params"] if torch.is_tensor(p))
    bad = any(not bool(t.isfinite().all()) for t in tensors.values() if t.numel())
    flag = torch.tensor([float(bad)], device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flag)
    return bool(flag.item() > 0)


def record_rollback(output_dir: Path, record: dict[str, Any]) -> None:
    """Append a rollback (its `skipped_samples`: [first, end) global sample numbers) to
    <output_dir>/faults/rollbacks.jsonl."""
    path = output_dir / FAULTS_DIR / ROLLBACKS
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def past_rolled_back_samples(output_dir: Path, position: int) -> int:
    """Where a loader at global sample `position` continues: past every range the run's rollbacks
    skipped that starts there (chained); `position` itself when none does."""
    path = output_dir / FAULTS_DIR / ROLLBACKS
    if not path.is_file():
        return position
    ranges = {}
    for line in path.read_text().splitlines():
        first, end = json.loads(line)["skipped_samples"]
        ranges[int(first)] = int(end)
    while position in ranges:
        position = ranges.pop(position)
    return position


class NonFiniteState(RuntimeError):
    """A checkpoint would hold NaN or infinity; raised on every rank together, nothing written."""


# Test hook (docs/fault-tolerance.md): GIGATRON_INJECT_LOSS="7:nan,12:10" multiplies every
# micro-batch loss of step 7 by NaN and of step 12 by 10, once per invocation, on every rank.
INJECT_ENV = "GIGATRON_INJECT_LOSS"


def loss_injections(text: str | None = None) -> dict[int, float]:
    """Step (1-based) -> loss multiplier, from `text` or $GIGATRON_INJECT_LOSS."""
    import os

    text = os.environ.get(INJECT_ENV, "") if text is None else text
    found = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        step, sep, factor = item.partition(":")
        if not sep:
            raise ValueError(f"{INJECT_ENV}: {item!r} must look like STEP:FACTOR, e.g. 7:nan")
        found[int(step)] = float(factor)
    return found
