"""slurm/pretrain_hybrid.sh on a real single-node SLURM cluster: a run, and preemption -> requeue -> resume.

The module fixture starts the cluster with slurm/local-cluster/cluster.sh (root only; it installs Slurm
22.05 with apt-get when missing). The local cluster sets AuthInfo=cred_expire=5, so a requeued
job waits ~10 s instead of SLURM's default ~2 minutes before it runs again, and lets jobs share the
cores (OverSubscribe=FORCE): the jobs that need no interaction are all submitted when the module starts
(`batch`) and run while the preemption test drives its own job, so their scheduling and start-up
waits overlap instead of adding up.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gigatron.pretrain.watchdog import heartbeat_path
from tests.conftest import (
    REPO,
    SMOKE,
    BackgroundRun,
    final_weights,
    read_metrics,
    warmup_within,
)

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

SCRIPT = REPO / "slurm" / "pretrain_hybrid.sh"
CLUSTER = REPO / "slurm" / "local-cluster/cluster.sh"
HYBRID_SMOKE = REPO / "configs" / "hybrid" / "smoke.yaml"
# The script's own default; the GPT smoke config only until the hybrid one exists.
# GIGATRON_TEST_SLURM_CONFIG picks another config (e.g. to check the script while a model is in progress).
CONFIG = Path(os.environ.get("GIGATRON_TEST_SLURM_CONFIG") or (HYBRID_SMOKE if HYBRID_SMOKE.is_file() else SMOKE))
# Variables of other launchers that would take precedence over SLURM's in DistEnv.
FOREIGN = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS")
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE", "PREEMPTED"}


class Cluster:
    """Submits the sbatch script to the local cluster and remembers every job for the teardown."""

    def __init__(self, slurm_conf: str) -> None:
        self.env = {k: v for k, v in os.environ.items() if k not in FOREIGN and not k.startswith("SLURM_")}
        self.env["SLURM_CONF"] = slurm_conf
        self.jobs: list[str] = []

    def run(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=self.env, cwd=REPO)

    def submit(self, tmp: Path, steps: int, minutes: int = 5, script: Path = SCRIPT, config: Path | None = None,
               overrides: tuple[str, ...] = ()) -> tuple[str, Path, Path]:
        """sbatch `script` with 2 tasks; returns (job id, run dir, log file)."""
        tmp.mkdir(parents=True, exist_ok=True)
        run_dir, log = tmp / "run", tmp / "job.out"
        extra = (f"--set train.steps={steps} --set train.eval_interval=0 "
                 "--set logging.progress_bar=false --set logging.tensorboard=false --set logging.interval=1"
                 + "".join(f" --set {item}" for item in
                           [*overrides, *warmup_within(config or CONFIG, [f"train.steps={steps}", *overrides])]))
        env = {**self.env, "GIGATRON_CONFIG": str(config or CONFIG), "GIGATRON_RUN_DIR": str(run_dir),
               "GIGATRON_VENV": str(Path(sys.executable).parent.parent), "GIGATRON_EXTRA": extra}
        proc = subprocess.run(
            ["sbatch", "--parsable", "--ntasks-per-node=2", "--cpus-per-task=1", f"--time={minutes}",
             f"--output={log}", str(script)],
            capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
        assert proc.returncode == 0, f"sbatch failed: {proc.stderr}"
        job = proc.stdout.strip().split(";")[0]
        self.jobs.append(job)
        return job, run_dir, log

    def job_info(self, job: str) -> dict[str, str]:
        """scontrol's fields of the job (empty once SLURM forgot it)."""
        proc = self.run("scontrol", "show", "job", "-o", job)
        if proc.returncode != 0:
            return {}
        return dict(re.findall(r"(\w+)=(\S*)", proc.stdout))

    def wait_final(self, job: str, timeout: float, log: Path, min_restarts: int = 0) -> dict[str, str]:
        """Poll until the job reaches a final state after at least `min_restarts` requeues."""
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        while time.monotonic() < deadline:
            info = self.job_info(job)
            if info.get("JobState") in FINAL_STATES and int(info.get("Restarts", 0)) >= min_restarts:
                return info
            time.sleep(1)
        pytest.fail(f"job {job} not finished after {timeout:.0f} s: {info.get('JobState')} "
                    f"restarts={info.get('Restarts')}\n{tail(log)}")


