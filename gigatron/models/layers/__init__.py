"""gigatron.models.layers."""
