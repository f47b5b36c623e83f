"""Checks that need no process group: layout arithmetic, batch arithmetic, model divisibility."""

from __future__ import annotations

import math

from gigatron.config.errors import ConfigError
from gigatron.config.schema import RECOMPUTE_MODULES, Config
from gigatron.config.units import parse_byte_size


def divisibility_problems(checks: list[tuple[str, int, str, int]]) -> list[str]:
    """Messages for each (key, value, divisor_key, divisor) whose value is not divisible by the divisor.

    Model families use this in their `validate` so every message reads the same way.
    """
    return [
        f"{key}={value} is not divisible by {divisor_key}={divisor}"
        for key, value, divisor_key, divisor in checks
        if divisor > 0 and value % divisor
    ]


def matformer_problems(cfg: Config) -> list[str]:
    """Problems with the `matformer:` section for this model and layout; names the keys."""
    m, nesting = cfg.matformer, getattr(cfg.model, "matformer", None)
    if nesting is None:
        given = [k for k in ("weights", "probabilities") if getattr(m, k) is not None]
        return [f"matformer.{k} is set but the model has no model.matformer section" for k in given]
    out: list[str] = []
    count = len(nesting.granularities)
    for key in ("weights", "probabilities"):
        values = getattr(m, key)
        if values is None:
            continue
        if len(values) != count or any(v < 0 for v in values) or not sum(values) > 0:
            out.append(f"matformer.{key}={values} needs {count} non-negative values (one per "
                       f"model.matformer.granularities {nesting.granularities}) with a positive sum")
    probabilities = m.probabilities
    if probabilities is not None and not out and abs(sum(probabilities) - 1.0) > 1e-6:
        out.append(f"matformer.probabilities={probabilities} sums to {sum(probabilities)}, not 1")
    if cfg.parallel.zero_stage == 3:
        out.append("model.matformer with parallel.zero_stage=3: ZeRO-3 gathers a layer's weights only when the layer "
                   "is called, and a submodel multiplies by slices of them; use parallel.zero_stage 0, 1 or 2")
    if cfg.parallel.pp > 1 and m.mode == "sum":
        out.append("matformer.mode=sum with parallel.pp>1: the pipeline engine runs one forward/backward per "
                   "micro-batch; use matformer.mode=sample with pipeline parallelism")
    return out


