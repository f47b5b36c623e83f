"""The text-to-image transformer: packing (images of different aspect ratios packed together compute
what each computes alone; padding never reaches real tokens), 2-D RoPE's relative positions, the
text encoder's padding invariance, model FLOPs against PyTorch's FLOP counter, latent shards."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from gigatron.config.schema import DataConfig, ParallelConfig
from gigatron.data.errors import DataError
from gigatron.data.image_shards import load_image_dataset
from gigatron.data.image_source import ImageShardSource
from gigatron.data.latent_shards import write_latent_shards
from gigatron.models.layers.factory import LayerFactory
from gigatron.models.layers.init import initialize_parameters
from gigatron.models.layers.packing import plan_rows
from gigatron.models.layers.rotary import apply_rotary_2d
from gigatron.models.t2i import T2IConfig, T2IModel, flops_per_token


def _model(**overrides) -> T2IModel:
    cfg = T2IConfig(**{"hidden_size": 32, "num_layers": 2, "num_heads": 2, "text_hidden_size": 32, "text_heads": 2,
                       "pack_tokens": 64, "caption_len": 8, "vocab_size": 300, "adaln_lora_rank": 4, **overrides})
    model = T2IModel(cfg, LayerFactory())
    initialize_parameters(model, seed=1)
    with torch.no_grad():  # the zero-initialised (adaLN-Zero) projections would hide every path
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return model.double()


CAPTIONS = torch.tensor([[5, 6, 7, -1, -1, -1, -1, -1], [8, 9, -1, -1, -1, -1, -1, -1], [10, -1, -1, -1, -1, -1, -1, -1]])


def test_packed_images_of_different_aspect_ratios_equal_each_alone():
    model = _model()
    x = torch.randn(3, 3, 40, 40, dtype=torch.float64)
    sizes = torch.tensor([[24, 40], [40, 24], [32, 32]])
    t = torch.tensor([0.2, 0.5, 0.9])
    assert plan_rows([60, 60, 64], 64) == [[0], [1], [2]] and plan_rows([24, 40, 16], 64) == [[0, 1], [2]]
    packed = _model(pack_tokens=128)  # two images share the first row
    packed.load_state_dict(model.state_dict())
    together = packed(x, t, {"caption": CAPTIONS, "size": sizes})
    for i in range(3):
        alone = model(x[i:i + 1], t[i:i + 1], {"caption": CAPTIONS[i:i + 1], "size": sizes[i:i + 1]})
        torch.testing.assert_close(together[i], alone[0], rtol=1e-10, atol=1e-10)
        h, w = sizes[i].tolist()
        assert together[i, :, h:].abs().sum() == 0 and together[i, :, :, w:].abs().sum() == 0


def test_padding_and_other_images_never_reach_an_image():
    model = _model(pack_tokens=128)
    x = torch.randn(2, 3, 40, 40, dtype=torch.float64)
    sizes, t = torch.tensor([[24, 40], [40, 24]]), torch.tensor([0.3, 0.6])
    base = model(x, t, {"caption": CAPTIONS[:2], "size": sizes})
    changed = x.clone()
    changed[0, :, 24:] = 100.0  # image 0's padding
    changed[1] = torch.randn(3, 40, 40, dtype=torch.float64)  # the other image of the row
    captions = CAPTIONS[:2].clone()
    captions[1] = torch.tensor([11, 12, 13, 14, -1, -1, -1, -1])  # and its caption
    out = model(changed, t, {"caption": captions, "size": sizes})
    torch.testing.assert_close(out[0], base[0], rtol=1e-10, atol=1e-10)
    assert not torch.allclose(out[1], base[1])
    dropped = model(x, t, {"caption": torch.full_like(CAPTIONS[:2], -1), "size": sizes})
    assert torch.isfinite(dropped).all() and not torch.allclose(dropped[0], base[0])


def test_rope_2d_depends_only_on_offsets():
    q, k = torch.randn(1, 1, 1, 16, dtype=torch.float64), torch.randn(1, 1, 1, 16, dtype=torch.float64)

    def score(pq, pk):
        a = apply_rotary_2d(q, torch.tensor([[pq]]), 100.0)
        b = apply_rotary_2d(k, torch.tensor([[pk]]), 100.0)
        return float((a * b).sum())

    assert score((3, 5), (1, 2)) == pytest.approx(score((10, 7), (8, 4)))
    assert score((3, 5), (1, 2)) != pytest.approx(score((3, 5), (2, 1)))


def test_text_encoder_ignores_padding_length():
    model = _model()
    short, valid, pooled = model.text(torch.tensor([[5, 6, -1]]))
    longer, _, pooled_longer = model.text(torch.tensor([[5, 6, -1, -1, -1, -1]]))
    torch.testing.assert_close(short[:, :3], longer[:, :3])
    torch.testing.assert_close(pooled, pooled_longer)
    assert valid.tolist() == [[True, True, True, False]]


def test_flops_match_pytorchs_counter():
    """Forward FLOPs counted by PyTorch (matmuls and attention, one image of 16 tokens, no padding)
    against a third of our forward + backward count."""
    model = _model(pack_tokens=None)
    cfg = model.cfg
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    captions = torch.arange(5, 5 + cfg.caption_len)[None]
    with FlopCounterMode(display=False) as counter:
        model(x, torch.tensor([0.5]), {"caption": captions})
    ours = flops_per_token(cfg, 16) * 16 / 3
    assert counter.get_total_flops() == pytest.approx(ours, rel=0.1)


def test_validation_names_keys():
    problems = " | ".join(T2IConfig(num_heads=3, pack_tokens=10).validate(
        ParallelConfig(pp=2), DataConfig(image_size=30, caption_len=64)))
    for text in ("model.hidden_size=128 is not divisible by model.num_heads=3", "data.image_size=30",
                 "data.caption_len=64 exceeds", "model.pack_tokens=10", "parallel.pp=2"):
        assert text in problems


def test_latent_shards_train_shapes_and_refuse_bad_latents(tmp_path):
    rng = np.random.default_rng(0)
    pairs = [(rng.standard_normal((4, 8, 8)).astype(np.float16), f"caption {i}") for i in range(5)]
    write_latent_shards(pairs, tmp_path / "latents", samples_per_shard=2)
    source = ImageShardSource(load_image_dataset(tmp_path / "latents"), 8, None, latents=True)
    sample = source[3]
    assert sample["image"].dtype == np.float32 and sample["image"].shape == (4, 8, 8)
    np.testing.assert_array_equal(sample["image"], pairs[3][0].astype(np.float32))
    with pytest.raises(DataError, match="does not match the run"):
        ImageShardSource(load_image_dataset(tmp_path / "latents"), 16, None, latents=True)[0]
    with pytest.raises(DataError, match="NaN or infinite"):
        write_latent_shards([(np.full((4, 8, 8), np.nan, dtype=np.float32), "x")], tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
