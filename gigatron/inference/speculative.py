"""Speculative decoding with a MatFormer submodel as the draft (Leviathan et al. 2023).

The draft is the same weights run at a smaller FFN granularity, so it needs no second checkpoint
and, being trained jointly, agrees with the full model often. Each round the draft proposes k
tokens one at a time; the full model scores all of them in one forward pass (its caches advanced
once, then cut back to what was kept), and:

- greedy (temperature 0): keeps the longest prefix equal to its own greedy choices, plus its own
  next token. The output is exactly the full model's greedy decoding.
- sampling: keeps drafted token x with probability min(1, p(x)/q(x)) (p: the full model's
  distribution, q: the draft's, both after temperature and top-k); at the first rejection it
  samples from norm(max(0, p − q)) and ends the round; if all k pass it samples one more token from
  p. Each output token is then distributed exactly as the full model's sampling would give it.

While decoding, each nested FFN keeps a contiguous copy of the draft's weights
(`cached_submodel_weights`): gathering them on every draft step cost more than the full model's step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gigatron.inference.cached import forward_cached, keep_fed_prefix, new_caches, snapshot_caches
from gigatron.inference.generation import _check_arguments
from gigatron.models.layers.nested_ffn import cached_submodel_weights, ffn_granularity


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


def distribution(logits: torch.Tensor, temperature: float, top_k: int | None) -> torch.Tensor:
    """The sampling distribution of `generate` for one position's logits (float64, on the CPU)."""
    logits = logits.double().cpu()
    if top_k is not None and top_k < logits.numel():
        threshold = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    return torch.softmax(logits / temperature, dim=-1)


def _draw(probs: torch.Tensor, generator: torch.Generator) -> int:
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.no_grad()
def speculative_generate(model: nn.Sequential, prompt_ids: list[int], max_new_tokens: int, *,
                         draft_granularity: float, draft_tokens: int = 4, eos_id: int | None = None,
                         temperature: float = 0.0, top_k: int | None = None, seed: int = 0
                         ) -> tuple[list[int], SpeculativeStats]:
    """A continuation of `prompt_ids` (new tokens only) and the draft's statistics.

    Temperature 0 is greedy; otherwise tokens are sampled (after `top_k` filtering) from a
    generator seeded with `seed`, with the full model's output distribution.
    """
    _check_arguments(model, prompt_ids, max_new_tokens, temperature, top_k)
    if draft_tokens < 1:
        raise ValueError(f"draft_tokens={draft_tokens} must be >= 1")
    if max_new_tokens == 0:
        return [], SpeculativeStats()
    with cached_submodel_weights(model):
        return _decode(model, prompt_ids, max_new_tokens, draft_granularity, draft_tokens, eos_id, temperature,
                       top_k, torch.Generator(device="cpu").manual_seed(seed))


def _decode(model: nn.Sequential, prompt_ids: list[int], max_new_tokens: int, draft_granularity: float,
            draft_tokens: int, eos_id: int | None, temperature: float, top_k: int | None,
            generator: torch.Generator) -> tuple[list[int], SpeculativeStats]:
    greedy = temperature <= 0
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    capacity = len(prompt_ids) + max_new_tokens + draft_tokens + 1
    target_caches = new_caches(model, 1, capacity, device, dtype)
    draft_caches = new_caches(model, 1, capacity, device, dtype)
    prompt = torch.tensor([prompt_ids], device=device)
    stats = SpeculativeStats(target_passes=1)
    last = forward_cached(model, prompt, target_caches)[0, -1]
    token = int(last.argmax()) if greedy else _draw(distribution(last, temperature, top_k), generator)
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
        draft_probs: list[torch.Tensor] = []
        fed = list(draft_pending)
        with ffn_granularity(model, draft_granularity):
            feed = draft_pending
            for _ in range(k):
                logits = forward_cached(model, torch.tensor([feed], device=device), draft_caches)[0, -1]
                if greedy:
                    guess = int(logits.argmax())
                else:
                    draft_probs.append(distribution(logits, temperature, top_k))
                    guess = _draw(draft_probs[-1], generator)
                proposed.append(guess)
                feed = [guess]
                fed.append(guess)
            fed.pop()  # the last guess was never fed to the draft
        target_snapshot = snapshot_caches(target_caches)
        candidates = torch.tensor([[token, *proposed]], device=device)
        logits = forward_cached(model, candidates, target_caches)[0]
        stats.target_passes += 1
        stats.drafted += k
        if greedy:
            accepted, following = _accept_greedy(logits, proposed)
        else:
            accepted, following = _accept_sampled(logits, proposed, draft_probs, temperature, top_k, generator)
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
        token = following
        draft_pending = [proposed[-1], token] if accepted == len(proposed) else [token]


def _accept_greedy(logits: torch.Tensor, proposed: list[int]) -> tuple[int, int]:
    """(drafted tokens kept, the token after them): the longest prefix equal to the target's argmax."""
    choices = logits.argmax(-1).tolist()
    accepted = 0
    while accepted < len(proposed) and proposed[accepted] == choices[accepted]:
        accepted += 1
    return accepted, choices[accepted]


def _accept_sampled(logits: torch.Tensor, proposed: list[int], draft_probs: list[torch.Tensor], temperature: float,
                    top_k: int | None, generator: torch.Generator) -> tuple[int, int]:
    """Leviathan et al.'s rule: keep x_i with probability min(1, p_i(x_i) / q_i(x_i)); at the first
    rejection draw from norm(max(0, p_i − q_i)); after k acceptances draw from p_{k+1}."""
    for i, (guess, q) in enumerate(zip(proposed, draft_probs, strict=True)):
        p = distribution(logits[i], temperature, top_k)
        if float(torch.rand((), generator=generator, dtype=torch.float64)) * q[guess] < p[guess]:
            continue
        residual = (p - q).clamp_min(0)
        # p == q (nothing left) cannot reject; numerically, fall back to p itself.
        return i, _draw(residual / residual.sum() if residual.sum() > 0 else p, generator)
    return len(proposed), _draw(distribution(logits[len(proposed)], temperature, top_k), generator)
