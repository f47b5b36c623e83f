"""`gigatron plan --config X.yaml [--set k=v] [--gpus N --gpu-memory 80GiB --gpu-peak-tflops 989] [--search] [--json]`.

Plans a run from shapes, without allocating it: each rank's memory by part, FLOPs per step, step
time, tokens/s and time to the token budget at an assumed MFU. `--search` lists the layouts of the
same model and batch that fit, fastest first. Exit code 0 when the config's layout fits, 3 when it
does not, 2 for a bad config or target.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

from gigatron.launcher.exit_codes import EXIT_CONFIG_ERROR

EXIT_DOES_NOT_FIT = 3
_UNITS = {"": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "kb": 1e3, "mb": 1e6, "gb": 1e9,
          "tb": 1e12}


def parse_bytes(text: str) -> float:
    """'80GiB', '80GB', '80' (GiB) -> GiB as a float."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; use e.g. 80GiB, 141GB or 80 (GiB)")
    value, unit = float(match.group(1)), match.group(2).lower()
    return value if unit == "" else value * _UNITS[unit] / 2**30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line flags of `gigatron plan`."""
    parser.add_argument("--config", required=True, help="YAML run config, e.g. configs/hybrid/8b.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set parallel.tp=8 (repeatable)")
    parser.add_argument("--gpus", type=int, default=None,
                        help="GPUs of the run (default: hardware.gpus, else one model replica)")
    parser.add_argument("--gpu-memory", type=parse_bytes, default=None, metavar="SIZE",
                        help="memory per GPU, e.g. 80GiB (default: hardware.gpu_memory_gib)")
    parser.add_argument("--gpu-peak-tflops", type=float, default=None,
                        help="dense peak TFLOP/s per GPU in the training precision (default: hardware.gpu_peak_tflops)")
    parser.add_argument("--mfu", type=float, default=None, help="model FLOPs utilisation assumed (default: hardware.mfu)")
    parser.add_argument("--overhead", type=parse_bytes, default=None, metavar="SIZE",
                        help="per-GPU memory outside the allocator (default: hardware.overhead_gib)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="plan a GPU run (default) or a CPU run (no CUDA optimizer temporaries)")
    parser.add_argument("--search", action="store_true", help="list the layouts that fit, fastest first")
    parser.add_argument("--top", type=int, default=10, help="layouts --search prints (default 10)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


def _gib(value: float) -> str:
    return f"{value / 2**30:.2f}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _layout_text(layout: dict) -> str:
    sp = " sp" if layout["sequence_parallel"] else ""
    return (f"tp={layout['tp']}{sp} pp={layout['pp']} cp={layout['cp']} dp={layout['dp']} "
            f"zero={layout['zero_stage']} recompute={layout['recompute']} micro_batch={layout['micro_batch_size']}")


def plan_table(plan) -> str:
    """The plan of one layout, as a person reads it."""
    t = plan.throughput
    lines = [f"layout: {_layout_text(plan.layout)} on {plan.target.gpus} GPUs of "
             f"{_gib(plan.target.memory_bytes)} GiB", ""]
    stages = plan.stages
    header = "| per rank (GiB) | " + " | ".join(f"stage {s.stage}" for s in stages) + " |"
    lines += [header, "|---|" + "---:|" * len(stages)]
    rows = [("parameters", "parameters"), ("gradients", "gradients"), ("optimizer states", "optimizer"),
            ("activations", "activations"), ("working (logits, loss, temporaries)", "working"),
            ("communication buffers", "communication")]
    for label, key in rows:
        lines.append(f"| {label} | " + " | ".join(_gib(getattr(s, key)) for s in stages) + " |")
    lines.append("| **peak of tensors** | " + " | ".join(f"**{_gib(s.allocated)}**" for s in stages) + " |")
    lines.append("| framework overhead | " + " | ".join(_gib(s.overhead) for s in stages) + " |")
    lines.append("| **total** | " + " | ".join(f"**{_gib(s.total)}**" for s in stages) + " |")
    lines.append("| micro-batches in flight | " + " | ".join(str(s.micro_batches_in_flight) for s in stages) + " |")
    lines.append("| peak comes at | " + " | ".join(s.peak_phase for s in stages) + " |")
    peak = plan.peak
    verdict = "fits" if plan.fits else "DOES NOT FIT"
    lines += ["", f"{verdict}: {_gib(peak.total)} of {_gib(plan.target.memory_bytes)} GiB on the largest rank "
              f"(stage {peak.stage}); the parts are each at their own maximum, the peak is where they meet", "",
              f"model FLOPs per token {t.flops_per_token:.3e}, per step {t.flops_per_step:.3e} "
              f"({t.tokens_per_step:,} tokens)",
              f"at MFU {plan.target.mfu:.0%} of {plan.target.peak_flops / 1e12:.0f} TFLOP/s per GPU"
              f" (recompute x{t.recompute_cost:.2f}, pipeline bubble {t.pipeline_bubble:.1%}): "
              f"step {_duration(t.step_time_s)}, {t.tokens_per_s:,.0f} tokens/s, "
              f"{t.steps:,} steps to the budget in {_duration(t.time_to_budget_s)}"]
    return "\n".join(lines)


def search_table(plans: list) -> str:
    """Fitting layouts, fastest first."""
    lines = ["| # | tp | sp | pp | cp | dp | zero | recompute | micro-batch | GiB per rank | step | tokens/s |",
             "|---:|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for i, plan in enumerate(plans, 1):
        lay, t = plan.layout, plan.throughput
        lines.append(f"| {i} | {lay['tp']} | {'yes' if lay['sequence_parallel'] else 'no'} | {lay['pp']} | "
                     f"{lay['cp']} | {lay['dp']} | {lay['zero_stage']} | {lay['recompute']} | "
                     f"{lay['micro_batch_size']} | {_gib(plan.peak.total)} | {_duration(t.step_time_s)} | "
                     f"{t.tokens_per_s:,.0f} |")
    return "\n".join(lines)


def plan_json(plan) -> dict:
    """The plan as plain data (bytes, seconds, FLOPs)."""
    t = plan.throughput
    return {
        "layout": plan.layout, "gpus": plan.target.gpus, "gpu_memory_bytes": plan.target.memory_bytes,
        "fits": plan.fits,
        "stages": [{"stage": s.stage, "local_parameters": s.local_parameters,
                    "micro_batches_in_flight": s.micro_batches_in_flight, **s.parts(),
                    "allocated": s.allocated, "total": s.total, "peak_phase": s.peak_phase} for s in plan.stages],
        "flops_per_token": t.flops_per_token, "flops_per_step": t.flops_per_step,
        "tokens_per_step": t.tokens_per_step, "mfu": plan.target.mfu, "step_time_s": t.step_time_s,
        "tokens_per_s": t.tokens_per_s, "steps": t.steps, "time_to_budget_s": t.time_to_budget_s,
        "pipeline_bubble": t.pipeline_bubble, "recompute_cost": t.recompute_cost,
    }


def run(args: argparse.Namespace) -> int:
    """Plan the config's layout (and with --search, every layout); exit 3 when it does not fit."""
    from gigatron.config import ConfigError, load_config
    from gigatron.planning.plan import Target, plan_run, search_layouts

    try:
        cfg = load_config(args.config, args.overrides)
        target = Target.from_config(cfg, gpus=args.gpus, memory_gib=args.gpu_memory,
                                    peak_tflops=args.gpu_peak_tflops, mfu=args.mfu, overhead_gib=args.overhead,
                                    device=args.device)
        plan = plan_run(cfg, target)
        found = search_layouts(cfg, target, limit=args.top) if args.search else None
    except ConfigError as exc:
        print(f"gigatron plan: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    if args.json:
        out = plan_json(plan)
        if found is not None:
            out["search"] = [plan_json(p) for p in found]
        print(json.dumps(out, indent=2))
    else:
        print(plan_table(plan))
        if found is not None:
            print()
            print(f"layouts that fit {target.gpus} GPUs of {_gib(target.memory_bytes)} GiB, fastest first:"
                  if found else "no layout searched fits; more GPUs, a shorter sequence or a smaller batch may")
            if found:
                print(search_table(found))
    return 0 if plan.fits else EXIT_DOES_NOT_FIT
