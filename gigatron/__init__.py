"""gigatron: distributed pretraining on DeepSpeed and megatron-core."""

__version__ = "0.1.0"
