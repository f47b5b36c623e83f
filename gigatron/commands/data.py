"""`gigatron data`: train tokenizers, write text/image shards, build the default dataset, inspect shards.

Bad input (DataError, a missing file, an invalid value) is reported as one line
`gigatron data <sub>: <message>` on stderr with exit code 2, without a traceback. `inspect` exits 1
when a dataset fails verification, naming every bad shard and member.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gigatron.data.documents import ON_ERROR
from gigatron.data.errors import DataError
from gigatron.data.manifest import MANIFEST_NAME, SAMPLE_SUFFIX, ShardInfo, TextDataset, verify_shard
from gigatron.launcher.exit_codes import EXIT_CONFIG_ERROR, EXIT_OK

EXIT_VERIFY_FAILED = 1
IMAGE_FORMAT = "gigatron-image-shards/1"
_IMAGE_EXTS = ("jpg", "png")
_TOP_IDS = 20
_MAX_PROBLEMS_PER_SHARD = 10
_DECODED_CHARS = 1000
# Errors that mean "your input is wrong"; anything else is a bug and keeps its traceback.
_INPUT_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
                 PermissionError, ImportError)


def _default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the `gigatron data` sub-commands on `parser`."""
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")

    tok = sub.add_parser("tokenizer", help="train a sentencepiece tokenizer (byte fallback) on text files")
    tok.add_argument("--input", nargs="+", required=True, metavar="FILE_OR_GLOB",
                     help=".txt (one sentence per line), .jsonl or .parquet files; globs are expanded")
    tok.add_argument("--vocab-size", type=int, required=True)
    tok.add_argument("--model-type", choices=("bpe", "unigram"), default="bpe")
    tok.add_argument("--out", type=Path, required=True, help="model file to write, e.g. tok.model")
    tok.add_argument("--max-sentences", type=int, default=2_000_000,
                     help="sample at most this many lines for training (default: %(default)s)")

    shard = sub.add_parser("shard", help="tokenize documents into train/valid WebDataset token shards")
    shard.add_argument("--input", nargs="+", required=True, metavar="FILE_OR_GLOB",
                       help=".txt (one document per file), .jsonl ({\"text\": ...} per line) or .parquet "
                            "(\"text\" column) files; globs are expanded in order")
    shard.add_argument("--tokenizer", required=True, help="'bytes' or a sentencepiece .model file")
    shard.add_argument("--seq-len", type=int, required=True, help="each sample holds seq_len + 1 tokens")
    shard.add_argument("--out", required=True,
                       help="dataset directory to create, or a URL (s3://, gs://, https://...: built locally, "
                            "then uploaded)")
    shard.add_argument("--shard-size", type=int, default=4096, metavar="SAMPLES",
                       help="samples per tar (default: %(default)s)")
    shard.add_argument("--task-index", type=int, default=None, metavar="I",
                       help="array build: this task's index in [0, --num-tasks); each input file is packed on "
                            "its own and task I takes files I, I+N, ...; `gigatron data merge` then writes the "
                            "manifest. Default: from SLURM_ARRAY_TASK_ID in a SLURM array job")
    shard.add_argument("--num-tasks", type=int, default=None, metavar="N",
                       help="array build: the number of tasks (default: SLURM_ARRAY_TASK_COUNT)")
    shard.add_argument("--valid-fraction", type=float, default=0.01)
    shard.add_argument("--workers", type=int, default=_default_workers(),
                       help="tokenizer processes (default: %(default)s); the output does not depend on it")
    shard.add_argument("--on-error", choices=ON_ERROR, default="raise",
                       help="bad documents: stop with an error (raise) or leave them out and count them (skip)")
    shard.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")

    merge = sub.add_parser("merge", help="after an array build: check every task finished and write the manifest")
    merge.add_argument("out", help="the --out of the array tasks (a directory or a URL)")

    images = sub.add_parser("shard-images", help="write captioned images as WebDataset shards")
    images.add_argument("--input", required=True,
                        help="a directory of images with same-stem .txt captions, or a captions .jsonl")
    images.add_argument("--out", type=Path, required=True, help="dataset directory to create")
    images.add_argument("--shard-size", type=int, default=1000, metavar="SAMPLES")
    images.add_argument("--on-error", choices=ON_ERROR, default="raise")
    images.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")

    default = sub.add_parser("default", help="build (once) the default Shakespeare BPE dataset; print its path")
    default.add_argument("--seq-len", type=int, default=128)
    default.add_argument("--vocab-size", type=int, default=2048)
    default.add_argument("--cache-dir", default=None, help="default: $GIGATRON_CACHE, else ~/.cache/gigatron")
    default.add_argument("--images", type=int, default=None, metavar="N",
                         help="also generate N synthetic shape images and shard them")

    inspect = sub.add_parser("inspect", help="summarize a shard dataset and verify every shard and member")
    inspect.add_argument("dir", type=Path)
    inspect.add_argument("--samples", type=int, default=100, metavar="N",
                         help="samples read for the token / size histogram (default: %(default)s)")
    inspect.add_argument("--no-verify", action="store_true",
                         help="skip the sha256 and per-member checks (sizes are still checked)")


