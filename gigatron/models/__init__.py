"""gigatron.models."""
