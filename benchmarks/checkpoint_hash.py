"""What checking a checkpoint against its manifest costs: seconds per GiB with sha256 (the default
of every reader) and with sizes only (`--skip-checksums`, `checkpoint.verify_checksums=false`).

Writes one step directory of `--gib` GiB of random tensor bytes in `--dir` (default: a temporary
directory), writes its manifest as the trainer does, then times `verify_manifest` three times each
way. The file is in the page cache after it is written, so this is the hash's cost, not the disk's;
a checkpoint read cold from a network file system adds its read time.

    .venv/bin/python benchmarks/checkpoint_hash.py --gib 1
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from gigatron.checkpoint.files import verify_manifest, write_manifest

CHUNK = 1 << 26  # 64 MiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="checkpoint size in GiB (default 1)")
    parser.add_argument("--dir", type=Path, default=None, help="where to write it (default: a temporary directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tag = Path(tmp) / "step_00000001"
        tag.mkdir()
        total = int(args.gib * 2**30)
        with open(tag / "mp_rank_00_model_states.pt", "wb") as handle:
            for start in range(0, total, CHUNK):
                handle.write(os.urandom(min(CHUNK, total - start)))
        write_manifest(tag)
        print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; {args.gib:g} GiB checkpoint")
        for checksums in (True, False):
            times = []
            for _ in range(3):
                start = time.perf_counter()
                assert verify_manifest(tag, checksums) is None
                times.append(time.perf_counter() - start)
            best = min(times)
            print(f"{'sha256 + sizes' if checksums else 'sizes only':>15}: best of 3 {best:.3f} s, "
                  f"{best / args.gib:.3f} s per GiB")


if __name__ == "__main__":
    main()
