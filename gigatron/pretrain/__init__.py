"""gigatron.pretrain."""
