"""Two SLURM nodes simulated on one machine: four ranks started with only SLURM's variables
(as `srun` sets them on 2 nodes x 2 tasks) find each other and train like one process."""

from __future__ import annotations

import os
import subprocess

import pytest

from gigatron.launcher.dist_env import DistEnv
from tests.conftest import REPO, assert_ok, pretrain_command, read_metrics, run_pretrain

pytestmark = pytest.mark.distributed

STEPS = ["train.steps=3", "train.warmup_steps=1", "train.eval_interval=0", "checkpoint.save_final=false",
         "data.num_workers=0"]


def slurm_env(rank: int) -> dict[str, str]:
    # 127.0.0.[1-2] are two loopback addresses: "nodes" whose first host really is reachable.
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(SLURM_JOB_ID=str(40000 + os.getpid() % 10000), SLURM_JOB_NODELIST="127.0.0.[1-2]", SLURM_NTASKS="4",
               SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank % 2), SLURM_NODEID=str(rank // 2),
               SLURM_TASKS_PER_NODE="2(x2)", OMP_NUM_THREADS="1")
    return env


def test_dist_env_of_a_two_node_job():
    envs = [DistEnv.from_environ(slurm_env(r), cuda_available=False) for r in range(4)]
    assert [(e.rank, e.local_rank, e.local_world_size, e.world_size) for e in envs] == [
        (0, 0, 2, 4), (1, 1, 2, 4), (2, 0, 2, 4), (3, 1, 2, 4)]
    assert {(e.master_addr, e.master_port) for e in envs} == {("127.0.0.1", envs[0].master_port)}
    assert all(e.source == "slurm" for e in envs)


def test_four_slurm_ranks_on_two_nodes_train_like_one_process(tmp_path, corpus_ready):
    single = tmp_path / "single"
    assert_ok(run_pretrain(single, STEPS))
    multi = tmp_path / "multi"
    command = pretrain_command(multi, STEPS + ["parallel.tp=2"])
    procs = [subprocess.Popen(command, env=slurm_env(r), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for r in range(4)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outputs[0][-3000:]
    assert "4 ranks (tp=2 pp=1 cp=1 dp=2" in outputs[0]
    for ours, ref in zip(read_metrics(multi), read_metrics(single), strict=True):
        assert ours["loss"] == pytest.approx(ref["loss"], rel=1e-5)
