"""Checkpoints: the on-disk format and every way to write, open, check and convert one.

    files           step tags, manifest.json (size + sha256 of every file), the atomic `latest` pointer, pruning
    save            a run's checkpoint: DeepSpeed's files, per-rank RNG, trainer state, config, manifest, latest
    resume          which checkpoint a run continues from (agreed by all ranks), and loading it
    reader          `open_checkpoint(path)`: the one way every reader opens any checkpoint (run dir,
                    checkpoints dir, step tag of any layout, consolidated directory) as a LogicalCheckpoint
    native          logical tensors out of DeepSpeed files of any TP/PP/DP/ZeRO layout
    consolidated    the layout-free safetensors directory, its writer and the LogicalCheckpoint protocol
    param_plan      how each logical tensor is split over TP ranks
    engine_load     a logical checkpoint into a DeepSpeed engine of any layout (cross-layout resume)
    convert         consolidate and reshard, each verified against its source
    verify          the checks every conversion runs on its own output
    hf_export       to transformers (Nemotron-H, Mamba-2, Llama), verified by logits
    hf_import       from a local transformers directory, verified by logits
    safe_load       weights-only torch.load that refuses pickled code
    safetensors_stream  writing safetensors one tensor at a time
"""
