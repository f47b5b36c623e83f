"""The training loop: step, log, evaluate, checkpoint on schedule, on signal and at the end."""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from gigatron.checkpoint.files import atomic_write_text, read_latest, tag_for_step
from gigatron.checkpoint.resume import (
    ResumePlan,
    current_layout,
    load_checkpoint,
    load_logical_state,
    plan_resume,
    resume_tag,
)
from gigatron.checkpoint.save import SaveFailed, TrainerState, save_checkpoint
from gigatron.config import Config, ConfigError, config_to_yaml
from gigatron.data.build import TrainingData
from gigatron.data.loader import GlobalBatchLoader
from gigatron.launcher.dist_env import DistEnv
from gigatron.launcher.exit_codes import EXIT_NUMERICAL_FAULT, EXIT_OK, EXIT_PREEMPTED, EXIT_SAVE_FAILED
from gigatron.launcher.signals import StopHandler, agree_on_stop, stop_exit_code
from gigatron.models.layers.compile import compile_report, compiled_graphs
from gigatron.models.registry import get_model_spec
from gigatron.objectives import StepContext, batch_to, build_features, build_task_data
from gigatron.parallel.layout import ParallelLayout, initialize_layout
from gigatron.planning.measure import LiveTensorBytes
from gigatron.pretrain.engine import TrainingEngine, build_engine, total_steps
from gigatron.pretrain.log_format import format_duration, stamped
from gigatron.pretrain.metrics import MetricsWriter, memory_gib, reset_peak_memory
from gigatron.pretrain.numerics import (
    Fault,
    NonFiniteState,
    loss_injections,
    past_rolled_back_samples,
    record_rollback,
    state_nonfinite,
)
from gigatron.pretrain.peak_flops import mfu_against, peak_flops
from gigatron.pretrain.stragglers import StragglerDetector, injected_sleep
from gigatron.pretrain.stragglers import describe as describe_stragglers
from gigatron.pretrain.watchdog import FAULTS_DIR, ROLLBACKS, Watchdog, collective_failed


@dataclass
class StepResult:
    """What one optimizer step reports."""

    loss: float
    grad_norm: float | None
    lr: float
    data_wait_s: float
    # Metrics a training feature adds to the step (e.g. one loss per trained submodel).
    extra: dict[str, float] = field(default_factory=dict)
    fault: Fault | None = None  # set when the step was not applied (pretrain/numerics.py)
    forward_s: float = 0.0  # time in the forward passes (the trainer's own step only)


def _as_float(value) -> float | None:
    if value is None:
        return None
    return float(value.item() if torch.is_tensor(value) else value)


