"""The trainer's memory check: plan the run on the devices it got before building anything, and
refuse a layout that cannot fit, with the breakdown and the nearest layouts that do (docs/memory.md)."""

from __future__ import annotations

import os

from gigatron.config import ConfigError
from gigatron.config.schema import Config
from gigatron.launcher.dist_env import DistEnv
from gigatron.planning.memory import GiB
from gigatron.planning.plan import RunPlan, Target, nearest_layouts, plan_run
from gigatron.planning.report import plan_table, search_table, size_text
from gigatron.planning.stage_trace import UnplannableModel
from gigatron.pretrain.log_format import stamped


def device_memory(cfg: Config, env: DistEnv) -> int:
    """Bytes one rank may use: its GPU's memory, or on the CPU `hardware.cpu_memory_gib` (default the
    machine's memory) shared by the node's ranks."""
    if env.device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_properties(env.local_rank).total_memory
    budget = cfg.hardware.cpu_memory_gib
    node = int(budget * GiB) if budget is not None else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return node // max(1, env.local_world_size)


def check_memory(cfg: Config, env: DistEnv) -> RunPlan | None:
    """Plan `cfg` (validated, `parallel.dp` set) on this run's devices; raise ConfigError when a rank
    would not fit. Needs a process without torch.distributed (the plan builds on a fake one)."""
    if not cfg.hardware.memory_check:
        return None
    cuda = env.device.startswith("cuda")
    h = cfg.hardware
    target = Target(gpus=env.world_size, memory_bytes=device_memory(cfg, env), peak_flops=h.gpu_peak_tflops * 1e12,
                    mfu=h.mfu, overhead_bytes=int(h.overhead_gib * GiB) if cuda else 0,
                    device="cuda" if cuda else "cpu")
    try:
        plan = plan_run(cfg, target)
    except UnplannableModel as exc:
        if env.is_main:
            print(stamped(f"[plan] no memory check: {exc}"), flush=True)
        return None
    if plan.fits:
        return plan
    near = nearest_layouts(cfg, target)
    advice = ("nearest layouts that fit (set them with --set):\n" + search_table(near) if near
              else "no layout of this model and batch fits these devices")
    raise ConfigError(
        f"the run needs {size_text(plan.peak.total)} per rank but a rank has {size_text(target.memory_bytes)} "
        f"({env.device}); hardware.memory_check=false runs it anyway\n{plan_table(plan)}\n\n{advice}")
