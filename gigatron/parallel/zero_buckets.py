"""The size of DeepSpeed's ZeRO communication buckets: the trainer configures them, the planner counts them."""

from __future__ import annotations

# Elements per ZeRO communication bucket (reduce, all-gather, ZeRO-3 prefetch). DeepSpeed allocates a
# whole bucket up front; its default of 5e8 elements took 1.9 GiB per rank in fp32 even for a 1M
# model (docs/benchmarks.md). 5e7 is DeepSpeed's own ZeRO-3 prefetch default and near Megatron-LM's
# 4e7 DDP bucket; a model smaller than that gets a bucket of its size.
ZERO_BUCKET_ELEMENTS = 50_000_000


def zero_bucket_elements(local_parameters: int) -> int:
    """The bucket for a rank holding `local_parameters`: at most ZERO_BUCKET_ELEMENTS, a multiple of 512."""
    return max(512, -(-min(ZERO_BUCKET_ELEMENTS, local_parameters) // 512) * 512)


# ZeRO-3: gathered parameters kept live at most (DeepSpeed's stage3_max_live_parameters; with its
# default reuse distance a model smaller than this stays gathered from forward to backward), and
# the size under which a parameter is never partitioned (stage3_param_persistence_threshold).
ZERO3_MAX_LIVE_PARAMETERS = 1_000_000_000
ZERO3_PERSISTENCE_THRESHOLD = 100_000