class Trainer:
    """One rank's run. Build with `Trainer(cfg, env)`, then `run()` returns the exit code.

    `watchdog`, started by the caller before the trainer is built (so that a hang while building is
    caught too), is told the loop's progress; without one nothing watches the run.
    """

    def __init__(self, cfg: Config, env: DistEnv, watchdog: Watchdog | None = None) -> None:
        self.cfg, self.env = cfg, env
        self.watchdog = watchdog or Watchdog(Path(cfg.output_dir), env.rank, env.world_size, hang_timeout=0,
                                             allowance=cfg.train.hang_allowance, run_id="")
        self.device = env.device
        self.layout: ParallelLayout = initialize_layout(cfg.parallel)
        spec = get_model_spec(type(cfg.model).family)
        self.data: TrainingData = self._build_data(spec)
        model_vocab = getattr(cfg.model, "vocab_size", None)
        if model_vocab is not None and self.data.vocab_size is not None and model_vocab < self.data.vocab_size:
            raise ConfigError(f"model.vocab_size={model_vocab} is smaller than the tokenizer's {self.data.vocab_size} "
                             f"ids ({self.data.roots[0]}); set model.vocab_size >= {self.data.vocab_size}")
        # Every generator a model, objective or library may draw from; all are saved with each
        # checkpoint (checkpoint.save.rng_state) and restored on resume.
        torch.manual_seed(cfg.train.seed)
        random.seed(cfg.train.seed)
        np.random.seed(cfg.train.seed % 2**32)
        self.metrics: MetricsWriter | None = None
        self.ckpt_dir = Path(cfg.checkpoint_dir)
        # Chosen before the engine exists: a checkpoint of another layout is loaded while building it.
        where = resume_tag(self.ckpt_dir, cfg.checkpoint.resume, log=self.log,
                           checksums=cfg.checkpoint.verify_checksums)
        saved_layout = current_layout(cfg.parallel, cfg.train.precision, self.layout.dp_size)
        self.resume: ResumePlan | None = plan_resume(where, saved_layout, log=self.log)
        self.features = build_features(cfg)
        for feature in self.features:
            feature.prepare(cfg)
        if self.resume is None:
            for feature in self.features:
                start = feature.start_point(self.log)
                if start is not None:
                    self.resume = ResumePlan(start.path, start, start.cfg.model)
                    break
        if self.resume is not None:
            self.resume.check_model(cfg.model)
        init_from = None if self.resume is None else self.resume.logical
        # MFU is logged by rank 0 alone, so only it measures the CPU's matmul peak (0.3 s, which every
        # rank of a node measuring at once would also distort); before the engine, so that its
        # matrices are not in a memory trace.
        peak = peak_flops(self.device, cfg.train.precision) if env.is_main else None
        self.cluster_peak = None if peak is None else peak * env.world_size
        reset_peak_memory(self.device)  # this process's own peak from here, not a parent's
        # logging.memory_trace: count live tensor bytes from the model's construction to the end.
        self.memory_trace = LiveTensorBytes().__enter__() if cfg.logging.memory_trace else None
        self.engine: TrainingEngine = build_engine(cfg, self.layout, self.device, init_from=init_from)
        t = cfg.train
        self.loader = GlobalBatchLoader(self.data.train, t.global_batch_size, t.micro_batch_size,
                                        self.layout.data_rank, self.layout.data_size, t.seed, cfg.data.shuffle,
                                        weights=self.data.train_weights, num_workers=cfg.data.num_workers,
                                        on_error=cfg.data.on_error, prefetch_shards=cfg.data.prefetch_shards)
        self.total_steps = total_steps(cfg)
        self.state = TrainerState(tokenizer_fingerprint=self.data.tokenizer_fingerprint)
        self.config_yaml = config_to_yaml(cfg)
        sample_tokens = spec.sample_tokens(cfg)
        self.tokens_per_step = t.global_batch_size * sample_tokens
        self.flops_per_token = spec.flops_per_token(cfg.model, sample_tokens)
        for feature in self.features:
            self.flops_per_token = feature.flops_per_token(spec.flops_per_token) or self.flops_per_token
        self.valid_extra: dict[str, float] = {}
        self.guard = self.engine.guard
        self.rollbacks = 0
        self._compiled_graphs = 0
        self.injected_losses = loss_injections()
        self.injected_sleep = injected_sleep(env.rank)
        f = cfg.faults
        self.stragglers = StragglerDetector(f.straggler_interval, f.straggler_factor, self.device)
        self.context = StepContext(self.engine.engine, self.engine.task, self.device, self.engine.is_pipeline,
                                   self._dp_mean, self._validation_loss, self.guard.observe)
        # Building drew from torch's generator differently per layout (nn.Linear's default init at
        # TP=1, none at TP>1) and per rank (the peak measurement): start training from one state, so
        # that dropout masks agree across TP ranks and layouts. A resumed run then restores its own.
        torch.manual_seed(t.seed)

    def _dp_mean(self, value: torch.Tensor) -> torch.Tensor:
        """Mean over the data-parallel (and CP) ranks, in place."""
        group = self.layout.dp_group
        if group is not None and dist.get_world_size(group) > 1:
            dist.all_reduce(value, op=dist.ReduceOp.AVG, group=group)
        return value

    def _build_data(self, spec) -> TrainingData:
        # Local rank 0 downloads and tokenizes; the others then read its cache instead of racing.
        if self.env.local_rank == 0:
            data = build_task_data(spec, self.cfg)
        dist.barrier()
        if self.env.local_rank != 0:
            data = build_task_data(spec, self.cfg)
        return data

    def log(self, text: str) -> None:
        """Print on rank 0 (through the progress bar when there is one), stamped with the time."""
        text = stamped(text)
        if self.metrics is not None:
            self.metrics.write_line(text)
        elif self.env.is_main:
            print(text, flush=True)

    # ---- resume -------------------------------------------------------------------------------
    def maybe_resume(self) -> None:
        """Load the checkpoint chosen by `checkpoint.resume`, if any."""
        if self.resume is None:
            return
        path = self.resume.path
        if self.resume.same_layout:
            state = load_checkpoint(self.engine.engine, path.parent, path.name)
        else:
            state = load_logical_state(self.resume.logical)
        if state.tokenizer_fingerprint and state.tokenizer_fingerprint != self.data.tokenizer_fingerprint:
            raise ConfigError(
                f"checkpoint {path} was trained with tokenizer {state.tokenizer_fingerprint!r} but "
                f"data.tokenizer gives {self.data.tokenizer_fingerprint!r}; resume with the same tokenizer"
            )
        if state.loader is not None:  # an imported or extracted model starts at the data's beginning
            self.loader.load_state_dict(state.loader)
            self._skip_rolled_back_samples()
        else:
            state.loader = self.loader.state_dict()
        self.state = state
        self.guard.load_state_dict(state.recent_losses)
        self.log(f"[resume] {path}: step {state.step}, {state.tokens} tokens")

    # ---- one step -----------------------------------------------------------------------------
    def train_step(self) -> StepResult:
        """One optimizer step over the global batch."""
        ds = self.engine.engine
        task = self.engine.task
        lr = float(ds.get_lr()[0])
        self.guard.begin_step()
        skipped_before = ds.skipped_steps
        self.watchdog.beat(self.state.step + 1, "data")
        wait_start = time.perf_counter()
        micro_batches = self.loader.next_batch()
        data_wait = time.perf_counter() - wait_start
        self.watchdog.beat(self.state.step + 1, "compute")
        for feature in self.features:
            taken = feature.train_step(self.state.step, self.context, micro_batches)
            if taken is not None:
                loss, extra = taken
                return StepResult(loss=loss, grad_norm=_as_float(ds.get_global_grad_norm()), lr=lr,
                                  data_wait_s=data_wait, extra=extra,
                                  fault=self.guard.rejected(ds.skipped_steps > skipped_before))
        forward_s = 0.0  # the pipeline engine's forward passes are not timed apart
        if self.engine.is_pipeline:
            pairs = iter([task.pipeline_pairs(mb.to(self.device)) for mb in micro_batches])
            loss = ds.train_batch(data_iter=pairs).detach().float()
        else:
            total = torch.zeros((), device=self.device)
            factor = self.injected_losses.pop(self.state.step + 1, None)
            for mb in micro_batches:
                forward_start = time.perf_counter()
                if self.injected_sleep:
                    time.sleep(self.injected_sleep)
                micro_loss = task.forward_loss(ds, batch_to(mb, self.device))
                forward_s += time.perf_counter() - forward_start
                if factor is not None:
                    micro_loss = micro_loss * factor
                self.guard.observe(micro_loss)
                ds.backward(micro_loss)
                ds.step()
                total += micro_loss.detach().float()
            loss = self._dp_mean(total / len(micro_batches))
        return StepResult(loss=float(loss), grad_norm=_as_float(ds.get_global_grad_norm()), lr=lr,
                          data_wait_s=data_wait, fault=self.guard.rejected(ds.skipped_steps > skipped_before),
                          forward_s=forward_s)

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean validation loss over `train.eval_batches` micro-batches per DP rank."""
        if not self.data.valid or self.cfg.train.eval_batches < 1:
            return None
        t = self.cfg.train
        # The same `eval_batches` global batches every time and on every layout, so validation
        # curves compare across runs and across DP sizes.
        valid = GlobalBatchLoader(self.data.valid, t.global_batch_size, t.micro_batch_size,
                                  self.layout.data_rank, self.layout.data_size, t.seed, shuffle=False,
                                  weights=self.data.valid_weights, on_error=self.cfg.data.on_error,
                                  prefetch_shards=0)
        batches = [batch_to(mb, self.device) for _ in range(t.eval_batches) for mb in valid.next_batch()]
        valid.close()
        self.valid_extra = {}
        for feature in self.features:
            taken = feature.evaluate(self.context, batches)
            if taken is not None:
                loss, self.valid_extra = taken
                return loss
        return self._validation_loss(batches)

    def _validation_loss(self, batches: list) -> float:
        ds, task = self.engine.engine, self.engine.task
        if self.engine.is_pipeline:
            loss = ds.eval_batch(iter([task.pipeline_pairs(mb) for mb in batches]), num_micro_batches=len(batches))
            return float(loss)
        ds.eval()
        total = torch.zeros((), device=self.device)
        for mb in batches:
            total += task.forward_loss(ds, mb).float()
        ds.train()
        return float(self._dp_mean(total / len(batches)))

    def save(self) -> None:
        """Checkpoint the current state (all ranks); never one whose weights or optimizer state
        hold NaN or infinity (NonFiniteState, exit 3)."""
        self.watchdog.beat(self.state.step, "save")
        if state_nonfinite(self.engine.engine, self.device):
            raise NonFiniteState(f"refusing to save step {self.state.step}: weights or optimizer moments hold NaN "
                                 f"or infinity; `latest` still names the last good checkpoint in {self.ckpt_dir}")
        self.state.loader = self.loader.state_dict()
        self.state.recent_losses = self.guard.state_dict()
        save_checkpoint(self.engine.engine, self.ckpt_dir, self.state, self.config_yaml,
                        self.cfg.checkpoint.keep_last, log=self.log)

    # ---- the run ------------------------------------------------------------------------------
    def run(self) -> int:
        """Train to the budget; returns EXIT_OK, EXIT_PREEMPTED after saving on a signal, or
        EXIT_SAVE_FAILED when a checkpoint could not be written."""
        cfg = self.cfg
        if self.env.is_main:
            # The whole resolved config goes to the run directory, not the log (it was ~110 lines).
            resolved = Path(cfg.output_dir) / "config.yaml"
            resolved.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(resolved, self.config_yaml)
            self.log(f"[config] resolved configuration written to {resolved}")
        self.maybe_resume()
        self.metrics = MetricsWriter(Path(cfg.output_dir), self.env.is_main, self.total_steps, self.state.step,
                                     cfg.logging.tensorboard, cfg.logging.progress_bar)
        ranks = f"{self.env.world_size} rank{'s' if self.env.world_size != 1 else ''}"
        self.log(f"[run] {type(cfg.model).family} {self.engine.num_params / 1e6:.2f}M parameters, {ranks} "
                 f"({self.layout.describe()} zero={cfg.parallel.zero_stage}), steps {self.state.step}->{self.total_steps}, "
                 f"{self.tokens_per_step} tokens/step")
        if cfg.train.recompute != "none":
            self.log(f"[run] {self.engine.recompute.describe()} (rank 0's pipeline stage)")
        if cfg.train.compile:
            self.log(f"[run] {self.engine.compiled.describe()} (rank 0's pipeline stage); the first step compiles")
        # One "start" record per invocation: `gigatron status` counts restarts and requeues from them.
        self.metrics.log(self.state.step, {"world_size": self.env.world_size, "resumed": self.state.step > 0,
                                           "total_steps": self.total_steps}, kind="start")
        self._started = time.monotonic()
        self._started_step = self.state.step
        # A hang or a lost peer ends the process without unwinding: the status record says why.
        self.watchdog.on_fault = lambda line, code: self.metrics.log(self.state.step, {"code": code, "fault": line},
                                                                     kind="end")
        stopping = StopHandler().install()
        code: int | None = None
        try:
            code = self._train(stopping)
            self._log_memory_trace()
            return code
        except SaveFailed as exc:  # every rank raises it together; rank 0 says why
            if self.env.is_main:
                print(f"gigatron pretrain: {exc}", file=sys.stderr, flush=True)
            code = EXIT_SAVE_FAILED
            return code
        except NonFiniteState as exc:  # every rank raises it together
            self.log(f"[fault] {exc}")
            code = EXIT_NUMERICAL_FAULT
            return code
        except BaseException as exc:
            if collective_failed(exc):
                # Named and recorded (on_fault) while the metrics are open; the caller exits with
                # the same code (peer_lost answers it again).
                self.watchdog.peer_lost(exc)
            else:
                code = 1
            raise
        finally:
            # How this invocation ended, for `gigatron status` (a SIGKILL leaves none).
            if code is not None:
                self.metrics.log(self.state.step, {"code": code}, kind="end")
            stopping.uninstall()
            self.metrics.close()

    def _log_memory_trace(self) -> None:
        """With logging.memory_trace: every rank's peak of live tensor bytes, one metrics record."""
        if self.memory_trace is None:
            return
        self.memory_trace.__exit__(None, None, None)
        peaks: list[int] = [0] * self.env.world_size
        dist.all_gather_object(peaks, self.memory_trace.peak)
        self.metrics.log(self.state.step, {"peak_bytes": peaks}, kind="memory")
        self.log(f"[memory] peak live tensors per rank (MiB): {', '.join(f'{b / 2**20:.1f}' for b in peaks)}")

    def _train(self, stopping: StopHandler) -> int:
        cfg = self.cfg
        last_saved = self.state.step if self.state.step > 0 else None
        started_at = self.state.step
        while self.state.step < self.total_steps:
            started = time.perf_counter()
            result = self.train_step()
            elapsed = time.perf_counter() - started
            self.watchdog.step_done(elapsed)
            self.state.step += 1
            self.state.tokens += self.tokens_per_step
            step = self.state.step
            if result.fault is not None:
                self.state.rejected_steps += 1
            self._log_step(result, elapsed)
            if cfg.train.compile:
                self._log_compile()
            self._check_stragglers(result, elapsed)
            if result.fault is not None:
                code = self._on_fault(result.fault)
                if code is not None:
                    return code
                if self.state.step < step:  # rolled back
                    last_saved = self.state.step
                    continue
            if cfg.train.eval_interval and step % cfg.train.eval_interval == 0:
                self._log_eval()
            if cfg.checkpoint.interval and step % cfg.checkpoint.interval == 0:
                self.save()
                last_saved = step
            # Every rank must see the same answer, or some would save while others train on.
            stop = agree_on_stop(stopping.signal, device=self.device)
            if stop is not None:
                if last_saved != step:
                    self.save()
                code = stop_exit_code(stop)
                where = self.ckpt_dir / tag_for_step(step)
                if code == EXIT_PREEMPTED:
                    self.log(f"[preempted] {stop.name}: saved step {step} to {where}, exiting with {code} so the "
                             "job can be requeued")
                else:
                    self.log(f"[stopped] {stop.name}: saved step {step} to {where}, exiting with {code} (not "
                             "requeued); run the same command to continue from there")
                return code
            if cfg.train.exit_interval and (step - started_at) % cfg.train.exit_interval == 0 \
                    and step < self.total_steps:
                if last_saved != step:
                    self.save()
                self.log(f"[exit] train.exit_interval={cfg.train.exit_interval}: saved step {step}; "
                         "run the same command again to continue")
                return EXIT_OK
        if cfg.train.eval_interval and self.state.step % cfg.train.eval_interval:
            self._log_eval()
        if cfg.checkpoint.save_final and last_saved != self.state.step:
            self.save()
        self.log(f"[done] step {self.state.step}, {self.state.tokens} tokens")
        return EXIT_OK

    def _log_compile(self) -> None:
        """After the first step, and after any later step that compiled again (a new shape, an
        evaluation's no-grad forward): what compilation has cost so far."""
        graphs = compiled_graphs()
        if graphs != self._compiled_graphs:
            self._compiled_graphs = graphs
            self.log(f"[compile] step {self.state.step}: {compile_report()}")

    def _on_fault(self, fault: Fault) -> int | None:
        """After a step that was not applied: go on (skip), reload the latest checkpoint past the bad
        batches (rollback), or stop with diagnostics (stop); an exit code when the run must end."""
        policy = self.cfg.faults.policy
        step = self.state.step
        what = f"step {step}: {fault.reason} ({fault.detail}); the update was not applied"
        if policy == "skip":
            self.log(f"[fault] {what}; faults.policy=skip: going on with the next batch "
                     f"({self.state.rejected_steps} steps skipped so far)")
            return None
        if policy == "rollback":
            tag = read_latest(self.ckpt_dir)
            if tag is not None and self.rollbacks < self.cfg.faults.max_rollbacks:
                self._rollback(tag, fault, what)
                return None
            why = ("no checkpoint to roll back to" if tag is None else
                   f"faults.max_rollbacks={self.cfg.faults.max_rollbacks} rollbacks already done")
            what += f"; cannot roll back: {why}"
        where = self._write_fault_report(fault)
        self.log(f"[fault] {what}; stopping with exit {EXIT_NUMERICAL_FAULT} (not requeued); diagnostics in {where}. "
                 "Resuming meets the same batch: set faults.policy=skip or rollback to train past it")
        return EXIT_NUMERICAL_FAULT

    def _batch_samples(self) -> list[int]:
        """The global sample range [first, end) of the step just taken, for this run's
        loader position before any rollback of this invocation moved it."""
        end = self.loader.consumed_samples
        return [end - self.cfg.train.global_batch_size, end]

    def _write_fault_report(self, fault: Fault) -> Path:
        report = {"step": self.state.step, "reason": fault.reason, "detail": fault.detail, "loss": fault.loss,
                  "samples": self._batch_samples(), "recent_losses": self.guard.state_dict(),
                  "policy": self.cfg.faults.policy}
        path = Path(self.cfg.output_dir) / FAULTS_DIR / f"numerical-step_{self.state.step:08d}.json"
        if self.env.is_main:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(report, indent=1))
        return path

    def _rollback(self, tag: str, fault: Fault, what: str) -> None:
        """Reload checkpoint `tag` (model, optimizer, schedule, RNG, counters) and move the loader
        past every batch from it through the bad step; the skipped range goes to
        <output_dir>/faults/rollbacks.jsonl, which a later resume honours too."""
        bad_step = self.state.step
        bad_end = self.loader.consumed_samples
        state = load_checkpoint(self.engine.engine, self.ckpt_dir, tag)
        first = int(state.loader["consumed_samples"])
        self.loader.load_state_dict({**state.loader, "consumed_samples": bad_end})
        state.rejected_steps = self.state.rejected_steps
        self.state = state
        self.guard.load_state_dict(state.recent_losses)
        self.rollbacks += 1
        if self.env.is_main:
            record_rollback(Path(self.cfg.output_dir), {
                "step": bad_step, "reason": fault.reason, "detail": fault.detail, "restored": tag,
                "restored_step": state.step, "skipped_samples": [first, bad_end]})
        self.log(f"[fault] {what}; faults.policy=rollback: reloaded {tag} (step {state.step}) and skipped samples "
                 f"{first}..{bad_end - 1} ({(bad_end - first) // self.cfg.train.global_batch_size} batches), "
                 f"recorded in {FAULTS_DIR}/{ROLLBACKS}")

    def _skip_rolled_back_samples(self) -> None:
        """On resume: a batch range an earlier rollback skipped is skipped again (the checkpoint
        before the rollback points into it)."""
        position = past_rolled_back_samples(Path(self.cfg.output_dir), self.loader.consumed_samples)
        if position != self.loader.consumed_samples:
            self.log(f"[resume] skipping samples {self.loader.consumed_samples}..{position - 1}, as a rollback did "
                     f"({FAULTS_DIR}/{ROLLBACKS})")
            self.loader.load_state_dict({**self.loader.state_dict(), "consumed_samples": position})

    def _check_stragglers(self, result: StepResult, elapsed: float) -> None:
        self.stragglers.add(elapsed, result.data_wait_s, result.data_wait_s + result.forward_s)
        report = self.stragglers.maybe_report(self.state.step)
        if report is None:
            return
        assert self.metrics is not None
        self.metrics.log(self.state.step, {"median_own_s": report.median_own_s, "slow_ranks": report.slow,
                                           "ranks": report.ranks}, kind="stragglers")
        if report.slow:
            self.log(describe_stragglers(report, self.cfg.faults.straggler_interval))

    def _log_step(self, result: StepResult, elapsed: float) -> None:
        step = self.state.step
        tokens_per_s = self.tokens_per_step / elapsed
        mfu = None
        if self.cluster_peak:
            achieved = self.flops_per_token * tokens_per_s
            mfu, peak = mfu_against(achieved, self.cluster_peak)
            if peak > self.cluster_peak:  # the CPU peak measured at start came out low (a busy machine)
                self.log(f"[mfu] a step reached {achieved / 1e9:.1f} GFLOP/s, above the peak measured at start "
                         f"({self.cluster_peak / 1e9:.1f}); MFU is computed against it from now on")
                self.cluster_peak = peak
        current_gib, peak_gib = memory_gib(self.device)
        values = {
            "loss": result.loss, "lr": result.lr, "grad_norm": result.grad_norm,
            "tokens": self.state.tokens, "tokens_per_s": tokens_per_s, "step_time_s": elapsed,
            "data_wait_s": result.data_wait_s, "data_skipped": self.loader.skipped_samples,
            "rejected": int(result.fault is not None), "rejected_steps": self.state.rejected_steps,
            "mfu": mfu, "memory_gib": peak_gib, "memory_current_gib": current_gib, **result.extra,
            **self.loader.remote_counters(),
        }
        assert self.metrics is not None
        self.metrics.log(step, values)
        self.metrics.advance(1, {"loss": f"{result.loss:.4f}", "tok/s": f"{tokens_per_s:,.0f}"})
        if self.cfg.logging.interval and step % self.cfg.logging.interval == 0:
            gn = "n/a" if result.grad_norm is None else f"{result.grad_norm:.3f}"
            mfu_text = "n/a" if mfu is None else f"{100 * mfu:.1f}%"
            self.log(f"step {step}/{self.total_steps} loss {result.loss:.4f} lr {result.lr:.3e} grad_norm {gn} "
                     f"tok/s {tokens_per_s:,.0f} mfu {mfu_text} data_wait {1000 * result.data_wait_s:.1f}ms "
                     f"mem {values['memory_gib']:.2f}GiB"
                     + "".join(f" {k} {v:.4f}" for k, v in result.extra.items()) + f" eta {self._eta()}")

    def _eta(self) -> str:
        """Time to the budget at this invocation's average step time so far (h:mm:ss)."""
        done = self.state.step - self._started_step
        if done <= 0:
            return "n/a"
        seconds = (time.monotonic() - self._started) / done * (self.total_steps - self.state.step)
        return format_duration(seconds)

    def _log_eval(self) -> None:
        self.watchdog.beat(self.state.step, "evaluate")
        loss = self.evaluate()
        if loss is None:
            return
        assert self.metrics is not None
        self.metrics.log(self.state.step, {"loss": loss, **self.valid_extra}, kind="valid")
        nested = "".join(f", {k} {v:.4f}" for k, v in self.valid_extra.items())
        self.log(f"step {self.state.step} validation loss {loss:.4f}{nested}")
