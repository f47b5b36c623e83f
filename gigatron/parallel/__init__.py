"""The process layout: one object owns the TP/PP/CP/DP sizes, ranks and groups (docs/architecture.md)."""

from gigatron.parallel.layout import DeepSpeedMPU, ParallelLayout, initialize_layout

__all__ = ["DeepSpeedMPU", "ParallelLayout", "initialize_layout"]
