"""The only door through which parallelism enters a model.

Model code asks the factory for linears, embeddings, norms and the loss; at TP=1 it gets plain
PyTorch modules, at TP>1 megatron-core's tensor-parallel layers. Every parameter is marked with
its init rule (see `init.py`) so the same seed gives the same logical model on any layout.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from gigatron.models.layers.init import mark_init, mark_sharded, mark_tp_plan
from gigatron.models.layers.norms import RMSNorm
from gigatron.parallel.layout import ParallelLayout


@functools.cache
def _output_only(base: type) -> type:
    """A subclass of a megatron-core linear that returns the output alone (they return (out, bias)).

    Subclassing rather than wrapping keeps parameter names (`q.weight`) the same at every TP size,
    which layout-independent init and checkpoint conversion rely on.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return base.forward(self, x)[0]

    return type(base.__name__, (base,), {"forward": forward, "__module__": __name__})


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@dataclass
class LayerFactory:
    """Builds layers for one tensor-parallel rank.

    At TP>1 or CP>1 it needs the process layout (`gigatron.parallel.initialize_layout`): every
    tensor-parallel layer gets the layout's TP group, and attention its context-parallel scheme.
    `device="meta"` builds shapes only (parameter counting for paper-size configs).
    """

    layout: ParallelLayout = field(default_factory=ParallelLayout)
    device: str | None = None
    params_dtype: torch.dtype = torch.float32
    # Context parallelism (a `cp.core.ContextParallel`); None: the layout's (whole sequences at cp = 1).
    cp: object | None = None
    _mp_config: object | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.cp is None and self.layout.cp_size > 1:
            from gigatron.models.layers.cp.core import ContextParallel

            self.cp = ContextParallel.of_layout(self.layout)

    @property
    def tp_size(self) -> int:
        """Tensor-parallel ranks."""
        return self.layout.tp_size

    @property
    def tp_rank(self) -> int:
        """This process's tensor-parallel rank (0 at TP=1)."""
        return self.layout.tp_rank

    @property
    def sequence_parallel(self) -> bool:
        """Whether activations between TP regions hold 1/tp of the sequence (`sequence_parallel.py`)."""
        return self.layout.sequence_parallel and self.tp_size > 1

    def _megatron_config(self):
        if self._mp_config is None:
            from megatron.core import ModelParallelConfig

            on_gpu = torch.cuda.is_available() and self.device != "cpu"
            self._mp_config = ModelParallelConfig(
                tensor_model_parallel_size=self.tp_size,
                # Initialisation is ours (layout-independent), so megatron only allocates.
                perform_initialization=False,
                use_cpu_initialization=not on_gpu,
                params_dtype=self.params_dtype,
            )
        return self._mp_config

    def _check_divisible(self, size: int, what: str) -> None:
        if size % self.tp_size:
            raise ValueError(f"{what}={size} is not divisible by tensor-parallel size {self.tp_size}")

    def column_linear(self, in_features: int, out_features: int | list[int], *, std: float,
                      bias: bool = False, from_residual: bool = True) -> nn.Module:
        """y = x W^T with W split by output rows: each rank returns its `out_features / tp` slice.

        A list of sizes declares a fused projection (e.g. Mamba's [z, x, B, C, dt]): each segment is
        split separately, so the rank's output is its slice of every segment, in order. Under
        sequence parallelism a linear reading the residual stream (`from_residual`) gathers the
        sequence; one inside a mixer reads the whole sequence already.
        """
        segments = list(out_features) if isinstance(out_features, (list, tuple)) else None
        if segments is not None:
            for size in segments:
                self._check_divisible(size, "output segment")
            out_features = sum(segments)
        if self.tp_size == 1:
            layer = nn.Linear(in_features, out_features, bias=bias, device=self.device, dtype=self.params_dtype)
            mark_tp_plan(layer.weight, 0, segments)
            if bias:
                mark_tp_plan(layer.bias, 0, segments)
        elif self.sequence_parallel and from_residual:
            from gigatron.models.layers.sequence_parallel import ColumnLinear

            self._check_divisible(out_features, "output features")
            layer = ColumnLinear(in_features, out_features // self.tp_size, bias, self.layout.tp_group,
                                 device=self.device, dtype=self.params_dtype)
            mark_sharded(layer.weight, 0, segments)
            if bias:
                mark_sharded(layer.bias, 0, segments)
        else:
            from megatron.core.tensor_parallel import ColumnParallelLinear

            self._check_divisible(out_features, "output features")
            layer = _output_only(ColumnParallelLinear)(
                in_features, out_features, config=self._megatron_config(), init_method=nn.init.zeros_,
                bias=bias, gather_output=False, tp_group=self.layout.tp_group,
            )
            mark_sharded(layer.weight, 0, segments)
            if bias:
                mark_sharded(layer.bias, 0, segments)
        self._mark_linear(layer, std)
        return layer

    def row_linear(self, in_features: int, out_features: int, *, std: float, bias: bool = False,
                   to_residual: bool = True) -> nn.Module:
        """y = x W^T with W split by input columns: takes the sharded input, returns the full sum.

        Under sequence parallelism a linear writing the residual stream (`to_residual`) leaves the sum
        as sequence shards; one inside a mixer returns it whole.
        """
        if self.tp_size == 1:
            layer = nn.Linear(in_features, out_features, bias=bias, device=self.device, dtype=self.params_dtype)
            mark_tp_plan(layer.weight, 1)
        elif self.sequence_parallel and to_residual:
            from gigatron.models.layers.sequence_parallel import RowLinear

            self._check_divisible(in_features, "input features")
            layer = RowLinear(in_features // self.tp_size, out_features, bias, self.layout.tp_group,
                              device=self.device, dtype=self.params_dtype)
            mark_sharded(layer.weight, 1)
        else:
            from megatron.core.tensor_parallel import RowParallelLinear

            self._check_divisible(in_features, "input features")
            layer = _output_only(RowParallelLinear)(
                in_features, out_features, config=self._megatron_config(), init_method=nn.init.zeros_,
                bias=bias, input_is_parallel=True, skip_bias_add=False, tp_group=self.layout.tp_group,
            )
            mark_sharded(layer.weight, 1)
        self._mark_linear(layer, std)
        return layer

    def replicated_linear(self, in_features: int, out_features: int, *, std: float, bias: bool = False) -> nn.Module:
        """A linear held whole by every TP rank (small projections of replicated inputs, e.g. AdaLN)."""
        layer = nn.Linear(in_features, out_features, bias=bias, device=self.device, dtype=self.params_dtype)
        self._mark_linear(layer, std)
        return layer

    @staticmethod
    def _mark_linear(layer: nn.Module, std: float) -> None:
        for name, param in layer.named_parameters():
            if name.endswith("bias"):
                mark_init(param, "zeros")
            else:
                mark_init(param, "normal", std)

    def embedding(self, num_embeddings: int, dim: int, *, std: float) -> nn.Module:
        """Token embedding, split over the vocabulary at TP>1 (each rank holds a vocab range)."""
        if self.tp_size == 1:
            layer = nn.Embedding(num_embeddings, dim, device=self.device, dtype=self.params_dtype)
            mark_tp_plan(layer.weight, 0)
        elif self.sequence_parallel:
            from gigatron.models.layers.sequence_parallel import VocabEmbedding

            self._check_divisible(num_embeddings, "vocab size")
            layer = VocabEmbedding(num_embeddings // self.tp_size, dim, self.tp_rank, self.layout.tp_group,
                                   device=self.device, dtype=self.params_dtype)
            mark_sharded(layer.weight, 0)
        else:
            from megatron.core.tensor_parallel import VocabParallelEmbedding

            self._check_divisible(num_embeddings, "vocab size")
            layer = VocabParallelEmbedding(
                num_embeddings, dim, init_method=nn.init.zeros_, config=self._megatron_config(),
                tp_group=self.layout.tp_group,
            )
            mark_sharded(layer.weight, 0)
        mark_init(layer.weight, "normal", std)
        return layer

    def parameter(self, full_shape: tuple[int, ...], *, shard_dim: int | None = None,
                  segments: list[int] | None = None) -> nn.Parameter:
        """A bare parameter (e.g. Mamba's A_log, D, conv weight) of `full_shape`, sharded along `shard_dim`.

        The caller marks its init rule with `mark_init`.
        """
        shape = list(full_shape)
        if shard_dim is not None and self.tp_size > 1:
            if segments is not None:
                for size in segments:
                    self._check_divisible(size, "parameter segment")
            self._check_divisible(shape[shard_dim], "parameter dimension")
            shape[shard_dim] //= self.tp_size
        param = nn.Parameter(torch.empty(shape, device=self.device, dtype=self.params_dtype))
        if shard_dim is not None and self.tp_size > 1:
            mark_sharded(param, shard_dim, segments)
        elif shard_dim is not None:
            mark_tp_plan(param, shard_dim, segments)
        return param

    def pattention(self, d_in: int, d_out: int, n_tokens: int, *, normalization: str, scale_tokens: int | None,
                   key_std: float, value_std: float, from_residual: bool = True, to_residual: bool = False
                   ) -> nn.Module:
        """TokenFormer's token-parameter attention (see `pattention.py`); the tokens split across TP ranks.

        Under sequence parallelism the residual stream is split along the sequence: a Pattention
        reading it (`from_residual`: Q, K, V, the FFN) gathers the sequence, one writing to it
        (`to_residual`: the output projection, the FFN) leaves its sum as sequence shards.
        """
        from gigatron.models.layers.pattention import Pattention

        keys = mark_init(self.parameter((n_tokens, d_in), shard_dim=0), "normal", key_std)
        values = mark_init(self.parameter((n_tokens, d_out), shard_dim=0), "normal", value_std)
        group = self.layout.tp_group if self.tp_size > 1 else None
        sp = self.sequence_parallel
        return Pattention(keys, values, normalization, scale_tokens or n_tokens, group,
                          gather_input=sp and from_residual, scatter_output=sp and to_residual)

    def attention_core(self):
        """The token mixer of attention layers: SDPA at cp = 1, ring / Ulysses / hybrid attention under CP."""
        from gigatron.models.layers.cp.core import AttentionCore

        return AttentionCore(self.cp)

    def sequence_exchange(self):
        """For Mamba layers under CP: the sequence <-> channel all-to-all (None at cp = 1)."""
        if self.cp is None:
            return None
        from gigatron.models.layers.cp.core import SequenceExchange

        return SequenceExchange(self.cp)

    def nesting(self, ffn_size: int, cfg) -> object:
        """MatFormer width state for one FFN of `ffn_size` (see `nested_ffn.py`), with this layout's TP regions."""
        from gigatron.models.layers.nested_ffn import Nesting

        if self.tp_size == 1:
            return Nesting(ffn_size, cfg, 1, _identity, _identity)
        if self.sequence_parallel:
            from gigatron.models.layers.sequence_parallel import gather_sequence, scatter_sequence

            group = self.layout.tp_group
            return Nesting(ffn_size, cfg, self.tp_size, functools.partial(gather_sequence, group=group),
                           functools.partial(scatter_sequence, group=group))
        from megatron.core.tensor_parallel import (
            copy_to_tensor_model_parallel_region,
            reduce_from_tensor_model_parallel_region,
        )

        group = self.layout.tp_group
        return Nesting(ffn_size, cfg, self.tp_size, functools.partial(copy_to_tensor_model_parallel_region, group=group),
                       functools.partial(reduce_from_tensor_model_parallel_region, group=group))

    def norm(self, dim: int, eps: float = 1e-5) -> nn.Module:
        """RMSNorm of the residual stream; replicated on every TP rank. Under sequence parallelism it
        sees this rank's part of the sequence, so its weight's gradient is summed over the TP group."""
        # Created in its dtype rather than converted: a module's .to() cannot swap the parameters of a
        # model built under FakeTensorMode (the memory planner's shapes-only build).
        group = self.layout.tp_group if self.sequence_parallel else None
        return RMSNorm(dim, eps=eps, device=self.device, dtype=self.params_dtype, grad_group=group)

    def layer_norm(self, dim: int, eps: float = 1e-5) -> nn.Module:
        """LayerNorm with scale and bias of the residual stream; replicated like `norm`."""
        from gigatron.models.layers.norms import LayerNorm

        group = self.layout.tp_group if self.sequence_parallel else None
        return LayerNorm(dim, eps=eps, device=self.device, dtype=self.params_dtype, grad_group=group)

    def head_norm(self, dim: int, eps: float = 1e-5) -> nn.Module:
        """RMSNorm over each attention head's `dim` channels (QK-norm), one weight for every head. At
        TP>1 each rank holds some of the heads, so the weight's gradient is summed over the TP group."""
        group = self.layout.tp_group if self.tp_size > 1 else None
        return RMSNorm(dim, eps=eps, device=self.device, dtype=self.params_dtype, grad_group=group)

    def dropout(self, p: float) -> nn.Module:
        """Dropout of the residual stream, with a mask that does not depend on the layout (`dropout.py`)."""
        from gigatron.models.layers.dropout import Dropout

        return Dropout(p, self.layout.tp_group if self.sequence_parallel else None)

    def output_cross_entropy(self, hidden: torch.Tensor, output: nn.Module, target: torch.Tensor,
                             token_weights: torch.Tensor, chunk: int) -> torch.Tensor:
        """Σ token_weights · CE(output(hidden), target) with the logits made `chunk` tokens at a time
        (`linear_cross_entropy.py`). `output` is a `column_linear` reading the residual stream, as
        the LM head's; `hidden` enters the TP region as that layer's input would (whole sequence
        gathered under sequence parallelism, input gradient summed over the TP group)."""
        from gigatron.models.layers.linear_cross_entropy import chunked_linear_cross_entropy

        if getattr(output, "bias", None) is not None:
            raise ValueError("the chunked output loss supports an output layer without bias only")
        group = None
        if self.tp_size > 1:
            from gigatron.models.layers.sequence_parallel import gather_sequence, sum_grad_over

            group = self.layout.tp_group
            hidden = gather_sequence(hidden, group) if self.sequence_parallel else sum_grad_over(hidden, group)
        weight = output.weight
        return chunked_linear_cross_entropy(hidden, weight, target, token_weights, chunk,
                                            vocab_start=self.tp_rank * weight.shape[0], group=group)

    def cross_entropy(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-token loss from this rank's vocab shard of the logits (full logits at TP=1)."""
        if self.tp_size == 1:
            return F.cross_entropy(logits.float().flatten(0, -2), target.flatten(), reduction="none").view_as(target)
        from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

        return vocab_parallel_cross_entropy(logits.float(), target)