def tail(log: Path, chars: int = 6000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.is_file() else f"(no log at {log})"


def train_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [rec["step"] for rec in records if rec["kind"] == "train"]


def latest(run_dir: Path) -> str:
    return (run_dir / "checkpoints" / "latest").read_text().strip()


@pytest.fixture(scope="module")
def slurm(corpus_ready):
    if not sys.platform.startswith("linux"):
        pytest.skip("the local SLURM cluster needs Linux")
    if os.geteuid() != 0:
        pytest.skip("slurm/local-cluster/cluster.sh must run as root (it installs Slurm and runs its daemons)")
    if (os.cpu_count() or 1) < 2:
        pytest.skip("two SLURM tasks need two CPUs")
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        pytest.skip("Slurm is not installed and apt-get is not available to install it")
    was_running = subprocess.run(["bash", str(CLUSTER), "status"], capture_output=True, timeout=30).returncode == 0
    try:
        start = subprocess.run(["bash", str(CLUSTER), "start"], capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        pytest.skip("slurm/local-cluster/cluster.sh start timed out (apt-get without network?)")
    if start.returncode != 0:
        if shutil.which("slurmctld") is None or shutil.which("sbatch") is None:
            pytest.skip(f"Slurm is not installed and could not be installed: {start.stderr.strip()[-500:]}")
        pytest.fail(f"slurm/local-cluster/cluster.sh start failed:\n{start.stderr}")
    match = re.search(r"^export SLURM_CONF=(\S+)$", start.stdout, re.MULTILINE)
    assert match, f"no SLURM_CONF line in:\n{start.stdout}"
    cluster = Cluster(match.group(1))
    # Jobs left by an interrupted earlier session (its teardown never ran) would hold the node and
    # keep this session's jobs pending until their timeouts; this cluster exists only for the tests.
    cluster.run("scancel", "--user", "root")
    yield cluster
    for job in cluster.jobs:  # leftovers of failed or timed-out tests
        if cluster.job_info(job).get("JobState") not in FINAL_STATES | {None}:
            cluster.run("scancel", job)
    if not was_running:
        subprocess.run(["bash", str(CLUSTER), "stop"], capture_output=True, timeout=60)


LOCAL_OVERRIDES = ["train.eval_interval=0", "logging.interval=1"]
LONGCTX_CONFIG = REPO / "configs" / "longctx" / "smoke.yaml"
IMAGE_SCRIPTS = {
    # script: (its default config, overrides, what the run line must show)
    "pretrain_fit.sh": ("configs/fit/smoke.yaml",
                        ("images.default_images=64", "images.valid_images=0", "parallel.zero_stage=2"), "dp=2 zero=2"),
    "pretrain_t2i.sh": ("configs/t2i/smoke.yaml", ("images.default_images=64", "images.valid_images=0", "parallel.tp=2",
                                                   "images.caption_vocab_size=300", "model.vocab_size=300"), "tp=2"),
}
SWEEP_TASKS = 4
GIGATRON = Path(sys.executable).parent / "gigatron"


@pytest.fixture(scope="module", autouse=True)
def batch(slurm, tmp_path_factory) -> dict[str, tuple[str, Path, Path]]:
    """Every job that needs no interaction, submitted at once: name -> (job id, run dir, log)."""
    root = tmp_path_factory.mktemp("batch")
    jobs = {
        "hybrid": slurm.submit(root / "hybrid", steps=6),
        "longctx": slurm.submit(root / "longctx", steps=3, script=REPO / "slurm" / "pretrain_longctx.sh",
                                config=LONGCTX_CONFIG),
    }
    for script, (config, overrides, _) in IMAGE_SCRIPTS.items():
        jobs[script] = slurm.submit(root / script, steps=3, script=REPO / "slurm" / script, config=REPO / config,
                                    overrides=overrides)
    jobs["sweep"] = submit_sweep(slurm, root / "sweep")
    jobs["shard"] = submit_shard_array(slurm, root / "shard")
    return jobs


SHARD_TASKS = 3


def shard_arguments(out: Path) -> list[str]:
    """`gigatron data shard` arguments of the array-build test: six plays, byte tokens."""
    from gigatron.data.corpus import default_corpus_files

    plays = sorted(str(p) for p in default_corpus_files())[:6]
    return ["--input", *plays, "--tokenizer", "bytes", "--seq-len", "255", "--shard-size", "256",
            "--valid-fraction", "0.05", "--out", str(out)]


def submit_shard_array(slurm, tmp: Path) -> tuple[str, Path, Path]:
    """slurm/shard.sh: an array of SHARD_TASKS tokenizing tasks and the dependent merge; (merge job, out, logs)."""
    tmp.mkdir(parents=True)
    env = {**slurm.env, "GIGATRON_VENV": str(Path(sys.executable).parent.parent)}
    proc = subprocess.run(
        ["bash", str(REPO / "slurm" / "shard.sh"), "--tasks", str(SHARD_TASKS), "--cpus-per-task=1", "--time=5",
         f"--output={tmp}/shard-%A_%a.out", "--", *shard_arguments(tmp / "dataset")],
        capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    array, merge = proc.stdout.strip().splitlines()[-1].split()
    slurm.jobs += [array, merge]
    return merge, tmp / "dataset", tmp


def submit_sweep(slurm, tmp: Path) -> tuple[str, Path, Path]:
    """`gigatron sweep plan` of four runs, submitted as slurm/sweep.sh's job array; (job, sweep dir, log dir)."""
    tmp.mkdir(parents=True)
    sweep = tmp / "sweep"
    plan = subprocess.run(
        [str(GIGATRON), "sweep", "plan", "--config", str(CONFIG), "--grid", "model.hidden_size=64,128",
         "--grid", "train.steps=2,3", "--set", "train.warmup_steps=2", "--set", "train.eval_interval=0", "--set", "logging.progress_bar=false",
         "--set", "logging.tensorboard=false", "--set", "data.num_workers=0", "--out", str(sweep)],
        capture_output=True, text=True, timeout=120, cwd=REPO)
    assert plan.returncode == 0, plan.stderr
    env = {**slurm.env, "GIGATRON_VENV": str(Path(sys.executable).parent.parent)}
    proc = subprocess.run(
        ["sbatch", "--parsable", f"--array=0-{SWEEP_TASKS - 1}", "--ntasks-per-node=1", "--cpus-per-task=1",
         "--time=5", f"--output={tmp}/task-%a.out", str(REPO / "slurm" / "sweep.sh"), str(sweep)],
        capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip().split(";")[0]
    slurm.jobs.append(job)
    return job, sweep, tmp


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, corpus_ready):
    """The same 2-rank runs launched locally, for exact comparison (6 and 30 steps): started when the
    module starts, they train while the tests wait on the cluster; `.wait()` gives their output_dir."""
    runs = {steps: BackgroundRun(tmp_path_factory.mktemp(f"local-{steps}"), [f"train.steps={steps}", *LOCAL_OVERRIDES],
                                 nproc=2, config=CONFIG) for steps in (6, 30)}
    yield runs
    for run in runs.values():
        run.kill()


def consumed_samples(run_dir: Path) -> int:
    state = json.loads((run_dir / "checkpoints" / latest(run_dir) / "trainer_state.json").read_text())
    return state["loader"]["consumed_samples"]


def wait_for_steps(slurm, job: str, run_dir: Path, log: Path, new_steps: int, restarts: int) -> None:
    """Poll until the job's `restarts`-th start has logged `new_steps` train steps of its own (240 s)."""
    deadline = time.monotonic() + 240
    before = None  # steps logged by earlier starts, read once this start is under way
    while True:
        info = slurm.job_info(job)
        assert info.get("JobState") not in FINAL_STATES, f"job ended before it could be signalled:\n{tail(log)}"
        if int(info.get("Restarts", 0)) == restarts:
            if before is None:  # earlier starts have exited once SLURM counts the restart
                before = len(train_steps(run_dir)) if restarts else 0
            if len(train_steps(run_dir)) >= before + new_steps:
                return
        assert time.monotonic() < deadline, f"{new_steps} steps not logged after 240 s:\n{tail(log)}"
        time.sleep(0.2)


# First in the module: it drives its job while the batch jobs run beside it.
def test_usr1_and_scontrol_requeue_each_save_requeue_and_resume_bitwise(slurm, uninterrupted, tmp_path):
    # One 30-step job is preempted twice: first as `#SBATCH --signal=B:USR1@120` does before the time
    # limit (SIGUSR1 to the batch shell only), then by `scontrol requeue` (an admin, or preemption with
    # PreemptMode=REQUEUE), which sends SIGTERM. Each time the ranks agree and save; the requeued job
    # resumes; the end result is bitwise the uninterrupted run.
    steps = 30
    job, run_dir, log = slurm.submit(tmp_path, steps=steps, minutes=8)
    wait_for_steps(slurm, job, run_dir, log, new_steps=3, restarts=0)
    usr1 = slurm.run("scancel", "--signal=USR1", "--batch", job)
    assert usr1.returncode == 0, usr1.stderr
    # The requeued job resumes from the USR1 checkpoint; let it train 3 steps of its own, then requeue it.
    wait_for_steps(slurm, job, run_dir, log, new_steps=3, restarts=1)
    requeue = slurm.run("scontrol", "requeue", job)
    assert requeue.returncode == 0, requeue.stderr

    info = slurm.wait_final(job, timeout=360, log=log, min_restarts=2)
    text = log.read_text()
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), tail(log)
    assert info["Restarts"] == "2", tail(log)
    for restart in range(3):
        assert f"SLURM_RESTART_COUNT={restart}" in text, tail(log)
    # SIGUSR1 is preemption (saved, exit 75, requeued by the script); SIGTERM from `scontrol requeue`
    # is a stop (saved, exit 143, not requeued by the script): SLURM requeues the job itself.
    assert "[preempted] SIGUSR1" in text and "[stopped] SIGTERM" in text, tail(log)
    assert f"requeueing job {job}" in text, tail(log)
    resumed = sorted({int(step) for step in re.findall(r"\[resume\] \S+: step (\d+)", text)})
    assert len(resumed) == 2, tail(log)
    assert 3 <= resumed[0] < resumed[1] < steps, f"preempted at steps {resumed}: each signal should stop the run early"
    assert f"[done] step {steps}" in text, tail(log)
    assert latest(run_dir) == f"step_{steps:08d}"
    assert train_steps(run_dir) == list(range(1, steps + 1)), "every step logged exactly once across the requeues"
    # No sample repeated or skipped: the loader consumed exactly steps x global batch.
    assert consumed_samples(run_dir) == steps * 8
    reference = final_weights(uninterrupted[steps].wait())
    weights = final_weights(run_dir)
    assert weights.keys() == reference.keys()
    for name in reference:
        assert torch.equal(weights[name], reference[name]), f"{name} differs from the uninterrupted run"


def test_sbatch_trains_checkpoints_and_equals_a_local_run(slurm, batch, uninterrupted):
    job, run_dir, log = batch["hybrid"]
    info = slurm.wait_final(job, timeout=300, log=log)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), tail(log)
    text = log.read_text()
    assert "SLURM_RESTART_COUNT=0" in text
    assert "2 ranks" in text, tail(log)
    assert latest(run_dir) == "step_00000006"
    assert train_steps(run_dir) == list(range(1, 7))
    assert read_metrics(run_dir)[-1]["loss"] == read_metrics(uninterrupted[6].wait())[-1]["loss"]


def test_long_context_script_trains_with_context_parallelism(slurm, batch):
    """slurm/pretrain_longctx.sh with its default config: 2048-token sequences split over the 2 tasks."""
    job, run_dir, log = batch["longctx"]
    info = slurm.wait_final(job, timeout=300, log=log)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), tail(log)
    assert "cp=2" in log.read_text(), tail(log)
    assert train_steps(run_dir) == [1, 2, 3]


