"""Chunked SSD and selective scan against their sequential recurrences; the causal conv against a loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gigatron.models.layers.causal_conv import causal_conv1d, causal_conv1d_step
from gigatron.models.layers.selective_scan import (
    selective_scan_chunked,
    selective_scan_sequential,
    selective_state_step,
)
from gigatron.models.layers.ssd import ssd_chunked, ssd_sequential, ssd_step


def ssd_inputs(b, length, h, p, g, n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, length, h, p, generator=gen)
    dt = F.softplus(torch.randn(b, length, h, generator=gen) - 3)  # ~[1e-3, 0.3], as trained models see
    a = -(torch.rand(h, generator=gen) * 15 + 1)  # A in -[1, 16]
    bm, cm = torch.randn(b, length, g, n, generator=gen), torch.randn(b, length, g, n, generator=gen)
    d = torch.randn(h, generator=gen)
    state = torch.randn(b, h, p, n, generator=gen)
    return [t.requires_grad_() for t in (x, dt, a, bm, cm, d, state)]


def grads(outputs, inputs):
    y, final = outputs
    loss = (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum() + (final * 0.5).sum()
    return torch.autograd.grad(loss, inputs)


@pytest.mark.parametrize(("length", "chunk", "g", "with_state"), [
    (37, 8, 1, True), (37, 16, 2, True), (64, 16, 2, False), (64, 64, 1, True), (5, 16, 4, True),
])
def test_chunked_ssd_matches_recurrence_values_and_gradients(length, chunk, g, with_state):
    x, dt, a, bm, cm, d, state = ssd_inputs(2, length, 4, 8, g, 6)
    init = state if with_state else None
    inputs = [x, dt, a, bm, cm, d] + ([state] if with_state else [])
    fast = ssd_chunked(x, dt, a, bm, cm, chunk, D=d, initial_state=init)
    slow = ssd_sequential(x, dt, a, bm, cm, D=d, initial_state=init)
    torch.testing.assert_close(fast[0], slow[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast[1], slow[1], rtol=1e-5, atol=1e-5)
    for gf, gs in zip(grads(fast, inputs), grads(slow, inputs), strict=True):
        torch.testing.assert_close(gf, gs, rtol=1e-5, atol=1e-5)


def test_ssd_step_is_the_recurrence():
    x, dt, a, bm, cm, d, state = [t.detach() for t in ssd_inputs(1, 9, 4, 4, 2, 3)]
    ys, s = [], state
    for t in range(9):
        y, s = ssd_step(s, x[:, t], dt[:, t], a, bm[:, t], cm[:, t], d)
        ys.append(y)
    ref_y, ref_s = ssd_chunked(x, dt, a, bm, cm, 4, D=d, initial_state=state)
    torch.testing.assert_close(torch.stack(ys, 1), ref_y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s, ref_s, rtol=1e-5, atol=1e-5)


def scan_inputs(b, d, length, n, scale=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(b, d, length, generator=gen)
    delta = F.softplus(torch.randn(b, d, length, generator=gen)) * scale
    a = -torch.arange(1, n + 1, dtype=torch.float32).expand(d, n).clone()
    bm, cm = torch.randn(b, n, length, generator=gen), torch.randn(b, n, length, generator=gen)
    dd = torch.randn(d, generator=gen)
    state = torch.randn(b, d, n, generator=gen)
    return [t.requires_grad_() for t in (u, delta, a, bm, cm, dd, state)]


@pytest.mark.parametrize(("length", "chunk", "scale"), [(37, 8, 1.0), (64, 16, 1.0), (30, 64, 1.0), (40, 8, 50.0)])
def test_chunked_selective_scan_matches_recurrence(length, chunk, scale):
    # scale=50 makes |delta * A| reach hundreds: exp(-S) would overflow a naive parallel form.
    u, delta, a, bm, cm, dd, state = scan_inputs(2, 6, length, 5, scale)
    inputs = [u, delta, a, bm, cm, dd, state]
    fast = selective_scan_chunked(u, delta, a, bm, cm, chunk, D=dd, initial_state=state)
    slow = selective_scan_sequential(u, delta, a, bm, cm, D=dd, initial_state=state)
    assert torch.isfinite(fast[0]).all()
    torch.testing.assert_close(fast[0], slow[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast[1], slow[1], rtol=1e-5, atol=1e-5)
    # At scale 50 the A-gradient sums terms of ~1e2 in a different order in each algorithm, so
    # the fp32 rounding of the two (not an algorithmic difference) reaches ~2e-5 there.
    tol = 1e-5 if scale == 1.0 else 1e-4
    for gf, gs in zip(grads(fast, inputs), grads(slow, inputs), strict=True):
        torch.testing.assert_close(gf, gs, rtol=tol, atol=tol)


def test_selective_state_step_is_the_recurrence():
    u, delta, a, bm, cm, dd, state = [t.detach() for t in scan_inputs(1, 4, 7, 3)]
    ys, s = [], state
    for t in range(7):
        y, s = selective_state_step(s, u[..., t], delta[..., t], a, bm[..., t], cm[..., t], dd)
        ys.append(y)
    ref_y, ref_s = selective_scan_chunked(u, delta, a, bm, cm, 3, D=dd, initial_state=state)
    torch.testing.assert_close(torch.stack(ys, -1), ref_y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s, ref_s, rtol=1e-5, atol=1e-5)


def test_causal_conv_matches_loop_and_steps():
    x, w, bias = torch.randn(2, 3, 10), torch.randn(3, 4), torch.randn(3)
    expected = torch.zeros(2, 3, 10)
    for t in range(10):
        for k in range(4):
            src = t - 3 + k
            if src >= 0:
                expected[:, :, t] += w[:, k] * x[:, :, src]
    expected = F.silu(expected + bias[:, None])
    torch.testing.assert_close(causal_conv1d(x, w, bias), expected, rtol=1e-5, atol=1e-5)
    state, outs = torch.zeros(2, 3, 4), []
    for t in range(10):
        y, state = causal_conv1d_step(state, x[:, :, t], w, bias)
        outs.append(y)
    torch.testing.assert_close(torch.stack(outs, -1), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("length", [1, 3, 50])  # shorter than, and longer than, the kernel
def test_causal_conv_gradients_match_torch_conv1d(length):
    gen = torch.Generator().manual_seed(0)
    # x as the mixers pass it: a [b, d, l] view of a [b, l, d] tensor
    x = torch.randn(2, length, 6, generator=gen).transpose(1, 2).requires_grad_()
    w, bias = torch.randn(6, 4, generator=gen).requires_grad_(), torch.randn(6, generator=gen).requires_grad_()
    upstream = torch.randn(2, 6, length, generator=gen)
    ours = torch.autograd.grad((causal_conv1d(x, w, bias) * upstream).sum(), (x, w, bias))
    reference = F.silu(F.conv1d(F.pad(x, (3, 0)), w[:, None], bias, groups=6))
    theirs = torch.autograd.grad((reference * upstream).sum(), (x, w, bias))
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_long_sequences_run_in_exact_passes(monkeypatch):
    import gigatron.models.layers.ssd as ssd_module

    monkeypatch.setattr(ssd_module, "TOKENS_PER_PASS", 48)  # 200 tokens -> 5 passes of 48 (chunk 16)
    x, dt, a, bm, cm, d, state = ssd_inputs(1, 200, 4, 8, 2, 4)
    inputs = [x, dt, a, bm, cm, d, state]
    fast = ssd_chunked(x, dt, a, bm, cm, 16, D=d, initial_state=state)
    slow = ssd_sequential(x, dt, a, bm, cm, D=d, initial_state=state)
    torch.testing.assert_close(fast[0], slow[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast[1], slow[1], rtol=1e-5, atol=1e-5)
    for gf, gs in zip(grads(fast, inputs), grads(slow, inputs), strict=True):
        torch.testing.assert_close(gf, gs, rtol=1e-5, atol=1e-5)
