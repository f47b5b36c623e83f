"""Autoregressive sampling with per-layer caches: one prefill, then O(1) work per Mamba layer per token."""

from __future__ import annotations

import torch
from torch import nn

from gigatron.inference.cached import forward_cached, new_caches


@torch.no_grad()
def generate(model: nn.Sequential, prompt_ids: list[int], max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, seed: int = 0, eos_id: int | None = None) -> list[int]:
    """Continue `prompt_ids` and return only the new tokens (stopping after `eos_id` if given).

    `model` is a registry-built layer list (embedding first). Temperature 0 is greedy; otherwise
    logits / temperature are sampled, restricted to the `top_k` largest when given, from a
    generator seeded with `seed`, so equal arguments give equal output.
    """
    _check_arguments(model, prompt_ids, max_new_tokens, temperature, top_k)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    generator = torch.Generator(device="cpu").manual_seed(seed)
    caches = new_caches(model, 1, len(prompt_ids) + max_new_tokens, device, dtype)
    logits = forward_cached(model, torch.tensor([prompt_ids], device=device), caches)[0, -1]
    out: list[int] = []
    for step in range(max_new_tokens):
        token = _pick(logits.float().cpu(), temperature, top_k, generator)
        out.append(token)
        if (eos_id is not None and token == eos_id) or step == max_new_tokens - 1:
            break  # no forward pass for logits nobody will read
        logits = forward_cached(model, torch.tensor([[token]], device=device), caches)[0, -1]
    return out


def _check_arguments(model: nn.Sequential, prompt_ids: list[int], max_new_tokens: int, temperature: float,
                     top_k: int | None) -> None:
    if not prompt_ids:
        raise ValueError("prompt_ids is empty; the prompt must contain at least one token")
    vocab = model[0].tokens.weight.shape[0]
    bad = [t for t in prompt_ids if not 0 <= t < vocab]
    if bad:
        raise ValueError(f"prompt_ids {bad[:5]} are outside the model's vocabulary [0, {vocab})")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0")
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 = greedy)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k} must be >= 1, or None for no top-k filtering")


def _pick(logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    if top_k is not None and top_k < logits.numel():
        threshold = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    probs = torch.softmax(logits / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
