"""Where this process sits in the job: rank, world size, rendezvous address and device.

`DistEnv.from_environ` understands three launch styles, checked in this order:

1. torchrun / `gigatron launch` / the DeepSpeed launcher: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
   ``MASTER_ADDR``, ``MASTER_PORT`` (``LOCAL_WORLD_SIZE`` optional).
2. ``srun``: ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``, the tasks-per-node variables and
   ``SLURM_JOB_NODELIST``.
3. Nothing: a single process.
"""

from __future__ import annotations

import os
import random
import re
import socket
import sys
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal, NoReturn

Source = Literal["torchrun", "slurm", "single"]

DEFAULT_MASTER_ADDR = "127.0.0.1"
DEFAULT_MASTER_PORT = 29500
# SLURM ports are derived from the job id: every rank computes the same value without talking, and
# two jobs sharing a node collide only if their ids are equal modulo SLURM_PORT_SPAN.
SLURM_PORT_BASE = 20000
SLURM_PORT_SPAN = 20000

_TASKS_ITEM = re.compile(r"^(\d+)(?:\(x(\d+)\))?$")


@dataclass(frozen=True)
class DistEnv:
    """The distributed coordinates of this process and the device/backend it should use."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int
    source: Source
    device: str
    backend: str

    @property
    def is_main(self) -> bool:
        """True on global rank 0, the rank that logs and writes shared files."""
        return self.rank == 0

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str] | None = None, cuda_available: bool | None = None
    ) -> DistEnv:
        """Build a `DistEnv` from environment variables (``os.environ`` by default).

        ``cuda_available`` overrides ``torch.cuda.is_available()`` (tests). Raises ValueError naming
        the offending variable when a value is missing, not an integer or out of range.
        """
        env = os.environ if environ is None else environ
        if "RANK" in env or "WORLD_SIZE" in env:
            coords = _from_torchrun(env)
        elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
            coords = _from_slurm(env)
        else:
            # A free port, not a fixed one: two single-process runs on one machine (tests, a laptop
            # user with two terminals) must not collide on the rendezvous socket.
            port = _check_port("MASTER_PORT", _get_int(env, "MASTER_PORT")) if "MASTER_PORT" in env else find_free_port()
            coords = (0, 1, 0, 1, DEFAULT_MASTER_ADDR, port, "single")
        rank, world_size, local_rank, local_world_size, addr, port, source = coords
        device, backend = _choose_device(env, local_rank, cuda_available)
        return cls(rank, world_size, local_rank, local_world_size, addr, port, source, device, backend)

    def export_to(self, environ: MutableMapping[str, str]) -> None:
        """Write the torchrun-style variables so ``init_method="env://"`` (and DeepSpeed) find them."""
        environ["RANK"] = str(self.rank)
        environ["WORLD_SIZE"] = str(self.world_size)
        environ["LOCAL_RANK"] = str(self.local_rank)
        environ["LOCAL_WORLD_SIZE"] = str(self.local_world_size)
        environ["MASTER_ADDR"] = self.master_addr
        environ["MASTER_PORT"] = str(self.master_port)


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago, for rank 0's store to bind shortly after.

    Chosen at random below the kernel's ephemeral range, not by binding port 0: a port from that
    range can be taken between this check and rank 0's bind by any socket that binds or connects
    from an ephemeral port, such as the gloo listeners of another run starting beside this one (a
    rank then reached that run's listener and failed with "Connection reset by peer").
    """
    low = _ephemeral_range_start()
    for port in random.Random().sample(range(_PRIVATE_PORTS_START, low), k=min(64, low - _PRIVATE_PORTS_START)):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # everything there taken: any port
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# Where find_free_port looks: above the well-known and most services' ports, below the ephemeral range.
_PRIVATE_PORTS_START = 20000


