"""The trainable text encoder of text-to-image models: a small bidirectional transformer over caption tokens.

Captions arrive as token ids [N, T] padded with −1. Output: token features [N, T + 1, c] (a learned
"null" token first, so that an empty — dropped — caption still has something to attend to) with
their validity mask, and the mean of the valid features (the pooled text for AdaLN).
"""

from __future__ import annotations

import torch
from torch import nn

from gigatron.models.layers.factory import LayerFactory
from gigatron.models.layers.fit_blocks import TransformerLayer
from gigatron.models.layers.init import mark_init


class TextEncoder(nn.Module):
    """Embedding + learned positions + `layers` pre-norm transformer layers + final norm."""

    def __init__(self, factory: LayerFactory, vocab_size: int, max_len: int, dim: int, layers: int, heads: int,
                 std: float, out_std: float, eps: float) -> None:
        super().__init__()
        self.embedding = factory.embedding(vocab_size, dim, std=std)
        self.position = mark_init(factory.parameter((max_len + 1, dim)), "normal", std)
        self.null = mark_init(factory.parameter((1, dim)), "normal", std)
        self.layers = nn.ModuleList(TransformerLayer(factory, dim, heads, 4.0, std, out_std, eps)
                                    for _ in range(layers))
        self.norm = factory.norm(dim, eps)

    def forward(self, captions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(features [N, T+1, c], valid [N, T+1] bool, pooled [N, c])."""
        n, length = captions.shape
        valid = torch.cat([torch.ones(n, 1, dtype=torch.bool, device=captions.device), captions >= 0], dim=1)
        x = self.embedding(captions.clamp(min=0))
        x = torch.cat([self.null.expand(n, 1, -1).to(x.dtype), x], dim=1) + self.position[:length + 1]
        mask = (valid[:, None, :] | torch.eye(length + 1, dtype=torch.bool, device=x.device))[:, None]
        for layer in self.layers:
            x = layer(x, mask)
        x = self.norm(x)
        pooled = (x * valid[..., None]).sum(1) / valid.sum(1, keepdim=True)
        return x, valid, pooled


def load_frozen_encoder(path: str) -> nn.Module:
    """A local Hugging Face text encoder (T5's encoder, BERT, CLIP's text tower, ...) in eval mode with
    gradients off. Only files already on disk are read (local_files_only): nothing is downloaded."""
    from transformers import AutoConfig, AutoModel, CLIPTextModel, T5EncoderModel

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    if config.model_type in ("t5", "mt5", "umt5"):
        loader = T5EncoderModel
    elif config.model_type == "clip":
        loader = CLIPTextModel
    else:
        loader = AutoModel
    model = loader.from_pretrained(path, local_files_only=True, dtype=torch.float32).eval()
    model.requires_grad_(False)
    return model


class FrozenTextEncoder(nn.Module):
    """A frozen local Hugging Face encoder behind the TextEncoder interface.

    Its weights stay out of this module's parameters and state dict (they are the user's files, not
    trained, and are loaded again from `path` when the model is rebuilt); only the null token is learned.
    """

    def __init__(self, factory: LayerFactory, path: str, dim: int, std: float) -> None:
        super().__init__()
        encoder = load_frozen_encoder(path)
        width = getattr(encoder.config, "d_model", None) or encoder.config.hidden_size
        if width != dim:
            raise ValueError(f"model.text_encoder={path} has hidden size {width}; set model.text_hidden_size={width}")
        object.__setattr__(self, "_encoder", encoder)  # not a submodule: no parameters, no state dict entries
        self.null = mark_init(factory.parameter((1, dim)), "normal", std)

    def forward(self, captions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(features [N, T+1, c], valid [N, T+1] bool, pooled [N, c]), as `TextEncoder`."""
        encoder = self._encoder
        if next(encoder.parameters()).device != captions.device:
            encoder.to(captions.device)
        present = captions >= 0
        with torch.no_grad():
            hidden = encoder(input_ids=captions.clamp(min=0), attention_mask=present.long()).last_hidden_state
        n = captions.shape[0]
        x = torch.cat([self.null.expand(n, 1, -1), hidden.to(self.null.dtype)], dim=1)
        valid = torch.cat([torch.ones(n, 1, dtype=torch.bool, device=captions.device), present], dim=1)
        pooled = (x * valid[..., None]).sum(1) / valid.sum(1, keepdim=True)
        return x, valid, pooled
