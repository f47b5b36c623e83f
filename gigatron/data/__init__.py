"""gigatron.data: tokenizers, shard writers and readers, the global-order loader, default datasets.

Import from the submodules (e.g. `gigatron.data.loader.GlobalBatchLoader`); nothing is imported
here so that light tools (the launcher, `gigatron data`) do not pay for torch.
"""
