"""gigatron.data."""
