"""Greedy speculative decoding with a MatFormer submodel as the draft (Leviathan et al. 2023).

The draft is the same weights run at a smaller FFN granularity, so it needs no second checkpoint
and, being trained jointly, agrees with the full model often. Each round the draft proposes k
tokens one at a time; the full model scores all of them in one forward pass and keeps the longest
prefix equal to its own greedy choices, plus its own next token. The output is therefore exactly
the full model's greedy decoding; only the number of full-model passes changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gigatron.inference.cached import forward_cached, keep_fed_prefix, new_caches, snapshot_caches
from gigatron.inference.generation import _check_arguments
from gigatron.models.layers.nested_ffn import ffn_granularity


@dataclass
class SpeculativeStats:
    """How the draft did."""

    drafted: int = 0
    accepted: int = 0
    target_passes: int = 0

    @property
    def acceptance_rate(self) -> float:
        """Accepted / drafted tokens."""
        return self.accepted / self.drafted if self.drafted else 0.0


@torch.no_grad()
def speculative_generate(model: nn.Sequential, prompt_ids: list[int], max_new_tokens: int, *,
                         draft_granularity: float, draft_tokens: int = 4, eos_id: int | None = None
                         ) -> tuple[list[int], SpeculativeStats]:
    """Greedy continuation of `prompt_ids` (new tokens only) and the draft's statistics."""
    _check_arguments(model, prompt_ids, max_new_tokens, 0.0, None)
    if draft_tokens < 1:
        raise ValueError(f"draft_tokens={draft_tokens} must be >= 1")
    if max_new_tokens == 0:
        return [], SpeculativeStats()
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    capacity = len(prompt_ids) + max_new_tokens + draft_tokens + 1
    target_caches = new_caches(model, 1, capacity, device, dtype)
    draft_caches = new_caches(model, 1, capacity, device, dtype)
    prompt = torch.tensor([prompt_ids], device=device)
    stats = SpeculativeStats(target_passes=1)
    token = int(forward_cached(model, prompt, target_caches)[0, -1].argmax())
    with ffn_granularity(model, draft_granularity):
        forward_cached(model, prompt, draft_caches)
    out: list[int] = []
    draft_pending = [token]  # tokens the draft cache has not seen yet
    while True:
        out.append(token)
        if len(out) >= max_new_tokens or token == eos_id:
            return out, stats
        k = min(draft_tokens, max_new_tokens - len(out))
        draft_snapshot = snapshot_caches(draft_caches)
        proposed: list[int] = []
        fed = list(draft_pending)
        with ffn_granularity(model, draft_granularity):
            feed = draft_pending
            for _ in range(k):
                guess = int(forward_cached(model, torch.tensor([feed], device=device), draft_caches)[0, -1].argmax())
                proposed.append(guess)
                feed = [guess]
                fed.append(guess)
            fed.pop()  # the last guess was never fed to the draft
        target_snapshot = snapshot_caches(target_caches)
        candidates = torch.tensor([[token, *proposed]], device=device)
        choices = forward_cached(model, candidates, target_caches)[0].argmax(-1).tolist()
        stats.target_passes += 1
        stats.drafted += k
        accepted = 0
        while accepted < k and proposed[accepted] == choices[accepted]:
            accepted += 1
        stats.accepted += accepted
        keep_fed_prefix(model, target_caches, target_snapshot, candidates, 1 + accepted)
        # The draft cache should hold what the target now holds: it saw `fed`, of which the first
        # len(draft_pending) + accepted are kept (all of it, and the last guess pending, when all passed).
        kept_in_draft = len(draft_pending) + accepted
        with ffn_granularity(model, draft_granularity):
            keep_fed_prefix(model, draft_caches, draft_snapshot, torch.tensor([fed], device=device),
                            min(kept_in_draft, len(fed)))
        for guess in proposed[:accepted]:
            out.append(guess)
            if len(out) >= max_new_tokens or guess == eos_id:
                return out, stats
        token = choices[accepted]
        draft_pending = [proposed[-1], token] if accepted == k else [token]