def run(args: argparse.Namespace) -> int:
    """Run the chosen sub-command; bad input gives exit code 2 and a one-line message."""
    handler = _HANDLERS[args.data_command]
    try:
        return handler(args)
    except _INPUT_ERRORS as exc:
        print(f"gigatron data {args.data_command}: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR


# ---------------------------------------------------------------- tokenizer / shard / default


def _tokenizer(args: argparse.Namespace) -> int:
    from gigatron.data.documents import expand_patterns
    from gigatron.data.sp_tokenizer import SentencePieceTokenizer, train_sentencepiece

    start = time.perf_counter()
    out = train_sentencepiece(expand_patterns(args.input), args.vocab_size, args.model_type, args.out,
                              max_sentences=args.max_sentences)
    tok = SentencePieceTokenizer(out)
    print(f"wrote {out} ({tok.vocab_size} pieces, {args.model_type}, fingerprint {tok.fingerprint}) "
          f"in {time.perf_counter() - start:.1f} s")
    return EXIT_OK


def _array_task(args: argparse.Namespace) -> tuple[int, int] | None:
    """(index, count) of an array build from the flags, else from SLURM's array variables, else None."""
    from gigatron.data.shard_tasks import task_from_environment

    if (args.task_index is None) != (args.num_tasks is None):
        raise ValueError("--task-index and --num-tasks go together (or neither, outside a SLURM array job)")
    if args.task_index is not None:
        return args.task_index, args.num_tasks
    task = task_from_environment()
    if task is not None:
        print(f"[shard] array task {task[0]} of {task[1]} (from SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT)")
    return task


def _shard(args: argparse.Namespace) -> int:
    from gigatron.data.text_shards import write_text_shards

    task = _array_task(args)
    if task is not None:
        return _shard_task(args, *task)
    start = time.perf_counter()
    manifest = write_text_shards(args.input, args.tokenizer, args.seq_len, args.out,
                                 samples_per_shard=args.shard_size, valid_fraction=args.valid_fraction,
                                 workers=args.workers, on_error=args.on_error, overwrite=args.overwrite)
    elapsed = time.perf_counter() - start
    for split, entry in manifest["splits"].items():
        print(f"{split}: {entry['num_samples']} samples, {entry['num_tokens']} tokens, "
              f"{len(entry['shards'])} shards")
    print(f"{manifest['documents']} documents, {manifest['total_tokens']} tokens "
          f"({manifest['dropped_tokens']} dropped at the end), {manifest['skipped_documents']} skipped documents")
    for example in manifest["skipped_examples"]:
        print(f"  skipped: {example}")
    rate = manifest["total_tokens"] / elapsed if elapsed > 0 else float("inf")
    print(f"wrote {args.out} in {elapsed:.1f} s ({rate:,.0f} tokens/s)")
    return EXIT_OK


def _shard_task(args: argparse.Namespace, index: int, count: int) -> int:
    from gigatron.data.shard_tasks import write_shard_task

    if args.overwrite:
        raise ValueError("--overwrite does not apply to an array build: its tasks write into a new --out")
    record = write_shard_task(args.input, args.tokenizer, args.seq_len, args.out, index, count,
                              samples_per_shard=args.shard_size, valid_fraction=args.valid_fraction,
                              workers=args.workers, on_error=args.on_error)
    rate = record["total_tokens"] / record["seconds"] if record["seconds"] > 0 else float("inf")
    print(f"task {index} of {count}: {len(record['units'])} input files, {record['total_tokens']} tokens in "
          f"{record['seconds']:.1f} s ({rate:,.0f} tokens/s); run `gigatron data merge {args.out}` after the last task")
    return EXIT_OK


def _merge(args: argparse.Namespace) -> int:
    from gigatron.data.shard_tasks import merge_shard_tasks

    manifest = merge_shard_tasks(args.out)
    for split, entry in manifest["splits"].items():
        print(f"{split}: {entry['num_samples']} samples, {entry['num_tokens']} tokens, {len(entry['shards'])} shards")
    return EXIT_OK


def _shard_images(args: argparse.Namespace) -> int:
    from gigatron.data.image_shards import write_image_shards

    start = time.perf_counter()
    manifest = write_image_shards(args.input, args.out, samples_per_shard=args.shard_size,
                                  on_error=args.on_error, overwrite=args.overwrite)
    print(f"wrote {args.out}: {manifest.get('num_samples')} samples, {manifest.get('skipped', 0)} skipped, "
          f"in {time.perf_counter() - start:.1f} s")
    return EXIT_OK


def _default(args: argparse.Namespace) -> int:
    from gigatron.data.default_dataset import ensure_default_dataset

    print(ensure_default_dataset(args.cache_dir, seq_len=args.seq_len, vocab_size=args.vocab_size))
    if args.images is not None:
        from gigatron.data.default_images import ensure_default_images

        target = ensure_default_images(args.cache_dir, args.images)
        print(target)
    return EXIT_OK


# ---------------------------------------------------------------- inspect


def _inspect(args: argparse.Namespace) -> int:
    if args.samples < 0:
        raise ValueError(f"--samples must be >= 0, got {args.samples}")
    path = args.dir / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {args.dir} a dataset written by `gigatron data shard` "
                                "or `gigatron data shard-images`?")
    try:
        kind = json.loads(path.read_text(encoding="utf-8")).get("format")
    except (ValueError, AttributeError) as exc:
        raise DataError(f"{path}: not a JSON object ({exc})") from exc
    problems = _inspect_images(args) if kind == IMAGE_FORMAT else _inspect_text(args)
    if problems:
        print(f"\nFAILED: {len(problems)} problem(s):")
        for problem in problems:
            print(f"  {problem}")
        return EXIT_VERIFY_FAILED
    print("\nOK: every check passed" + (" (sizes only: --no-verify)" if args.no_verify else ""))
    return EXIT_OK