def cp_head_problems(parallel, heads: int, kv_heads: int, tp_splits_heads: bool = True) -> list[str]:
    """Ulysses (parallel.cp_attention ulysses or hybrid) splits each TP rank's heads further: checks that it can."""
    if parallel.cp == 1 or parallel.cp_attention == "ring":
        return []
    degree = parallel.cp if parallel.cp_attention == "ulysses" else parallel.cp_ulysses
    tp = parallel.tp if tp_splits_heads else 1
    if heads % tp or kv_heads % tp or (heads // tp) % degree or (kv_heads // tp) % degree:
        return [f"parallel.cp_attention={parallel.cp_attention} splits the attention heads per TP rank ({heads}/{tp} "
                f"query, {kv_heads}/{tp} key/value) over {degree} ranks, which does not divide them; use "
                "parallel.cp_attention=ring, or a Ulysses degree that divides the heads"]
    return []


def _context_parallel_problems(cfg: Config) -> list[str]:
    p, out = cfg.parallel, []
    pieces = 2 * p.cp if p.cp_zigzag else p.cp
    if cfg.data.seq_len % pieces:
        out.append(f"data.seq_len={cfg.data.seq_len} is not divisible by {pieces} (2·parallel.cp with parallel.cp_zigzag="
                   f"{str(p.cp_zigzag).lower()}): every CP rank must hold whole chunks of every sequence")
    if p.cp_attention == "hybrid" and not (1 < p.cp_ulysses < p.cp and p.cp % p.cp_ulysses == 0):
        out.append(f"parallel.cp_attention=hybrid needs parallel.cp_ulysses (the Ulysses degree, now {p.cp_ulysses}) "
                   f"to divide parallel.cp={p.cp} and lie strictly between 1 and it; the ring degree is cp/cp_ulysses")
    if p.cp_attention != "hybrid" and p.cp_ulysses != 1:
        out.append(f"parallel.cp_ulysses={p.cp_ulysses} only applies to parallel.cp_attention=hybrid")
    if p.pp > 1:
        out.append(f"parallel.cp={p.cp} with parallel.pp={p.pp}: context parallelism is not combined with the "
                   "pipeline engine; use tp, cp and dp")
    return out


def recompute_problems(cfg: Config) -> list[str]:
    """What is wrong with the train.recompute* keys for this model and pipeline size."""
    t, out = cfg.train, []
    unknown = [m for m in t.recompute_modules if m not in RECOMPUTE_MODULES]
    if unknown:
        out.append(f"train.recompute_modules has {unknown}; valid: {list(RECOMPUTE_MODULES)}")
    if t.recompute == "selective" and not t.recompute_modules:
        out.append("train.recompute=selective needs train.recompute_modules (some of "
                   f"{list(RECOMPUTE_MODULES)})")
    n = t.recompute_num_layers
    if n is None:
        return out
    if t.recompute != "full":
        out.append(f"train.recompute_num_layers={n} applies to train.recompute=full only (now {t.recompute})")
        return out
    layers = getattr(cfg.model, "recompute_layers", getattr(cfg.model, "num_layers", None))
    per_stage = None if layers is None else -(-layers // cfg.parallel.pp)
    if n < 1:
        out.append(f"train.recompute_num_layers={n} must be >= 1")
    elif t.recompute_method == "uniform" and layers is not None and n > layers:
        out.append(f"train.recompute_num_layers={n} is larger than the model's {layers} layers")
    elif t.recompute_method == "block" and per_stage is not None and n > per_stage:
        out.append(f"train.recompute_num_layers={n} with train.recompute_method=block is larger than the "
                   f"{per_stage} layers of a pipeline stage ({layers} layers over parallel.pp={cfg.parallel.pp})")
    return out


def layer_chunk_problems(run: Config) -> list[str]:
    """For a family whose own forward drives its layers (no flat layer list): chunks of several layers
    (train.recompute_method=uniform, recompute_num_layers > 1) cannot be recomputed as one region."""
    t = run.train
    if t.recompute != "full" or t.recompute_method != "uniform" or (t.recompute_num_layers or 1) == 1:
        return []
    return [f"train.recompute_num_layers={t.recompute_num_layers} with train.recompute_method=uniform recomputes "
            f"chunks of consecutive layers, which model.family={type(run.model).family} does not support (its "
            "forward drives its blocks); use train.recompute_num_layers=1, or train.recompute_method=block"]


def sequence_parallel_problems(cfg: Config) -> list[str]:
    """What stops parallel.sequence_parallel in this run (empty when off or fine)."""
    p = cfg.parallel
    if not p.sequence_parallel:
        return []
    if p.tp == 1:
        return ["parallel.sequence_parallel=true needs parallel.tp > 1 (it splits the sequence over the "
                "tensor-parallel ranks); set parallel.tp or turn it off"]
    out = []
    if not getattr(type(cfg.model), "supports_sequence_parallel", False):
        out.append(f"parallel.sequence_parallel=true: model.family={type(cfg.model).family} does not support "
                   "sequence parallelism (the language-model families gpt, hybrid, mamba2, mamba and tokenformer do)")
    local = cfg.data.seq_len // p.cp
    if local % p.tp:
        out.append(f"parallel.sequence_parallel=true: each TP rank holds 1/{p.tp} of the {local} tokens per "
                   f"sequence{' per CP rank' if p.cp > 1 else ''}; make data.seq_len"
                   f"{'/parallel.cp' if p.cp > 1 else ''} divisible by parallel.tp={p.tp}")
    return out


def loss_chunk_problems(cfg: Config) -> list[str]:
    """train.loss_chunk_tokens chunks a language model's output layer; other objectives have none."""
    chunk = cfg.train.loss_chunk_tokens
    if chunk <= 0:
        return []
    family = type(cfg.model).family
    if not getattr(type(cfg.model), "has_vocab_head", False):
        return [f"train.loss_chunk_tokens={chunk}: model.family={family} has no vocabulary output layer (its "
                "objective is not next-token prediction); set it to 0"]
    if cfg.parallel.zero_stage == 3:
        # ZeRO-3 gathers a weight only inside its module's forward and backward; the chunked loss
        # reads the output weight after the head's forward and in its own backward.
        return [f"train.loss_chunk_tokens={chunk} does not combine with parallel.zero_stage=3 (ZeRO-3 holds the "
                "output layer's weight only while the layer itself runs); use zero_stage 0-2 or "
                "loss_chunk_tokens=0"]
    return []


def compile_problems(cfg: Config) -> list[str]:
    """train.compile needs parameters whose shapes stay put between calls, and a backend torch knows."""
    if cfg.train.compile_backend != "inductor":
        import torch._dynamo  # late: only a non-default backend pays dynamo's import to be checked

        backends = torch._dynamo.list_backends(exclude_tags=())
        if cfg.train.compile_backend not in backends:
            return [f"train.compile_backend={cfg.train.compile_backend!r} is not a torch.compile backend; "
                    f"valid: {', '.join(sorted(backends))}"]
    if cfg.train.compile and cfg.parallel.zero_stage == 3:
        # ZeRO-3 swaps each parameter between an empty placeholder and its gathered tensor in hooks
        # around every module: dynamo sees new shapes on every call and cannot keep a graph.
        return ["train.compile=true does not combine with parallel.zero_stage=3 (ZeRO-3 changes each "
                "parameter's shape around every module's forward, which torch.compile guards on); use "
                "zero_stage 0-2 with compile, or train.compile=false"]
    return []


def hardware_problems(cfg: Config) -> list[str]:
    """The `hardware:` section: a plan target that makes sense."""
    h = cfg.hardware
    problems = []
    if h.gpus is not None and h.gpus < 1:
        problems.append(f"hardware.gpus={h.gpus} must be >= 1 (or null: one model replica)")
    for key in ("gpu_memory_gib", "gpu_peak_tflops"):
        if not getattr(h, key) > 0:
            problems.append(f"hardware.{key}={getattr(h, key)} must be > 0")
    if not 0 < h.mfu <= 1:
        problems.append(f"hardware.mfu={h.mfu} must be in (0, 1]")
    if h.overhead_gib < 0:
        problems.append(f"hardware.overhead_gib={h.overhead_gib} must be >= 0")
    if h.cpu_memory_gib is not None and not h.cpu_memory_gib > 0:
        problems.append(f"hardware.cpu_memory_gib={h.cpu_memory_gib} must be > 0 (or null: the machine's memory)")
    return problems


MIN_SEQ_LEN = 16
MIN_HANG_TIMEOUT_S = 10.0


def optimizer_problems(cfg: Config) -> list[str]:
    """What is wrong with the AdamW and schedule keys of train: (NaN and infinity are wrong everywhere)."""
    t = cfg.train
    out = []
    for key, value, rule, ok in (
            ("lr", t.lr, "must be > 0", lambda v: v > 0),
            ("min_lr", t.min_lr, "must be >= 0", lambda v: v >= 0),
            ("weight_decay", t.weight_decay, "must be >= 0", lambda v: v >= 0),
            ("eps", t.eps, "must be > 0", lambda v: v > 0),
            ("clip_grad", t.clip_grad, "must be >= 0 (0 turns clipping off)", lambda v: v >= 0)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and ok(value)):
            out.append(f"train.{key}={value} {rule}")
    betas = t.betas
    if not (isinstance(betas, (list, tuple)) and len(betas) == 2
            and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas)):
        out.append(f"train.betas={list(betas) if isinstance(betas, (list, tuple)) else betas} must be two numbers "
                   "in [0, 1), e.g. [0.9, 0.95]")
    return out


def schedule_problems(train, steps: int, budget: str) -> list[str]:
    """What is wrong with the LR schedule of a run of `steps` optimizer steps; `budget` says where
    `steps` came from, for the message (e.g. "train.steps=3")."""
    if train.warmup_steps > steps:
        # The run would end still warming up: it never trains at train.lr nor decays to min_lr.
        return [f"train.warmup_steps={train.warmup_steps} is longer than the run ({steps} steps: {budget}); "
                f"it must be <= {steps}, e.g. --set train.warmup_steps={steps // 10}"]
    return []


def validate_config(cfg: Config, world_size: int) -> Config:
    """Check `cfg` for a run of `world_size` processes and fill in `parallel.dp`.

    All problems are reported together, each naming its keys, so a user fixes a config in one go.
    Runs before any process group exists: a bad layout must not hang a collective.
    """
    p, t = cfg.parallel, cfg.train
    problems: list[str] = []
    for key, value in (("parallel.tp", p.tp), ("parallel.pp", p.pp), ("parallel.cp", p.cp)):
        if value < 1:
            problems.append(f"{key}={value} must be >= 1")
    if problems:
        raise ConfigError("; ".join(problems))
    model_parallel = p.tp * p.pp * p.cp
    if world_size % model_parallel:
        problems.append(
            f"world size {world_size} is not divisible by parallel.tp*parallel.pp*parallel.cp "
            f"= {p.tp}*{p.pp}*{p.cp} = {model_parallel}"
        )
        dp = None
    else:
        dp = world_size // model_parallel
        if p.dp is not None and p.dp != dp:
            problems.append(
                f"parallel.dp={p.dp} but world size {world_size} = tp*pp*cp*dp gives dp={dp} "
                f"(tp={p.tp}, pp={p.pp}, cp={p.cp})"
            )
    if p.zero_stage not in (0, 1, 2, 3):
        problems.append(f"parallel.zero_stage={p.zero_stage} must be 0, 1, 2 or 3")
    if p.cp > 1:
        problems += _context_parallel_problems(cfg)
    if p.pp > 1 and p.zero_stage > 1:
        problems.append(
            f"parallel.zero_stage={p.zero_stage} with parallel.pp={p.pp}: DeepSpeed's pipeline engine "
            "supports ZeRO stage 0 or 1 only"
        )
    if t.micro_batch_size < 1 or t.global_batch_size < 1:
        problems.append(
            f"train.micro_batch_size={t.micro_batch_size} and train.global_batch_size="
            f"{t.global_batch_size} must be >= 1"
        )
    elif dp is not None and t.global_batch_size % (t.micro_batch_size * dp):
        problems.append(
            f"train.global_batch_size={t.global_batch_size} is not divisible by "
            f"train.micro_batch_size*dp = {t.micro_batch_size}*{dp} = {t.micro_batch_size * dp}"
        )
    if (t.steps is None) == (t.tokens is None):
        problems.append(
            f"set exactly one of train.steps and train.tokens (got steps={t.steps}, tokens={t.tokens})"
        )
    if t.steps is not None and t.steps < 1:
        problems.append(f"train.steps={t.steps} must be >= 1")
    if t.tokens is not None and t.tokens < 1:
        problems.append(f"train.tokens={t.tokens} must be >= 1")
    if t.exit_interval is not None and t.exit_interval < 1:
        problems.append(f"train.exit_interval={t.exit_interval} must be >= 1 (or null to run to the budget)")
    if t.hang_timeout is not None and t.hang_timeout != 0 and not t.hang_timeout >= MIN_HANG_TIMEOUT_S:
        problems.append(f"train.hang_timeout={t.hang_timeout:g} must be >= {MIN_HANG_TIMEOUT_S:g} seconds (a frozen rank "
                        "is told apart by its heartbeat stopping for 8 s), 0 (no watchdog) or null (derived)")
    if not t.hang_allowance >= MIN_HANG_TIMEOUT_S:
        problems.append(f"train.hang_allowance={t.hang_allowance:g} must be >= {MIN_HANG_TIMEOUT_S:g} seconds")
    if t.loss_chunk_tokens < 0:
        problems.append(f"train.loss_chunk_tokens={t.loss_chunk_tokens} must be >= 0 (0 computes the whole "
                        "logits tensor at once)")
    if t.warmup_steps < 0:
        problems.append(f"train.warmup_steps={t.warmup_steps} must be >= 0")
    elif t.steps is not None and t.steps >= 1:
        # A token budget's steps depend on the family's tokens per sample: the pretrain command
        # checks it (planning.throughput.schedule_budget_problems).
        problems.extend(schedule_problems(t, t.steps, f"train.steps={t.steps}"))
    if not 0.0 < t.decay_fraction <= 1.0:
        problems.append(f"train.decay_fraction={t.decay_fraction} must be in (0, 1]")
    if t.min_lr > t.lr:
        problems.append(f"train.min_lr={t.min_lr} is larger than train.lr={t.lr}")
    problems.extend(optimizer_problems(cfg))
    if cfg.data.seq_len < MIN_SEQ_LEN:
        # Shorter samples teach nothing, and the default dataset's per-sample bookkeeping then
        # outgrows its tokens (seq_len=1 built gigabytes).
        problems.append(f"data.seq_len={cfg.data.seq_len} must be >= {MIN_SEQ_LEN}")
    images = cfg.images
    for key, value, least in (("image_size", images.image_size, 1), ("default_images", images.default_images, 1),
                              ("valid_images", images.valid_images, 0)):
        if value < least:
            problems.append(f"images.{key}={value} must be >= {least}")
    if images.default_max_shapes not in (1, 2, 3):
        problems.append(f"images.default_max_shapes={images.default_max_shapes} must be 1, 2 or 3")
    if cfg.data.source == "shards" and not cfg.data.datasets:
        problems.append("data.source=shards needs data.datasets (a list of {path: <dir from `gigatron data shard`>, "
                        "weight: w})")
    for i, spec in enumerate(cfg.data.datasets):
        if not spec.weight > 0:
            problems.append(f"data.datasets[{i}].weight={spec.weight} must be > 0")
    if cfg.data.num_workers < 0:
        problems.append(f"data.num_workers={cfg.data.num_workers} must be >= 0")
    problems.extend(remote_data_problems(cfg.data))
    if cfg.checkpoint.keep_last < 1:
        problems.append(f"checkpoint.keep_last={cfg.checkpoint.keep_last} must be >= 1")
    if cfg.checkpoint.interval < 0:
        problems.append(f"checkpoint.interval={cfg.checkpoint.interval} must be >= 0")
    f = cfg.faults
    if not (f.spike_factor == 0 or f.spike_factor > 1):
        problems.append(f"faults.spike_factor={f.spike_factor} must be > 1 (a multiple of the recent median loss) "
                        "or 0 (no spike detection)")
    if f.spike_window < 2:
        problems.append(f"faults.spike_window={f.spike_window} must be >= 2")
    if f.max_rollbacks < 0:
        problems.append(f"faults.max_rollbacks={f.max_rollbacks} must be >= 0")
    if f.straggler_interval < 0:
        problems.append(f"faults.straggler_interval={f.straggler_interval} must be >= 0 (0: no straggler check)")
    if not f.straggler_factor > 1:
        problems.append(f"faults.straggler_factor={f.straggler_factor} must be > 1")
    problems.extend(recompute_problems(cfg))
    problems.extend(sequence_parallel_problems(cfg))
    problems.extend(hardware_problems(cfg))
    problems.extend(cfg.model.validate(cfg))
    problems.extend(matformer_problems(cfg))
    problems.extend(loss_chunk_problems(cfg))
    problems.extend(compile_problems(cfg))
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))
    p.dp = dp
    return cfg


def remote_data_problems(data) -> list[str]:
    """The remote-dataset keys of the `data` section (cache_limit, prefetch_shards, retries)."""
    out = []
    if data.cache_limit is not None:
        try:
            parse_byte_size(data.cache_limit, "data.cache_limit")
        except ValueError as exc:
            out.append(str(exc))
    if data.prefetch_shards < 0:
        out.append(f"data.prefetch_shards={data.prefetch_shards} must be >= 0 (0: fetch each shard when first read)")
    if data.retries < 1:
        out.append(f"data.retries={data.retries} must be >= 1 (attempts per remote request)")
    if not data.retry_backoff_s >= 0:
        out.append(f"data.retry_backoff_s={data.retry_backoff_s} must be >= 0")
    return out
