"""Autoregressive sampling with per-layer caches: one prefill, then O(1) work per Mamba layer per token."""

from __future__ import annotations

import torch
from torch import nn

from gigatron.models.cached import forward_cached, new_caches


@torch.no_grad()
def generate(model: nn.Sequential, prompt_ids: list[int], max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, seed: int = 0, eos_id: int | None = None) -> list[int]:
    """Continue `prompt_ids`; temperature 0 is greedy. Returns only the new tokens."""
    if not prompt_ids:
        raise ValueError("the prompt must contain at least one token")
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    generator = torch.Generator(device="cpu").manual_seed(seed)
    caches = new_caches(model, 1, len(prompt_ids) + max_new_tokens, device, dtype)
    logits = forward_cached(model, torch.tensor([prompt_ids], device=device), caches)[0, -1]
    out: list[int] = []
    for _ in range(max_new_tokens):
        token = _pick(logits.float().cpu(), temperature, top_k, generator)
        out.append(token)
        if eos_id is not None and token == eos_id:
            break
        logits = forward_cached(model, torch.tensor([[token]], device=device), caches)[0, -1]
    return out


def _pick(logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    if top_k is not None and top_k < logits.numel():
        threshold = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    probs = torch.softmax(logits / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
