"""A run's plan on its GPUs (memory per rank, throughput, whether it fits) and the search over layouts.

`plan_run` validates the config for the target GPU count, plans every pipeline stage's memory and
the step time; `search_layouts` plans each layout of the same model and batch (tp, pp, cp, sequence
parallelism, ZeRO stage, recompute, micro-batch) and returns those that fit, fastest first.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from gigatron.config import ConfigError, validate_config
from gigatron.config.schema import Config
from gigatron.planning.memory import GiB, MemoryPlan, plan_memory
from gigatron.planning.throughput import ThroughputPlan, plan_throughput


@dataclass(frozen=True)
class Target:
    """The machines planned for."""

    gpus: int
    memory_bytes: int  # per device
    peak_flops: float  # per device
    mfu: float
    overhead_bytes: int  # per device, outside the allocator's count
    device: str = "cuda"  # "cpu": plan a CPU run (no optimizer temporaries of CUDA's foreach AdamW)

    @classmethod
    def from_config(cls, cfg: Config, gpus: int | None = None, memory_gib: float | None = None,
                    peak_tflops: float | None = None, mfu: float | None = None,
                    overhead_gib: float | None = None, device: str = "cuda") -> Target:
        """The config's `hardware:` section, with what the caller sets instead."""
        h, p = cfg.hardware, cfg.parallel
        chosen_gpus = gpus if gpus is not None else (h.gpus if h.gpus is not None else p.tp * p.pp * p.cp)
        problems = []
        if chosen_gpus < 1:
            problems.append(f"--gpus {chosen_gpus}: a plan needs at least 1 GPU")
        for name, value in (("--gpu-memory", memory_gib), ("--gpu-peak-tflops", peak_tflops)):
            if value is not None and not value > 0:
                problems.append(f"{name} {value}: must be > 0")
        if mfu is not None and not 0 < mfu <= 1:
            problems.append(f"--mfu {mfu}: must be in (0, 1]")
        if overhead_gib is not None and overhead_gib < 0:
            problems.append(f"--overhead {overhead_gib}: must be >= 0")
        if problems:
            raise ConfigError("; ".join(problems))
        return cls(gpus=chosen_gpus, memory_bytes=int((memory_gib or h.gpu_memory_gib) * GiB),
                   peak_flops=(peak_tflops or h.gpu_peak_tflops) * 1e12, mfu=mfu or h.mfu,
                   # The CPU allocator's count is all there is (no CUDA context, no NCCL buffers).
                   overhead_bytes=int((overhead_gib if overhead_gib is not None
                                       else h.overhead_gib if device == "cuda" else 0.0) * GiB),
                   device=device)


@dataclass(frozen=True)
class RunPlan:
    """The plan of one layout."""

    layout: dict[str, object]  # tp, pp, cp, dp, sequence_parallel, zero_stage, recompute, micro_batch_size
    stages: list[MemoryPlan]
    throughput: ThroughputPlan
    target: Target

    @property
    def peak(self) -> MemoryPlan:
        """The stage whose ranks need the most memory."""
        return max(self.stages, key=lambda plan: plan.total)

    @property
    def fits(self) -> bool:
        """Whether every rank's planned peak fits its device."""
        return self.peak.total <= self.target.memory_bytes


def layout_of(cfg: Config) -> dict[str, object]:
    """The keys a layout search varies, as the config has them."""
    p, t = cfg.parallel, cfg.train
    return {"tp": p.tp, "pp": p.pp, "cp": p.cp, "dp": p.dp, "sequence_parallel": p.sequence_parallel,
            "zero_stage": p.zero_stage, "recompute": t.recompute, "micro_batch_size": t.micro_batch_size}