@pytest.mark.parametrize("script", sorted(IMAGE_SCRIPTS))
def test_image_model_scripts_train_their_default_config(slurm, batch, script):
    """slurm/pretrain_fit.sh (the FIT encoder, DP=2 with ZeRO-2) and slurm/pretrain_t2i.sh (the smoke
    text-to-image model, TP=2) on 64 shapes images."""
    job, run_dir, log = batch[script]
    info = slurm.wait_final(job, timeout=300, log=log)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), tail(log)
    assert IMAGE_SCRIPTS[script][2] in log.read_text(), tail(log)
    assert train_steps(run_dir) == [1, 2, 3]


def test_sweep_runs_as_a_job_array_and_summarises(slurm, batch):
    job, sweep, logs = batch["sweep"]
    deadline = time.monotonic() + 300
    while any(slurm.job_info(f"{job}_{i}").get("JobState") not in FINAL_STATES for i in range(SWEEP_TASKS)):
        assert time.monotonic() < deadline, "\n".join(tail(p, 2000) for p in logs.glob("task-*.out"))
        time.sleep(1)
    summary = subprocess.run([str(GIGATRON), "sweep", "summary", str(sweep)], capture_output=True, text=True,
                             timeout=120, cwd=REPO)
    assert summary.returncode == 0, summary.stderr
    rows = json.loads((sweep / "summary.json").read_text())
    assert [r["status"] for r in rows] == ["done"] * 4, "\n".join(tail(p, 2000) for p in logs.glob("task-*.out"))
    assert [(r["model.hidden_size"], r["train.steps"]) for r in rows] == [("64", "2"), ("64", "3"), ("128", "2"),
                                                                       ("128", "3")]
    assert all(r["final_loss"] > 0 and r["flops"] > 0 for r in rows)
    assert rows[2]["params"] > rows[0]["params"] and rows[1]["tokens"] > rows[0]["tokens"]
    assert (sweep / "summary.csv").read_text().startswith("task,")


