"""gigatron.tools."""