def plan_run(cfg: Config, target: Target, every_stage: bool = True) -> RunPlan:
    """Validate `cfg` for `target.gpus` ranks and plan it (the config is not changed). Without
    `every_stage` only the first and last pipeline stages are planned (the middle ones hold fewer
    micro-batches than the first and no logits)."""
    cfg = validate_config(copy.deepcopy(cfg), target.gpus)
    pp = cfg.parallel.pp
    stages = plan_memory(cfg, device=target.device, overhead=target.overhead_bytes,
                         stages=None if every_stage else sorted({0, pp - 1}))
    throughput = plan_throughput(cfg, target.gpus, target.peak_flops, target.mfu)
    return RunPlan(layout=layout_of(cfg), stages=stages, throughput=throughput, target=target)


def _powers_of_two(limit: int) -> list[int]:
    return [2**k for k in range(limit.bit_length()) if 2**k <= limit]


def candidate_layouts(cfg: Config, gpus: int) -> Iterator[Config]:
    """Every layout of `cfg`'s model and global batch on `gpus` GPUs that passes validation: tp and pp
    up to 8, cp as the config has it (the sequence's split is a modelling choice, see docs/longctx.md),
    sequence parallelism with tp > 1 where the family has it, recompute none / selective (the
    config's modules) / full, micro-batches of 1 and 2, and ZeRO 2 and 3 without a pipeline (ZeRO-1
    with one, DeepSpeed's most there): ZeRO 0 and 1 never need less memory than ZeRO-2, and the
    estimated speed does not depend on the stage."""
    for tp, pp, sp, zero, recompute, micro in itertools.product(
            _powers_of_two(min(8, gpus)), _powers_of_two(min(8, gpus)), (False, True), (1, 2, 3),
            ("none", "selective", "full"), (1, 2)):
        if (sp and tp == 1) or (pp > 1 and zero != 1) or (pp == 1 and zero == 1):
            continue
        candidate = copy.deepcopy(cfg)
        p, t = candidate.parallel, candidate.train
        p.tp, p.pp, p.sequence_parallel, p.zero_stage, p.dp = tp, pp, sp, zero, None
        t.recompute, t.micro_batch_size = recompute, micro
        if recompute != "full":
            t.recompute_num_layers = None
            t.recompute_method = "uniform"
        try:
            yield validate_config(candidate, gpus)
        except ConfigError:
            continue


def search_layouts(cfg: Config, target: Target, limit: int | None = None) -> list[RunPlan]:
    """The layouts of `candidate_layouts` that fit `target`, fastest first (fewest bytes breaks ties).

    Each layout's memory is planned from shapes; plans of the same shapes are shared between ZeRO
    stages. Layouts whose cheaper recompute already fits are not planned with a costlier one.
    """
    fitting: list[RunPlan] = []
    fit_without: set[tuple] = set()
    for candidate in candidate_layouts(cfg, target.gpus):
        p, t = candidate.parallel, candidate.train
        shape_key = (p.tp, p.pp, p.sequence_parallel, p.zero_stage, t.micro_batch_size)
        if shape_key in fit_without:
            continue  # a cheaper recompute setting of this layout already fits
        plan = plan_run(candidate, target, every_stage=False)
        if plan.fits:
            fitting.append(plan)
            fit_without.add(shape_key)
    fitting.sort(key=lambda plan: (plan.throughput.step_time_s, plan.peak.total))
    return fitting[:limit] if limit else fitting


def nearest_layouts(cfg: Config, target: Target, limit: int = 3) -> list[RunPlan]:
    """Layouts that fit and change the fewest of `cfg`'s layout keys (then fastest): the same tp, pp
    and cp with sequence parallelism, another ZeRO stage, recompute or micro-batch; else the search's."""
    here = layout_of(validate_config(copy.deepcopy(cfg), target.gpus))
    near = [c for c in candidate_layouts(cfg, target.gpus)
            if (c.parallel.tp, c.parallel.pp, c.parallel.cp) == (here["tp"], here["pp"], here["cp"])]
    fitting = [plan for plan in (plan_run(c, target, every_stage=False) for c in near) if plan.fits]
    if not fitting:
        fitting = search_layouts(cfg, target)

    def changes(plan: RunPlan) -> int:
        return sum(plan.layout[key] != here[key] for key in here)

    fitting.sort(key=lambda plan: (changes(plan), plan.throughput.step_time_s))
    return fitting[:limit]