def _members(shard: ShardInfo) -> Iterator[tuple[str, bytes]]:
    """(name, data) of every regular member in file order; tar errors propagate."""
    with tarfile.open(shard.path, mode="r:") as tar:
        for info in tar:
            if info.isfile():
                handle = tar.extractfile(info)
                data = handle.read() if handle is not None else b""
                if len(data) != info.size:
                    raise tarfile.ReadError(f"member {info.name} is cut off (truncated shard)")
                yield info.name, data


def _check_shards(shards: dict[str, list[ShardInfo]], verify: bool,
                  check_member: Callable[[str, int, str, bytes], str | None], group: int) -> list[str]:
    """Size (+ sha256 and a parse of every member when `verify`) of every shard; returns problems.

    `group` is the number of members per sample; `check_member(split, index, name, data)` checks
    one member of sample `index` (counted across the split's shards).
    """
    problems: list[str] = []
    for split, infos in shards.items():
        index = 0
        for shard in infos:
            problem = verify_shard(shard, checksum=verify)
            if problem:
                problems.append(problem)
            if verify and shard.path.is_file():
                first = index if shard.first_index is None else shard.first_index
                problems += _check_shard_members(split, shard, first, check_member, group)
            index += shard.samples
    return problems


def _check_shard_members(split: str, shard: ShardInfo, start: int,
                         check_member: Callable[[str, int, str, bytes], str | None], group: int) -> list[str]:
    found: list[str] = []
    seen = 0
    last = "(none)"
    try:
        for name, data in _members(shard):
            if name.startswith(shard.key_prefix):
                problem = check_member(split, start + seen // group, name[len(shard.key_prefix):], data)
            else:
                problem = f"expected a key starting with {shard.key_prefix!r} (its input file's prefix)"
            if problem and len(found) < _MAX_PROBLEMS_PER_SHARD:
                found.append(f"{shard.path.name} member {name}: {problem}")
            seen += 1
            last = name
    except (tarfile.TarError, OSError, EOFError) as exc:
        found.append(f"{shard.path.name}: unreadable after member {last} ({exc})")
    if seen != shard.samples * group:
        found.append(f"{shard.path.name}: holds {seen} members, the manifest says {shard.samples} samples "
                     f"x {group} members")
    return found


def _text_member_checker(ds: TextDataset) -> Callable[[str, int, str, bytes], str | None]:
    sample_len = ds.seq_len + 1

    def check(split: str, index: int, name: str, data: bytes) -> str | None:
        expected = f"{index:010d}.{SAMPLE_SUFFIX}"
        if name != expected:
            return f"expected member {expected} here"
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            return f"not a valid .npy array ({exc})"
        if array.dtype != np.dtype(ds.dtype) or array.shape != (sample_len,):
            return (f"array is {array.dtype} of shape {array.shape}, expected {ds.dtype} of shape "
                    f"({sample_len},)")
        if len(array) and int(array.max()) >= ds.vocab_size:
            return f"token id {int(array.max())} >= vocab_size {ds.vocab_size}"
        return None

    return check


def _first_samples(shards: list[ShardInfo], count: int) -> Iterator[np.ndarray]:
    for shard in shards:
        if not shard.path.is_file():
            continue
        try:
            for _, data in _members(shard):
                if count <= 0:
                    return
                count -= 1
                yield np.load(io.BytesIO(data), allow_pickle=False)
        except (tarfile.TarError, OSError, ValueError, EOFError):
            continue  # reported by the verification pass


def _load_manifest_tokenizer(entry: dict[str, Any]) -> Any:
    from gigatron.data.sp_tokenizer import tokenizer_from_manifest

    try:
        return tokenizer_from_manifest(entry)
    except (FileNotFoundError, DataError) as exc:
        print(f"note: {exc}; skipping decoding")
        return None


def _inspect_text(args: argparse.Namespace) -> list[str]:
    from gigatron.data.manifest import load_text_dataset

    ds = load_text_dataset(args.dir)
    raw = ds.raw
    tok_entry = ds.tokenizer
    print(f"{ds.root}: {raw['format']}, seq_len {ds.seq_len}, {ds.dtype}, vocab_size {ds.vocab_size}")
    print(f"tokenizer: {tok_entry.get('kind')} {tok_entry.get('fingerprint')} ({tok_entry.get('path')})")
    print(f"sources: {len(raw.get('sources', []))} files; documents: {raw.get('documents', '?')}; "
          f"skipped documents: {raw.get('skipped_documents', 0)}; dropped tokens: {raw.get('dropped_tokens', '?')}")
    for split, shards in ds.splits.items():
        samples = sum(s.samples for s in shards)
        print(f"  {split:>5}: {len(shards)} shards, {samples} samples, {samples * (ds.seq_len + 1)} tokens")
    problems = _check_shards(ds.splits, not args.no_verify, _text_member_checker(ds), group=1)

    split = "train" if ds.splits.get("train") else next((s for s, v in ds.splits.items() if v), None)
    samples = list(_first_samples(ds.splits[split], args.samples)) if split else []
    if not samples:
        return problems
    tok = _load_manifest_tokenizer(tok_entry)
    counts = Counter(np.concatenate(samples).tolist())
    print(f"\ntop {_TOP_IDS} token ids over the first {len(samples)} {split} samples:")
    for token_id, count in counts.most_common(_TOP_IDS):
        piece = "" if tok is None else (tok.id_to_piece(token_id) if hasattr(tok, "id_to_piece")
                                        else repr(tok.decode([token_id])))
        print(f"  {token_id:>7} {count:>9}  {piece}")
    if tok is not None:
        text = tok.decode(samples[0].tolist())
        cut = f"\n[... {len(text) - _DECODED_CHARS} more characters]" if len(text) > _DECODED_CHARS else ""
        print(f"\n--- {split} sample 0, decoded ---\n{text[:_DECODED_CHARS]}{cut}\n---")
    return problems


def _image_member_checker(split: str, index: int, name: str, data: bytes) -> str | None:
    key, _, ext = name.partition(".")
    if key != f"{index:010d}":
        return f"expected key {index:010d} here"
    if ext == "json":
        try:
            meta = json.loads(data)
            if not (isinstance(meta.get("width"), int) and isinstance(meta.get("height"), int)):
                return "metadata has no integer width/height"
        except (ValueError, AttributeError) as exc:
            return f"metadata is not a JSON object ({exc})"
    elif ext == "txt":
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            return f"caption is not UTF-8 ({exc})"
    elif ext not in _IMAGE_EXTS:
        return f"unexpected member type .{ext}; expected .jpg/.png, .txt and .json"
    return None


def _inspect_images(args: argparse.Namespace) -> list[str]:
    from gigatron.data.image_shards import load_image_dataset

    ds = load_image_dataset(args.dir)
    raw = ds.raw
    print(f"{ds.root}: {IMAGE_FORMAT}, {raw['num_samples']} samples, {raw.get('skipped', 0)} skipped")
    for split, shards in ds.splits.items():
        print(f"  {split:>5}: {len(shards)} shards, {sum(s.samples for s in shards)} samples")
    # Each sample is an image, a .txt caption and a .json of its size.
    problems = _check_shards(ds.splits, not args.no_verify, _image_member_checker, group=3)

    sizes: Counter[tuple[int, int]] = Counter()
    caption = None
    seen = 0
    for shard in next(iter(ds.splits.values()), []):
        if seen >= args.samples or not shard.path.is_file():
            break
        try:
            for name, data in _members(shard):
                if name.endswith(".txt") and caption is None:
                    caption = data.decode("utf-8", errors="replace")
                elif name.endswith(".json") and seen < args.samples:
                    meta = json.loads(data)
                    sizes[(meta["width"], meta["height"])] += 1
                    seen += 1
        except (tarfile.TarError, OSError, ValueError, KeyError, TypeError):
            continue  # reported by the verification pass
    if sizes:
        print(f"\nimage sizes over the first {seen} samples (width x height: count):")
        for (width, height), count in sizes.most_common(10):
            print(f"  {width} x {height}: {count}")
    if caption is not None:
        print(f"\nfirst caption: {caption}")
    return problems


_HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "tokenizer": _tokenizer,
    "shard": _shard,
    "merge": _merge,
    "shard-images": _shard_images,
    "default": _default,
    "inspect": _inspect,
}
