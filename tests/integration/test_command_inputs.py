"""Bad input to the commands gets one clear line and exit 2 (141 for a closed pipe), never a traceback:
checkpoints of the wrong family, sizes off the patch grid, a directory where a file belongs, a file
where a directory belongs, numbers out of range, a reader that closes the pipe."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import GIGATRON, REPO, SMOKE, assert_ok, run_pretrain

FIT = REPO / "configs" / "fit" / "smoke.yaml"
T2I = REPO / "configs" / "t2i" / "smoke.yaml"
ONE_STEP = ["train.steps=1", "train.warmup_steps=1", "train.eval_interval=0", "data.num_workers=0"]
SMALL_IMAGES = ["images.default_images=64", "images.valid_images=0"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus_ready) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    made = {}
    for name, config, extra in [("gpt", SMOKE, []), ("fit", FIT, SMALL_IMAGES),
                                ("t2i", T2I, [*SMALL_IMAGES, "images.caption_vocab_size=300", "model.vocab_size=300"])]:
        assert_ok(run_pretrain(root / name, [*ONE_STEP, *extra], config=config))
        made[name] = root / name
    (root / "a-file").write_text("not a directory\n")
    made["file"] = root / "a-file"
    return made


CASES = {
    "generate on an image checkpoint": (["generate", "--ckpt", "{fit}", "--prompt", "hi"],
                                        "model.family=fit is not a language model"),
    "sample off the patch grid": (["sample", "{t2i}", "--prompt", "a red circle", "--size", "25x40",
                                   "--out", "{tmp}/s"], "--size 25x40: height and width must be multiples of 4"),
    "sample on a text checkpoint": (["sample", "{gpt}", "--out", "{tmp}/s"], "is not a diffusion model"),
    "sample with a bad count": (["sample", "{t2i}", "--prompt", "x", "--count", "0", "--out", "{tmp}/s"],
                                "--count (0) and --steps (50) must be >= 1"),
    "config naming a directory": (["pretrain", "--config", str(REPO / "configs")], "is a directory; pass a YAML file"),
    "output_dir that is a file": (["pretrain", "--config", str(SMOKE), "--set", "output_dir={file}",
                                   "--set", "hardware.memory_check=false"], "is a file, not a directory"),
    "grow of a non-TokenFormer": (["grow", "{gpt}", "--ffn-tokens", "64", "--out", "{tmp}/g"],
                                  "only TokenFormer checkpoints grow"),
    "matformer extract of a plain model": (["matformer", "extract", "{gpt}", "--widths", "0.5", "--out", "{tmp}/m"],
                                           "without model.matformer"),
    "export-hf of an image model": (["export-hf", "--ckpt", "{fit}", "--out", "{tmp}/e"],
                                    "model.family=fit cannot be exported"),
    "convert into an existing file": (["convert", "consolidate", "{gpt}", "{file}"], "is not an empty directory"),
    "scaling predict with zero compute": (["scaling", "predict", "--fit", "{tmp}/fit.json", "--compute", "0"],
                                          "argument --compute: 0 must be > 0"),
    "checkpoint that does not exist": (["generate", "--ckpt", "{tmp}/nope", "--prompt", "hi"], "does not exist"),
    "status of a directory that is not a run": (["status", "{tmp}"], "is {tmp} the output_dir of a gigatron run?"),
    "import-hf of a directory without a model": (["import-hf", "{tmp}", "{tmp}/out"], "no config.json"),
    "launch with no ranks": (["launch", "--nproc", "0", "--", "true"], "--nproc must be >= 1, got 0"),
    "data inspect of a directory that is not a dataset": (["data", "inspect", "{tmp}"], "manifest.json not found"),
    "data shard of inputs that match nothing": (["data", "shard", "--input", "{tmp}/none.txt", "--tokenizer", "bytes",
                                                 "--seq-len", "16", "--out", "{tmp}/sh"], "matches no files"),
    "sweep summary of a directory that is not a sweep": (["sweep", "summary", "{tmp}"], "sweep.json not found"),
    "sweep plan with a run shorter than its warmup": (["sweep", "plan", "--config", str(SMOKE), "--grid",
                                                       "train.steps=10,100", "--out", "{tmp}/sw"],
                                                      "sweep task 0 (train.steps=10): train.warmup_steps=20 is "
                                                      "longer than the run (10 steps: train.steps=10)"),
    "plan for no GPUs": (["plan", "--config", str(SMOKE), "--gpus", "0"], "a plan needs at least 1 GPU"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gets_one_clear_line_and_exit_2(case, runs, tmp_path):
    args, message = CASES[case]
    values = {"tmp": tmp_path, **{k: str(v) for k, v in runs.items()}}
    args = [a.format(**values) for a in args]
    message = message.format(**values)
    proc = subprocess.run([*GIGATRON, *args], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 2, (case, proc.returncode, proc.stderr[-3000:])
    assert message in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


def test_a_reader_closing_the_pipe_ends_quietly(runs):
    dataset = Path.home() / ".cache" / "gigatron" / "datasets" / "shakespeare-bpe2048-L128"
    proc = subprocess.run(f"{' '.join(GIGATRON)} data inspect {dataset} --samples 5000 | head -1; "
                          "echo \"status=${PIPESTATUS[0]}\"", shell=True, executable="/bin/bash",
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert "status=141" in proc.stdout and "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, (
        proc.stdout[-2000:], proc.stderr[-2000:])


def test_launch_of_a_command_that_does_not_exist_says_so(tmp_path):
    proc = subprocess.run([*GIGATRON, "launch", "--nproc", "2", "--", str(tmp_path / "no-such-command")],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 127 and "cannot start" in proc.stderr and "Traceback" not in proc.stderr
