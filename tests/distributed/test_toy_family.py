"""A model family defined outside gigatron (tests/plugins/toy_family, registered by an entry point)
trains at TP=2 x PP=2 to the single-process losses, checkpoints, consolidates and resumes, with
no change to the gigatron package (docs/adding-a-family.md)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gigatron.checkpoint.consolidated import ConsolidatedCheckpoint
from gigatron.checkpoint.convert import consolidate
from gigatron.checkpoint.native import MOMENTS
from gigatron.config.families import family_names
from gigatron.models.layers.factory import LayerFactory
from gigatron.models.registry import build_model, get_model_spec
from tests.conftest import (
    REPO,
    BackgroundRun,
    assert_ok,
    finish_all,
    read_metrics,
    run_pretrain,
    train_losses,
)

pytestmark = pytest.mark.distributed

PLUGINS = REPO / "tests" / "plugins"
STEPS = ["train.steps=10", "train.warmup_steps=2", "train.eval_interval=10", "checkpoint.interval=5",
         "data.num_workers=0", "train.micro_batch_size=2", "train.global_batch_size=8"]
TP2_PP2 = ["parallel.tp=2", "parallel.pp=2"]
TOY_CONFIG = """\
model:
  family: toy
  vocab_size: 2048
  hidden_size: 64
  num_layers: 2
  ffn_hidden_size: 256
train:
  lr: 3.0e-3
  min_lr: 3.0e-4
data:
  seq_len: 128
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The toy package on PYTHONPATH and its distribution metadata declaring the entry point, as
    `pip install` of a package with `[project.entry-points."gigatron.families"] toy = "toy_family:FAMILY"`
    would leave them."""
    site = tmp_path_factory.mktemp("site")
    dist = site / "toy_family-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-family\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[gigatron.families]\ntoy = toy_family:FAMILY\n")
    with pytest.MonkeyPatch.context() as patch:
        path = os.pathsep.join([str(PLUGINS), str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        patch.setenv("PYTHONPATH", path)  # for every `gigatron` process the tests start
        patch.syspath_prepend(str(site))  # and for this one (consolidation runs in-process)
        patch.syspath_prepend(str(PLUGINS))
        yield


@pytest.fixture(scope="module")
def runs(installed, tmp_path_factory, corpus_ready) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("toy")
    config = root / "toy.yaml"
    config.write_text(TOY_CONFIG)
    runs = finish_all({name: BackgroundRun(root / name, STEPS + layout, nproc=nproc, config=config, threads=1)
                       for name, layout, nproc in [("single", [], 1),
                                                   # a plugin's blocks are recomputed from their declaration
                                                   ("tp2-pp2", [*TP2_PP2, "train.recompute=full"], 4)]})
    return {"config": config, **runs}


def test_the_entry_point_makes_toy_a_family(installed):
    assert "toy" in family_names()
    spec = get_model_spec("toy")
    model_cfg = spec.config_cls()
    model = build_model(model_cfg, LayerFactory(device="meta"))
    assert sum(p.numel() for p in model.parameters()) == spec.num_params(model_cfg)


def test_tp2_pp2_trains_to_the_single_process_losses(runs):
    single, sharded = train_losses(runs["single"]), train_losses(runs["tp2-pp2"])
    assert sorted(sharded) == list(range(1, 11))
    for step, loss in sharded.items():
        assert loss == pytest.approx(single[step], rel=1e-5), (step, loss, single[step])
    assert sharded[10] < sharded[1] - 0.5  # it learned: equal curves are not equal flat lines
    valid = read_metrics(runs["tp2-pp2"], "valid")[0]["loss"]
    assert valid == pytest.approx(read_metrics(runs["single"], "valid")[0]["loss"], rel=1e-5)


def test_tp2_pp2_checkpoint_consolidates_to_the_single_process_state(runs, tmp_path):
    step5 = "checkpoints/step_00000005"
    ours = ConsolidatedCheckpoint(consolidate(runs["tp2-pp2"] / step5, tmp_path / "tp2-pp2", log=lambda _: None))
    ref = ConsolidatedCheckpoint(consolidate(runs["single"] / step5, tmp_path / "single", log=lambda _: None))
    assert type(ours.cfg.model).family == "toy" and ours.optimizer_step == 5
    assert set(ours.plans) == set(ref.plans) and len(ref.plans) == 1 + 2 * 3 + 2  # embedding, 2 x (norm, up, down), head (norm, output)
    for name in ref.plans:
        for key in (None, *MOMENTS):
            a, b = ours.tensor(name, key), ref.tensor(name, key)
            assert (a - b).abs().max() <= 2e-3 * b.abs().max() + 1e-12, (name, key)


@pytest.mark.parametrize(("layout", "nproc"), [(TP2_PP2, 4), ([], 1)], ids=["tp2-pp2", "single"])
def test_resuming_the_tp2_pp2_checkpoint_continues_its_loss_curve(runs, layout, nproc, tmp_path):
    start = runs["tp2-pp2"] / "checkpoints" / "step_00000005"
    proc = run_pretrain(tmp_path / "resumed", [*STEPS, *layout, f"checkpoint.resume={start}"], nproc=nproc,
                        config=runs["config"])
    assert_ok(proc)
    resumed, original = train_losses(tmp_path / "resumed"), train_losses(runs["tp2-pp2"])
    assert sorted(resumed) == [6, 7, 8, 9, 10]
    for step, loss in resumed.items():
        assert loss == pytest.approx(original[step], rel=1e-5), (step, loss, original[step])
