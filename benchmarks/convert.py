"""How long `gigatron convert consolidate` takes and how much memory it needs, vs checkpoint size.

For GPT models of growing width (vocab 32000, 8 layers), a real DeepSpeed checkpoint is made in the
layout TP=2 x DP=2 with ZeRO-1 (random weights and moments written as a consolidated directory,
then `convert reshard` on 4 CPU ranks), and `convert consolidate --no-verify` is timed in a child
process while its memory is sampled from /proc every 2 ms:
  - peak anonymous RSS (RssAnon: memory the process owns; the mapped checkpoint files are page
    cache the kernel can drop, so they are reported apart as the peak of total RSS);
  - the same for a child that only opens the checkpoint (imports, model plan, file index: the
    constant, independent of tensor sizes);
  - (peak anon - constant) / largest single tensor: target <= 1.5.

    python benchmarks/convert.py [--hidden 512 1024 1536]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gigatron.checkpoint.consolidated import write_consolidated  # noqa: E402
from gigatron.checkpoint.convert import reshard  # noqa: E402
from gigatron.checkpoint.param_plan import param_plans  # noqa: E402
from gigatron.config import config_from_dict  # noqa: E402

VOCAB, LAYERS = 32000, 8


class RandomCheckpoint:
    """A LogicalCheckpoint of random tensors, generated on demand (nothing held in memory)."""

    kind = "synthetic"
    has_optimizer = True
    optimizer_step = 10
    rng = None
    layout = {"source": "synthetic"}

    def __init__(self, hidden: int, root: Path) -> None:
        heads = hidden // 64
        self.cfg = config_from_dict({
            "model": {"family": "gpt", "vocab_size": VOCAB, "hidden_size": hidden, "num_layers": LAYERS,
                      "num_heads": heads, "num_kv_heads": heads},
            "train": {"global_batch_size": 8, "micro_batch_size": 4, "steps": 100},
        })
        self.plans = param_plans(self.cfg.model)
        self.path = root
        self.trainer_state = {"step": 10, "tokens": 0, "loader": None, "tokenizer_fingerprint": ""}

    def tensor(self, name: str, key: str | None = None) -> torch.Tensor:
        generator = torch.Generator().manual_seed(hash((name, key)) & 0xFFFF_FFFF)
        value = torch.randn(self.plans[name].shape, generator=generator)
        return value.abs() if key == "exp_avg_sq" else value

    def model_weight(self, name: str) -> torch.Tensor:
        return self.tensor(name)

    def stored_names(self) -> set[str]:
        return set(self.plans)


def _memory(pid: int) -> tuple[int, int]:
    """(RssAnon, VmRSS) of `pid` in bytes."""
    fields = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "VmRSS"):
                fields[key] = int(value.split()[0]) * 1024
    return fields.get("RssAnon", 0), fields.get("VmRSS", 0)


def measure(command: list[str]) -> tuple[float, int, int]:
    """Wall time, peak RssAnon and peak VmRSS of a child process."""
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peaks = [0, 0]

    def sample() -> None:
        while proc.poll() is None:
            try:
                anon, rss = _memory(proc.pid)
            except (FileNotFoundError, ProcessLookupError, ValueError):
                break
            peaks[0], peaks[1] = max(peaks[0], anon), max(peaks[1], rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    _, stderr = proc.communicate()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{command} failed:\n{stderr.decode()[-2000:]}")
    return time.perf_counter() - started, peaks[0], peaks[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[512, 1024, 1536])
    args = parser.parse_args()
    python = sys.executable
    print("| params | checkpoint files | largest tensor | consolidate time | constant (RssAnon) | peak RssAnon - "
          "constant | ratio to largest tensor | peak RSS incl. mapped files |")
    print("|---|---|---|---|---|---|---|---|")
    for hidden in args.hidden:
        with tempfile.TemporaryDirectory(prefix="gigatron-bench-convert-") as tmp:
            root = Path(tmp)
            source = RandomCheckpoint(hidden, root / "src")
            write_consolidated(source, root / "seed", log=lambda _: None)
            reshard(root / "seed", root / "native", tp=2, pp=1, dp=2, zero=1, verify=False, log=lambda _: None)
            tag = next((root / "native").glob("step_*"))
            files = sum(p.stat().st_size for p in tag.rglob("*.pt"))
            params = sum(plan.numel for plan in source.plans.values())
            largest = max(plan.numel for plan in source.plans.values()) * 4
            _, const_anon, _ = measure([python, "-c", "import sys, safetensors; from pathlib import Path; "
                                        "from gigatron.checkpoint.native import NativeCheckpoint; "
                                        "import gigatron.checkpoint.convert; NativeCheckpoint(Path(sys.argv[1]))",
                                        str(tag)])
            seconds, anon, rss = measure([python, "-m", "gigatron", "convert", "consolidate", str(tag),
                                          str(root / "out"), "--no-verify"])
            extra = anon - const_anon
            print(f"| {params / 1e6:.0f}M | {files / 2**30:.2f} GiB | {largest / 2**20:.0f} MiB | {seconds:.1f} s | "
                  f"{const_anon / 2**20:.0f} MiB | {extra / 2**20:.0f} MiB | {extra / largest:.2f} | "
                  f"{rss / 2**20:.0f} MiB |", flush=True)


if __name__ == "__main__":
    main()