def test_a_run_lock_holds_while_its_slurm_job_runs_and_is_taken_over_once_it_ended(slurm, tmp_path, monkeypatch):
    """The lock of a run on another host is judged by asking SLURM about its job (squeue)."""
    from gigatron.pretrain.run_directory import LOCK_NAME, RunDirectoryBusy, acquire

    monkeypatch.setenv("SLURM_CONF", slurm.env["SLURM_CONF"])
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    submitted = slurm.run("sbatch", "--parsable", "--ntasks=1", "--time=2", f"--output={tmp_path / 'sleep.out'}",
                          "--wrap", "sleep 120")
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]
    slurm.jobs.append(job)
    holder = {"host": "another-node", "pid": 7, "slurm_job_id": job, "started": "then"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(holder))
    with pytest.raises(RunDirectoryBusy, match=f"SLURM job {job}"):
        acquire(tmp_path, log=lambda _t: None)
    assert slurm.run("scancel", job).returncode == 0
    slurm.wait_final(job, 60, tmp_path / "sleep.out")
    notes: list[str] = []
    acquire(tmp_path, log=notes.append).release()
    assert f"SLURM job {job} is no longer queued or running" in notes[0]


def test_a_rank_killed_under_srun_requeues_the_job_which_resumes_and_finishes(slurm, tmp_path):
    """SIGKILL of a rank (the OOM killer, a lost node): srun --kill-on-bad-exit ends the other, the
    script sees a rank dead of SIGKILL and requeues, and the requeued job resumes from its last
    checkpoint and finishes. Two ranks: the local cluster's node has 2 CPUs, and SLURM refuses more
    tasks per node than CPUs even with --overcommit (4 ranks: tests/integration/test_rank_faults.py)."""
    steps = 12
    job, run_dir, log = slurm.submit(tmp_path, steps=steps, minutes=8,
                                     overrides=("checkpoint.interval=2", "data.num_workers=0"))
    wait_for_steps(slurm, job, run_dir, log, new_steps=5, restarts=0)
    victim = json.loads(heartbeat_path(run_dir, 1).read_text())["pid"]
    os.kill(victim, signal.SIGKILL)
    info = slurm.wait_final(job, timeout=360, log=log, min_restarts=1)
    text = log.read_text()
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "1"), tail(log)
    assert "a rank died of SIGKILL" in text and f"requeueing job {job}" in text, tail(log)
    assert "task 1: Killed" in text, tail(log)  # srun names the rank
    resumed = [int(step) for step in re.findall(r"\[resume\] \S+: step (\d+)", text)]
    assert len(resumed) == 1 and 4 <= resumed[0] < steps, tail(log)
    assert f"[done] step {steps}" in text and latest(run_dir) == f"step_{steps:08d}", tail(log)
    assert consumed_samples(run_dir) == steps * 8  # nothing skipped, nothing read twice


