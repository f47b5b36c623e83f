"""A run plan as tables a person reads at a glance, and as JSON for scripts."""

from __future__ import annotations


def gib(value: float) -> str:
    """Bytes as GiB with two decimals."""
    return f"{value / 2**30:.2f}"


def size_text(value: float) -> str:
    """Bytes as MiB below a GiB, else GiB, with two decimals."""
    name, size = _unit(value)
    return f"{value / size:.2f} {name}"


def _unit(largest: float) -> tuple[str, float]:
    return ("GiB", 2**30) if largest >= 2**30 else ("MiB", 2**20)


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
    stages = plan.stages
    name, size = _unit(max(plan.target.memory_bytes, *(s.total for s in stages)))

    def fmt(value: float) -> str:
        return f"{value / size:.2f}"

    devices = "GPUs" if plan.target.device == "cuda" else "CPU ranks"
    lines = [f"layout: {_layout_text(plan.layout)} on {plan.target.gpus} {devices} of "
             f"{fmt(plan.target.memory_bytes)} {name}", ""]
    header = f"| per rank ({name}) | " + " | ".join(f"stage {s.stage}" for s in stages) + " |"
    lines += [header, "|---|" + "---:|" * len(stages)]
    rows = [("parameters", "parameters"), ("gradients", "gradients"), ("optimizer states", "optimizer"),
            ("activations", "activations"), ("working (logits, loss, temporaries)", "working"),
            ("communication buffers", "communication")]
    for label, key in rows:
        lines.append(f"| {label} | " + " | ".join(fmt(getattr(s, key)) for s in stages) + " |")
    lines.append("| **peak of tensors** | " + " | ".join(f"**{fmt(s.allocated)}**" for s in stages) + " |")
    lines.append("| framework overhead | " + " | ".join(fmt(s.overhead) for s in stages) + " |")
    lines.append("| **total** | " + " | ".join(f"**{fmt(s.total)}**" for s in stages) + " |")
    lines.append("| micro-batches in flight | " + " | ".join(str(s.micro_batches_in_flight) for s in stages) + " |")
    lines.append("| peak comes at | " + " | ".join(s.peak_phase for s in stages) + " |")
    peak = plan.peak
    verdict = "fits" if plan.fits else "DOES NOT FIT"
    lines += ["", f"{verdict}: {fmt(peak.total)} of {fmt(plan.target.memory_bytes)} {name} on the largest rank "
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
    name, size = _unit(max(plan.peak.total for plan in plans)) if plans else ("GiB", 2**30)
    lines = [f"| # | tp | sp | pp | cp | dp | zero | recompute | micro-batch | {name} per rank | step | tokens/s |",
             "|---:|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for i, plan in enumerate(plans, 1):
        lay, t = plan.layout, plan.throughput
        lines.append(f"| {i} | {lay['tp']} | {'yes' if lay['sequence_parallel'] else 'no'} | {lay['pp']} | "
                     f"{lay['cp']} | {lay['dp']} | {lay['zero_stage']} | {lay['recompute']} | "
                     f"{lay['micro_batch_size']} | {plan.peak.total / size:.2f} | {_duration(t.step_time_s)} | "
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