def _ephemeral_range_start() -> int:
    """The first port the kernel hands out for bind(0) and outgoing connections (Linux; else 32768)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768
    return low if low > _PRIVATE_PORTS_START + 64 else 32768


def init_distributed(env: DistEnv, timeout_s: float = 600) -> None:
    """Initialise the default ``torch.distributed`` process group described by `env`.

    Also done for a world of one, because DeepSpeed and megatron-core assume a group exists.
    Does nothing when a group is already initialised.
    """
    # Imported here so that reading the environment (e.g. in the launcher) does not load torch.
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    env.export_to(os.environ)
    if env.device.startswith("cuda"):
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group(
        backend=env.backend,
        init_method="env://",
        rank=env.rank,
        world_size=env.world_size,
        timeout=timedelta(seconds=timeout_s),
    )


def exit_distributed(code: int) -> NoReturn:
    """End this rank with `code` once every rank of the default group has reached this point.

    Skips library teardown on purpose: with gloo, destroying process groups at interpreter exit
    (groups DeepSpeed/ZeRO-3 still reference, or ones that ran point-to-point ops) intermittently
    aborts a finished process ("terminate called without an active exception", exit 134), which
    would turn a successful run into a failure for SLURM and the launcher.
    """
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _get_int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = env.get(name)
    if raw is None:
        if default is None:
            raise ValueError(f"{name} is required but not set")
        return default
    try:
        return int(raw.strip())
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None


def _check_coords(rank: int, world_size: int, local_rank: int, local_world_size: int, names: tuple) -> None:
    rank_name, world_name, local_name, local_world_name = names
    if world_size < 1:
        raise ValueError(f"{world_name}={world_size} must be >= 1")
    if not 0 <= rank < world_size:
        raise ValueError(f"{rank_name}={rank} must be in [0, {world_name}={world_size})")
    if not 1 <= local_world_size <= world_size:
        raise ValueError(f"{local_world_name}={local_world_size} must be in [1, {world_size}]")
    if not 0 <= local_rank < local_world_size:
        raise ValueError(f"{local_name}={local_rank} must be in [0, {local_world_name}={local_world_size})")


def _check_port(name: str, port: int) -> int:
    if not 1 <= port <= 65535:
        raise ValueError(f"{name}={port} is not a valid TCP port")
    return port


def _get_addr(env: Mapping[str, str], name: str) -> str:
    addr = env.get(name, "").strip()
    if not addr:
        raise ValueError(f"{name} is required but not set")
    return addr


def _from_torchrun(env: Mapping[str, str]) -> tuple:
    rank = _get_int(env, "RANK")
    world_size = _get_int(env, "WORLD_SIZE")
    local_rank = _get_int(env, "LOCAL_RANK")
    local_world_size = _get_int(env, "LOCAL_WORLD_SIZE", default=world_size)
    _check_coords(
        rank, world_size, local_rank, local_world_size, ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    )
    addr = _get_addr(env, "MASTER_ADDR")
    port = _check_port("MASTER_PORT", _get_int(env, "MASTER_PORT"))
    return rank, world_size, local_rank, local_world_size, addr, port, "torchrun"


def parse_tasks_per_node(value: str) -> list[int]:
    """Expand SLURM's compressed per-node task counts: ``"4(x2),3"`` -> ``[4, 4, 3]``."""
    counts: list[int] = []
    for item in value.split(","):
        match = _TASKS_ITEM.match(item.strip())
        if match is None:
            raise ValueError(f"SLURM_TASKS_PER_NODE={value!r} is not in the form '4(x2),3'")
        counts.extend([int(match.group(1))] * int(match.group(2) or 1))
    return counts


def _slurm_local_world_size(env: Mapping[str, str], world_size: int) -> int:
    if "SLURM_NTASKS_PER_NODE" in env:
        return _get_int(env, "SLURM_NTASKS_PER_NODE")
    if "SLURM_TASKS_PER_NODE" in env:
        counts = parse_tasks_per_node(env["SLURM_TASKS_PER_NODE"])
        node_id = _get_int(env, "SLURM_NODEID", default=0)
        # Heterogeneous counts need the node index; without it the first count is the best guess.
        return counts[node_id] if 0 <= node_id < len(counts) else counts[0]
    return world_size


def _from_slurm(env: Mapping[str, str]) -> tuple:
    rank = _get_int(env, "SLURM_PROCID")
    world_size = _get_int(env, "SLURM_NTASKS")
    local_world_size = _slurm_local_world_size(env, world_size)
    local_rank = _get_int(env, "SLURM_LOCALID", default=rank % max(local_world_size, 1))
    names = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE/SLURM_TASKS_PER_NODE")
    _check_coords(rank, world_size, local_rank, local_world_size, names)

    # An explicit MASTER_ADDR wins: sites often point it at a high-speed interface name.
    addr = env.get("MASTER_ADDR", "").strip() or _first_slurm_host(env)
    if "MASTER_PORT" in env:
        port = _check_port("MASTER_PORT", _get_int(env, "MASTER_PORT"))
    elif "SLURM_JOB_ID" in env:
        port = SLURM_PORT_BASE + _get_int(env, "SLURM_JOB_ID") % SLURM_PORT_SPAN
    else:
        port = DEFAULT_MASTER_PORT
    return rank, world_size, local_rank, local_world_size, addr, port, "slurm"


def _first_slurm_host(env: Mapping[str, str]) -> str:
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        if _get_int(env, "SLURM_NTASKS") == 1:
            return DEFAULT_MASTER_ADDR
        raise ValueError("SLURM_JOB_NODELIST is required (or set MASTER_ADDR) for a multi-task SLURM step")
    import hostlist

    try:
        hosts = hostlist.expand_hostlist(nodelist)
    except hostlist.BadHostlist as exc:
        raise ValueError(f"SLURM_JOB_NODELIST={nodelist!r} cannot be expanded: {exc}") from None
    if not hosts:
        raise ValueError(f"SLURM_JOB_NODELIST={nodelist!r} expands to no hosts")
    return hosts[0]


def _choose_device(env: Mapping[str, str], local_rank: int, cuda_available: bool | None) -> tuple[str, str]:
    forced = env.get("GIGATRON_DEVICE", "").strip().lower()
    if forced not in ("", "auto", "cpu", "cuda"):
        raise ValueError(f"GIGATRON_DEVICE={forced!r} must be one of cpu, cuda, auto")
    if forced == "cpu":
        return "cpu", "gloo"
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    if forced == "cuda" and not cuda_available:
        raise ValueError("GIGATRON_DEVICE='cuda' but CUDA is not available")
    if cuda_available:
        return f"cuda:{local_rank}", "nccl"
    return "cpu", "gloo"


def broadcast_from_first_rank(value: object) -> object:
    """Global rank 0's `value` on every rank (itself without a process group): how one rank's
    decision (a checkpoint chosen, a check failed) becomes every rank's."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