def test_scancel_saves_and_cancels_without_requeue(slurm, tmp_path):
    """Plain `scancel JOB` (SIGTERM) is cancellation: the ranks save, the job ends CANCELLED and is
    not requeued (the script requeues only on 75, the answer to SIGUSR1)."""
    job, run_dir, log = slurm.submit(tmp_path, steps=100000, minutes=8)
    wait_for_steps(slurm, job, run_dir, log, new_steps=3, restarts=0)
    cancel = slurm.run("scancel", job)
    assert cancel.returncode == 0, cancel.stderr
    info = slurm.wait_final(job, timeout=120, log=log)
    assert info["JobState"] == "CANCELLED", tail(log)
    time.sleep(5)  # a requeue would show up as a restart
    info = slurm.job_info(job)
    assert info.get("Restarts", "0") == "0" and info.get("JobState") == "CANCELLED", tail(log)
    text = log.read_text()
    saved = re.findall(r"\[stopped\] SIGTERM: saved step (\d+)", text)
    assert saved, tail(log)
    assert latest(run_dir) == f"step_{int(saved[0]):08d}"
    assert "requeueing job" not in text, tail(log)


def test_an_array_build_and_its_merge_equal_a_one_task_build(slurm, batch, tmp_path):
    from gigatron.data.shard_tasks import merge_shard_tasks, write_shard_task

    merge, dataset, logs = batch["shard"]
    info = slurm.wait_final(merge, 300, logs / "none")
    assert info.get("JobState") == "COMPLETED", "\n".join(tail(p, 2000) for p in sorted(logs.glob("shard-*.out")))
    arguments = shard_arguments(tmp_path / "one")
    inputs = arguments[1:arguments.index("--tokenizer")]
    write_shard_task(inputs, "bytes", 255, tmp_path / "one", 0, 1, samples_per_shard=256, valid_fraction=0.05,
                     workers=1, log=lambda text: None)
    merge_shard_tasks(tmp_path / "one", log=lambda text: None)
    names = sorted(p.name for p in dataset.iterdir())
    assert names == sorted(p.name for p in (tmp_path / "one").iterdir())
    for name in names:
        assert (dataset / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    assert sum(1 for p in logs.glob("shard-*.out") if "shard task" in p.read_text()) == SHARD_TASKS
