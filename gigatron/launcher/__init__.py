"""gigatron.launcher."""
