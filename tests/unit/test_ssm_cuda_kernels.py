"""On a GPU: the Mamba models with mamba_ssm's and causal_conv1d's kernels train like the PyTorch paths.

The kernels are picked inside the mixers (`ssd.ssd`, `selective_scan.selective_scan`,
`causal_conv.causal_conv1d`) whenever the tensors are on CUDA and the packages import; here the same
model runs a forward and backward pass once with them and once with them switched off, and the
losses and gradients must agree. Each kernel that imports is compared (mamba_ssm built without its
CUDA extensions has the Triton SSD but no selective scan); skipped without a GPU or without any.
"""

from __future__ import annotations

import pytest
import torch

from gigatron.models.hybrid.config import HybridConfig, MambaConfig
from gigatron.models.layers import causal_conv, selective_scan, ssd
from gigatron.models.layers.factory import LayerFactory
from gigatron.models.layers.init import initialize_parameters
from gigatron.models.registry import build_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="mamba_ssm's kernels need a GPU")

CONFIGS = {
    # Mamba-2 layers (SSD + conv), one attention and MLP layers; seq 1000 is not a chunk multiple
    "hybrid": HybridConfig(vocab_size=512, hidden_size=256, num_layers=4, pattern="M*M-", d_state=64, headdim=32,
                           ngroups=2, chunk_size=128, num_heads=4, num_kv_heads=2, ffn_hidden_size=512),
    "mamba": MambaConfig(vocab_size=512, hidden_size=256, num_layers=2, pattern="MM", d_state=16),
}


def _loss_and_grads(model: torch.nn.Module, tokens: torch.Tensor, dtype: torch.dtype):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        logits = model(tokens[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()
    return loss.detach(), {name: p.grad.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("family", list(CONFIGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cuda_kernels_train_like_the_pytorch_path(family, dtype, monkeypatch):
    kernels = {"hybrid": [ssd._cuda_kernel, causal_conv._cuda_kernel],
               "mamba": [selective_scan._mamba_ssm_kernel, causal_conv._cuda_kernel]}[family]
    if all(k() is None for k in kernels):  # one of them is enough (a Triton-only mamba_ssm has no conv)
        pytest.skip(f"none of {[k.__module__ + '.' + k.__name__ for k in kernels]} finds its package here")
    torch.manual_seed(0)
    model = build_model(CONFIGS[family], LayerFactory()).cuda()
    initialize_parameters(model, 0)
    tokens = torch.randint(0, 512, (2, 1001), device="cuda")
    fused_loss, fused = _loss_and_grads(model, tokens, dtype)
    for module, name in [(ssd, "_cuda_kernel"), (causal_conv, "_cuda_kernel"), (selective_scan, "_mamba_ssm_kernel")]:
        monkeypatch.setattr(module, name, lambda: None)
    plain_loss, plain = _loss_and_grads(model, tokens, dtype)
    # The kernels accumulate in another order (and Triton's fp32 dots may use TF32): close, not equal.
    loss_tol = 2e-3 if dtype == torch.float32 else 2e-2
    assert abs(fused_loss - plain_loss) <= loss_tol * abs(plain_loss), (fused_loss, plain_loss)
    grad_tol = 2e-2 if dtype == torch.float32 else 8e-2
    for name, grad in plain.items():
        error = (fused[name] - grad).norm() / grad.norm().clamp_min(1e-12)
        assert error <= grad_tol, f"{name}: relative gradient error {error:.2e} > {grad_tol}"
