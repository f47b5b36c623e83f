"""FLOPs per step, step time and time to the token budget of a run, at a model FLOPs utilisation.

FLOPs are the model's (the family's `flops_per_token`, counted the way PaLM and torchtitan count
them: 6N plus attention, and each Mamba layer's scan); the step time is what those FLOPs take at
`mfu` of the GPUs' peak, lengthened by what the layout adds on top: recomputed forwards (layers, and
the output layer under the chunked loss) and the pipeline's bubble.
"""

from __future__ import annotations

from dataclasses import dataclass

from gigatron.config.schema import Config
from gigatron.config.validate import schedule_problems
from gigatron.models.registry import get_model_spec

# Extra compute of recomputation, relative to forward + backward (3 forward's worth): full recomputes
# the forward (+1/3); selective recomputes attention scores, norms or the like, which Korthikanti et
# al. 2022 (Table 4) measured at 2-4% of a step: 3% is assumed.
RECOMPUTE_COST = {"none": 1.0, "selective": 1.03, "full": 4 / 3}


@dataclass(frozen=True)
class ThroughputPlan:
    """Compute and time of a run on `gpus` GPUs."""

    gpus: int
    flops_per_token: float  # model FLOPs (forward + backward) per trained token
    tokens_per_step: int
    flops_per_step: float
    step_time_s: float
    tokens_per_s: float
    steps: int  # train.steps, or the steps that consume train.tokens
    time_to_budget_s: float
    pipeline_bubble: float  # idle fraction of a step added by the pipeline, (pp - 1) / micro-batches
    recompute_cost: float  # step compute relative to no recomputation (of layers or of the chunked loss's logits)


def micro_batches_per_step(cfg: Config) -> int:
    """Gradient-accumulation micro-batches per step on each data-parallel rank."""
    p, t = cfg.parallel, cfg.train
    return max(1, t.global_batch_size // (t.micro_batch_size * (p.dp or 1)))


def total_steps(cfg: Config) -> int:
    """Steps of the run: `train.steps`, or enough steps to consume `train.tokens`."""
    if cfg.train.steps is not None:
        return cfg.train.steps
    return -(-cfg.train.tokens // tokens_per_step(cfg))


def schedule_budget_problems(cfg: Config) -> list[str]:
    """The LR schedule's problems against the run's length in steps, whether the budget is
    `train.steps` or `train.tokens` (validate_config checks only the former: it cannot count a
    family's tokens per sample)."""
    t = cfg.train
    if t.tokens is None:
        return schedule_problems(t, total_steps(cfg), f"train.steps={t.steps}")
    return schedule_problems(t, total_steps(cfg), f"train.tokens={t.tokens:,} at {tokens_per_step(cfg):,} tokens "
                                                  "per step")


def tokens_per_step(cfg: Config) -> int:
    """Tokens one optimizer step trains on (global batch times tokens per sample)."""
    return cfg.train.global_batch_size * get_model_spec(type(cfg.model).family).sample_tokens(cfg)


def model_flops_per_token(cfg: Config) -> float:
    """Model FLOPs per trained token, including what a training feature changes (MatFormer trains
    several submodels per step)."""
    from gigatron.objectives import build_features

    spec = get_model_spec(type(cfg.model).family)
    flops = spec.flops_per_token(cfg.model, spec.sample_tokens(cfg))
    for feature in build_features(cfg):
        flops = feature.flops_per_token(spec.flops_per_token) or flops
    return flops


def chunked_loss_cost(cfg: Config, flops_per_token: float) -> float:
    """The chunked output loss (train.loss_chunk_tokens) makes the logits twice, in forward and again
    in backward: one more output-layer forward, 2·hidden·vocab FLOPs per token, as a share of the
    model's FLOPs per token (0 when it is off)."""
    if cfg.train.loss_chunk_tokens <= 0 or not getattr(type(cfg.model), "has_vocab_head", False):
        return 0.0
    return 2.0 * cfg.model.hidden_size * cfg.model.vocab_size / flops_per_token


def plan_throughput(cfg: Config, gpus: int, peak_flops_per_gpu: float, mfu: float) -> ThroughputPlan:
    """Step time and time to budget of run `cfg` (with `parallel.dp` set) on `gpus` GPUs."""
    p, t = cfg.parallel, cfg.train
    per_token = model_flops_per_token(cfg)
    tokens = tokens_per_step(cfg)
    flops = per_token * tokens
    micro_batches = micro_batches_per_step(cfg)
    bubble = (p.pp - 1) / micro_batches if p.pp > 1 else 0.0
    recompute = RECOMPUTE_COST[t.recompute] + chunked_loss_cost(cfg, per_token)
    step_time = flops * recompute * (1 + bubble) / (gpus * peak_flops_per_gpu * mfu)
    steps = total_steps(cfg)
    return ThroughputPlan(gpus=gpus, flops_per_token=per_token, tokens_per_step=tokens, flops_per_step=flops,
                          step_time_s=step_time, tokens_per_s=tokens / step_time, steps=steps,
                          time_to_budget_s=steps * step_time, pipeline_bubble=bubble, recompute_cost=recompute)
