"""The typed configuration of a run.

Every section is a dataclass; the model section's type depends on `model.family` and is looked
up in the model registry, so each family keeps its own typed fields (torchtitan's per-model args).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

# What selective recomputation can name (each family's modules declare theirs): the attention
# scores and softmax, the MLP / FFN, the norms, the Mamba mixer.
RECOMPUTE_MODULES = ("core_attn", "mlp", "layernorm", "mamba")


@dataclass
class ParallelConfig:
    """Process layout. dp is derived: world_size / (tp * pp * cp)."""

    tp: int = 1
    pp: int = 1
    cp: int = 1
    # 0 = plain data parallel; 1/2/3 = DeepSpeed ZeRO stages (optimizer / +grads / +params).
    zero_stage: int = 0
    # Filled in by validation from the world size; a value given in YAML is checked, not trusted.
    dp: int | None = None
    # DeepSpeed PipelineModule partitioning: "parameters" balances weights, "uniform" layer counts.
    pipeline_partition: Literal["parameters", "uniform"] = "uniform"
    # Context parallelism (cp > 1): how attention spans the split sequence (docs/longctx.md).
    # ring: K/V passed around the CP group; ulysses: all-to-all to head sharding; hybrid: Ulysses
    # over groups of cp_ulysses consecutive ranks, ring across them.
    cp_attention: Literal["ring", "ulysses", "hybrid"] = "ring"
    cp_ulysses: int = 1
    # Zigzag: rank r holds chunks r and 2·cp−1−r of 2·cp, balancing causal attention's work.
    cp_zigzag: bool = True
    # Sequence parallelism (tp > 1, docs/memory.md): norms, residuals and dropout hold 1/tp of the
    # sequence; all-gather / reduce-scatter around the tensor-parallel layers (Megatron-LM's).
    sequence_parallel: bool = False


@dataclass
class DiffusionConfig:
    """Section `diffusion:` — the rectified-flow objective of diffusion models (docs/fit.md): how
    training draws t and conditions."""

    # Logit-normal time sampling: t = sigmoid(logit_mean + logit_std * z), z ~ N(0, 1) (SD3).
    logit_mean: float = 0.0
    logit_std: float = 1.0
    # Resolution shift towards noise, t' = shift*t / (1 + (shift-1)*t); 1 = none.
    shift: float = 1.0
    # Probability of dropping a sample's condition (class or caption) for classifier-free guidance.
    condition_dropout: float = 0.1
    # Probability of self-conditioning a sample on the model's own latents (RIN); 0 disables it.
    self_condition: float = 0.5


@dataclass
class TrainConfig:
    """Optimisation and the step/token budget."""

    steps: int | None = None
    tokens: int | None = None
    micro_batch_size: int = 1
    global_batch_size: int = 8
    lr: float = 3e-4
    min_lr: float = 3e-5
    warmup_steps: int = 0
    # cosine: warmup then cosine to min_lr; wsd: warmup, stable, then linear decay over decay_fraction.
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    decay_fraction: float = 0.2
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    clip_grad: float = 1.0
    precision: Literal["fp32", "bf16"] = "fp32"
    seed: int = 1234
    eval_interval: int = 0
    # Save and exit (code 0) after every this many steps of one invocation, like Megatron's
    # --exit-interval: splits a run into fixed-length jobs. None runs to the budget.
    exit_interval: int | None = None
    eval_batches: int = 4  # global batches of the validation split per evaluation
    # Hang detection (docs/fault-tolerance.md): seconds a training step after the first may make no
    # progress before every rank dumps its stacks and exits 75 (requeue). None derives it from the
    # steps seen (20x the slowest recent step, at least 180 s); 0 turns the watchdog off.
    hang_timeout: float | None = None
    # The same limit for start-up through the first step, evaluations and checkpoint saves.
    hang_allowance: float = 1800.0
    # Activation recomputation (docs/memory.md), as Megatron-LM's --recompute-*: none; selective
    # (the modules named in recompute_modules); full (whole layers, by recompute_method).
    recompute: Literal["none", "selective", "full"] = "none"
    # full: uniform cuts each pipeline stage's layers into chunks of recompute_num_layers (default 1),
    # each keeping only its input; block recomputes the first recompute_num_layers of each stage.
    recompute_method: Literal["uniform", "block"] = "uniform"
    recompute_num_layers: int | None = None
    # selective: any of RECOMPUTE_MODULES.
    recompute_modules: list[str] = field(default_factory=lambda: ["core_attn"])
    # Language models: compute the output layer and cross-entropy this many tokens at a time
    # (docs/memory.md), so that one chunk's logits exist instead of [tokens, vocabulary]. 0: whole.
    loss_chunk_tokens: int = 0
    # torch.compile each layer of the residual stack (docs/performance.md, "Compiled layers"), as
    # torchtitan's regional compilation; parameters, checkpoints and losses stay those of eager.
    compile: bool = False
    # torch.compile's backend for train.compile: inductor generates fused kernels; aot_eager (and
    # aot_eager_decomp_partition) trace and partition the same graphs but run them eagerly, which
    # finds graph breaks and tracing bugs without inductor's compile time.
    compile_backend: str = "inductor"


@dataclass
class GrowConfig:
    """Section `grow:` — TokenFormer growth at start (docs/tokenformer.md): while the run has no
    checkpoint of its own it starts from `checkpoint` (a smaller TokenFormer) grown to model.*_tokens."""

    checkpoint: str | None = None
    init: Literal["preserve", "random"] = "preserve"
    optimizer: Literal["keep", "reset"] = "keep"  # AdamW moments of the existing tokens (schedule: continue)
    # continue: the source's step, tokens, data position, LR schedule and AdamW state go on.
    # restart: its weights only, as the authors' incremental scaling ("pretrain_partial_init"):
    # step 0, a new warmup and schedule, fresh AdamW state, the data from its start.
    schedule: Literal["continue", "restart"] = "continue"


@dataclass
class MatFormerTrainingConfig:
    """Section `matformer:` — how a MatFormer (model.matformer) trains its granularities
    (docs/matformer.md): every one each step (sum) or one drawn per step (sample)."""

    mode: Literal["sum", "sample"] = "sum"
    weights: list[float] | None = None  # sum: loss weight per granularity (normalised); None = equal
    probabilities: list[float] | None = None  # sample: probability per granularity; None = uniform


@dataclass
class DatasetSpec:
    """One shard dataset (a directory written by `gigatron data shard`) and its blend weight."""

    path: str
    weight: float = 1.0


@dataclass
class DataConfig:
    """Where samples come from. `source: default` builds (once) and reads the bundled data: Shakespeare
    token shards for language models, the captioned-shapes image shards for image models (whose
    own settings are the `images:` section)."""

    source: Literal["default", "shards"] = "default"
    datasets: list[DatasetSpec] = field(default_factory=list)
    # Optional: a sentencepiece .model (or "bytes") that must match the shards' recorded tokenizer.
    tokenizer: str | None = None
    seq_len: int = 128  # must equal the shards' seq_len
    default_vocab_size: int = 2048  # tokenizer size for source=default
    shuffle: bool = True
    num_workers: int = 2  # DataLoader worker processes per rank
    # raise: a corrupt sample stops the run naming shard and member; skip: it is masked out and counted.
    on_error: Literal["raise", "skip"] = "raise"
    # Shard check at start: size only, sha256 too, or auto (sha256 below 1 GiB of shards).
    verify: Literal["auto", "size", "sha256"] = "auto"
    # Root of gigatron's caches: the default dataset, and shards of datasets given by URL (under
    # remote/). Null: $GIGATRON_CACHE, else ~/.cache/gigatron. Put it on node-local disk for URLs.
    cache_dir: str | None = None
    # Remote datasets: most bytes of shards cached per node and dataset ("200GB", "512MiB", bytes);
    # null: no limit. Least recently used shards are evicted first.
    cache_limit: str | None = None
    prefetch_shards: int = 8  # remote shards each rank fetches ahead of its loader, in read order
    retries: int = 8  # attempts per remote request; transient errors back off 1, 2, 4... s (max 30)
    retry_backoff_s: float = 1.0


@dataclass
class ImagesConfig:
    """Section `images:` — what image models (FIT, text-to-image; docs/images.md) read from their
    dataset: image size, labels, captions, aspect buckets, latents, the validation hold-out, and
    the bundled synthetic shapes set (`data.source: default`)."""

    # Each image is scaled to cover image_size² and centre-cropped. data.source=default reads the
    # bundled synthetic shapes set of default_images images.
    image_size: int = 32
    default_images: int = 2000
    default_max_shapes: int = 3  # shapes per image of the bundled set (1-3)
    # Class names; a sample's label is the one its caption names first (image classification and
    # class-conditional diffusion). null: no labels.
    classes: list[str] | None = None
    # Image datasets have one split: its last valid_images samples are held out for validation.
    valid_images: int = 0
    # Text-to-image: captions become caption_len token ids (longer ones are cut), with data.tokenizer
    # or a BPE of caption_vocab_size pieces trained on the captions. Aspect buckets: images keep
    # their aspect ratio (area ~ image_size², sides multiples of bucket_multiple, ratio <= max_aspect_ratio).
    caption_len: int = 32
    caption_vocab_size: int = 400
    aspect_buckets: bool = False
    bucket_multiple: int = 8
    max_aspect_ratio: float = 2.0
    # Latent-space training: shards of a VAE's latents (gigatron.data.latent_shards), not images.
    latents: bool = False


@dataclass
class CheckpointConfig:
    """When and where to save, and what to resume from."""

    dir: str | None = None  # default: <output_dir>/checkpoints
    interval: int = 0  # steps between saves; 0 saves only at the end and on preemption
    keep_last: int = 3
    # auto: resume from `latest` in dir when there is one; none: start fresh; or a checkpoint path
    # (any layout, or consolidated), used until this run has saved a checkpoint of its own.
    resume: str = "auto"
    save_final: bool = True
    # Every checkpoint this run reads (auto-resume, checkpoint.resume=PATH, grow.checkpoint) is
    # checked against its manifest first; false checks sizes only and skips the sha256 of every file.
    verify_checksums: bool = True
    # With resume: none in a directory holding an earlier run's checkpoints: move them (and its
    # metrics and TensorBoard logs) aside and start fresh; without it such a start is refused.
    overwrite: bool = False


@dataclass
class LoggingConfig:
    """Metrics sinks."""

    interval: int = 1
    tensorboard: bool = True
    progress_bar: bool = True
    # Count live tensor bytes per rank from the model's construction to the end (a dispatch mode:
    # slow) and log the peaks as a `memory` record; what `gigatron plan` is checked against.
    memory_trace: bool = False


@dataclass
class FaultsConfig:
    """Section `faults:` — numerical faults and stragglers (docs/fault-tolerance.md). A step whose loss or gradient
    norm is not finite, or whose loss exceeds spike_factor x the median of the last spike_window
    steps' losses, is not applied; then `policy` decides: skip (go on with the next batch), rollback
    (reload the latest checkpoint and skip the batches from it through the bad step) or stop (write
    diagnostics, exit 3, not requeued)."""

    policy: Literal["stop", "skip", "rollback"] = "stop"
    spike_factor: float = 0.0  # 0: no spike detection, only non-finite values
    spike_window: int = 50
    # rollback: after this many rollbacks in one invocation the run stops instead (a spike that
    # comes back after each reload needs a person, not another reload).
    max_rollbacks: int = 3
    # Stragglers: every straggler_interval steps (0: never) the ranks compare their own work per
    # step (data wait + forward); a rank above straggler_factor x the median is named.
    straggler_interval: int = 100
    straggler_factor: float = 1.5


@dataclass
class HardwareConfig:
    """The machines a run is laid out for: what `gigatron plan` plans against by default, and what
    the trainer's memory check holds a run to (docs/memory.md)."""

    gpus: int | None = None  # the GPU count the layout is meant for (None: tp*pp*cp, one replica)
    gpu_memory_gib: float = 80.0  # memory per GPU
    gpu_peak_tflops: float = 989.0  # dense bf16 peak per GPU (H100 SXM); the step time's yardstick
    mfu: float = 0.4  # model FLOPs utilisation the step time and time to budget assume
    # Per GPU, outside what the allocator counts: CUDA context, NCCL buffers, allocator fragmentation.
    overhead_gib: float = 2.0
    # The trainer plans the run before building the model and refuses one that does not fit its
    # devices (CUDA: the device's memory; CPU: cpu_memory_gib per node, default the machine's).
    memory_check: bool = True
    cpu_memory_gib: float | None = None


@dataclass
class Config:
    """A whole run. `model` holds the registered family's own dataclass."""

    model: Any
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    # Training-time features and objectives, each with its own section.
    grow: GrowConfig = field(default_factory=GrowConfig)
    matformer: MatFormerTrainingConfig = field(default_factory=MatFormerTrainingConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    images: ImagesConfig = field(default_factory=ImagesConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    output_dir: str = "runs/default"

    @property
    def checkpoint_dir(self) -> str:
        """The checkpoint directory, defaulting to `<output_dir>/checkpoints`."""
        return self.checkpoint.dir or f"{self.output_dir}/checkpoints"
