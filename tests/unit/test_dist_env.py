"""DistEnv.from_environ: torchrun, SLURM and single-process environments."""

from __future__ import annotations

import pytest

from gigatron.launcher.dist_env import DistEnv, parse_tasks_per_node

TORCHRUN = {
    "RANK": "3",
    "WORLD_SIZE": "8",
    "LOCAL_RANK": "1",
    "LOCAL_WORLD_SIZE": "2",
    "MASTER_ADDR": "10.0.0.1",
    "MASTER_PORT": "29400",
}

SLURM = {
    "SLURM_PROCID": "3",
    "SLURM_NTASKS": "6",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "1",
    "SLURM_TASKS_PER_NODE": "2(x3)",
    "SLURM_JOB_NODELIST": "node[01-03]",
    "SLURM_JOB_ID": "123456",
}


def test_torchrun_variables() -> None:
    env = DistEnv.from_environ(TORCHRUN, cuda_available=False)
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size) == (3, 8, 1, 2)
    assert (env.master_addr, env.master_port, env.source) == ("10.0.0.1", 29400, "torchrun")
    assert (env.device, env.backend) == ("cpu", "gloo")
    assert not env.is_main


def test_torchrun_local_world_size_defaults_to_world_size() -> None:
    environ = {k: v for k, v in TORCHRUN.items() if k != "LOCAL_WORLD_SIZE"}
    assert DistEnv.from_environ(environ, cuda_available=False).local_world_size == 8


def test_torchrun_takes_precedence_over_slurm() -> None:
    assert DistEnv.from_environ({**SLURM, **TORCHRUN}, cuda_available=False).source == "torchrun"


def test_slurm_variables() -> None:
    env = DistEnv.from_environ(SLURM, cuda_available=False)
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size) == (3, 6, 1, 2)
    assert env.master_addr == "node01"
    assert env.master_port == 20000 + 123456 % 20000
    assert env.source == "slurm"


def test_slurm_ntasks_per_node_wins() -> None:
    env = DistEnv.from_environ({**SLURM, "SLURM_NTASKS_PER_NODE": "3", "SLURM_LOCALID": "2"}, cuda_available=False)
    assert env.local_world_size == 3


def test_slurm_respects_existing_master_addr_and_port() -> None:
    env = DistEnv.from_environ({**SLURM, "MASTER_ADDR": "node02-ib", "MASTER_PORT": "31000"}, cuda_available=False)
    assert (env.master_addr, env.master_port) == ("node02-ib", 31000)


def test_salloc_shell_without_procid_is_single() -> None:
    environ = {k: v for k, v in SLURM.items() if k != "SLURM_PROCID"}
    assert DistEnv.from_environ(environ, cuda_available=False).source == "single"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("4", [4]), ("2(x3)", [2, 2, 2]), ("4(x2),3", [4, 4, 3]), ("1,2(x2)", [1, 2, 2])],
)
def test_parse_tasks_per_node(value: str, expected: list[int]) -> None:
    assert parse_tasks_per_node(value) == expected


def test_tasks_per_node_uses_this_nodes_count() -> None:
    environ = {**SLURM, "SLURM_NTASKS": "11", "SLURM_PROCID": "9", "SLURM_LOCALID": "1",
               "SLURM_NODEID": "2", "SLURM_TASKS_PER_NODE": "4(x2),3"}
    assert DistEnv.from_environ(environ, cuda_available=False).local_world_size == 3


def test_single_process_default() -> None:
    env = DistEnv.from_environ({}, cuda_available=False)
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size) == (0, 1, 0, 1)
    assert (env.master_addr, env.source) == ("127.0.0.1", "single")
    assert 0 < env.master_port < 65536
    assert DistEnv.from_environ({"MASTER_PORT": "29555"}, cuda_available=False).master_port == 29555
    assert env.is_main


def test_cuda_when_available() -> None:
    env = DistEnv.from_environ(TORCHRUN, cuda_available=True)
    assert (env.device, env.backend) == ("cuda:1", "nccl")


def test_gigatron_device_forces_cpu() -> None:
    env = DistEnv.from_environ({**TORCHRUN, "GIGATRON_DEVICE": "cpu"}, cuda_available=True)
    assert (env.device, env.backend) == ("cpu", "gloo")


def test_export_round_trips() -> None:
    env = DistEnv.from_environ(SLURM, cuda_available=False)
    exported: dict[str, str] = {}
    env.export_to(exported)
    assert exported["MASTER_ADDR"] == "node01"
    again = DistEnv.from_environ(exported, cuda_available=False)
    assert (again.rank, again.world_size, again.local_rank, again.master_port) == (
        env.rank, env.world_size, env.local_rank, env.master_port)


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ({"RANK": "x"}, "RANK"),
        ({"RANK": "8"}, "RANK"),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE"),
        ({"LOCAL_RANK": "2"}, "LOCAL_RANK"),
        ({"MASTER_PORT": "70000"}, "MASTER_PORT"),
        ({"MASTER_PORT": "port"}, "MASTER_PORT"),
        ({"GIGATRON_DEVICE": "tpu"}, "GIGATRON_DEVICE"),
    ],
)
def test_bad_torchrun_values_name_the_variable(overrides: dict[str, str], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        DistEnv.from_environ({**TORCHRUN, **overrides}, cuda_available=False)


def test_missing_torchrun_variable_is_named() -> None:
    environ = {k: v for k, v in TORCHRUN.items() if k != "MASTER_ADDR"}
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        DistEnv.from_environ(environ, cuda_available=False)


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ({"SLURM_PROCID": "6"}, "SLURM_PROCID"),
        ({"SLURM_NTASKS": "many"}, "SLURM_NTASKS"),
        ({"SLURM_TASKS_PER_NODE": "2(y3)"}, "SLURM_TASKS_PER_NODE"),
        ({"SLURM_JOB_NODELIST": "node[03-"}, "SLURM_JOB_NODELIST"),
        ({"SLURM_JOB_ID": "abc"}, "SLURM_JOB_ID"),
    ],
)
def test_bad_slurm_values_name_the_variable(overrides: dict[str, str], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        DistEnv.from_environ({**SLURM, **overrides}, cuda_available=False)


def test_gigatron_command_is_this_interpreter_unless_overridden(monkeypatch):
    import sys

    from gigatron.launcher.command import gigatron_command

    monkeypatch.delenv("GIGATRON_COMMAND", raising=False)
    assert gigatron_command() == [sys.executable, "-m", "gigatron"]
    monkeypatch.setenv("GIGATRON_COMMAND", "apptainer exec 'my image.sif' gigatron")
    assert gigatron_command() == ["apptainer", "exec", "my image.sif", "gigatron"]
