"""The text-to-image transformer: packing (images of different aspect ratios packed together compute
what each computes alone; padding never reaches real tokens), 2-D RoPE's relative positions, the
text encoder's padding invariance, model FLOPs against PyTorch's FLOP counter, latent shards."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from gigatron.config.schema import Config, DataConfig, ImagesConfig, ParallelConfig
from gigatron.data.errors import DataError
from gigatron.data.image_shards import load_image_dataset
from gigatron.data.image_source import ImageShardSource
from gigatron.data.latent_shards import write_latent_shards
from gigatron.models.layers.factory import LayerFactory
from gigatron.models.layers.init import initialize_parameters
from gigatron.models.layers.packing import plan_rows
from gigatron.models.layers.rotary import apply_rotary_2d
from gigatron.models.t2i.config import T2IConfig
from gigatron.models.t2i.model import T2IModel, flops_per_token


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
    model = T2IConfig(num_heads=3, pack_tokens=10)
    problems = " | ".join(model.validate(Config(model=model, parallel=ParallelConfig(pp=2),
                                                images=ImagesConfig(image_size=30, caption_len=64))))
    for text in ("model.hidden_size=128 is not divisible by model.num_heads=3", "images.image_size=30",
                 "images.caption_len=64 exceeds", "model.pack_tokens=10", "parallel.pp=2"):
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


@pytest.mark.parametrize("family", ["depth", "width"])
def test_paper_size_configs_validate_and_span_the_study(family):
    """configs/t2i/{depth,width}: 0.4B-4B denoisers, one family growing blocks, the other channels,
    each valid on the layout its header names (8 GPUs per node)."""
    import re
    from pathlib import Path

    from gigatron.config import load_config
    from gigatron.config.validate import validate_config

    root = Path(__file__).resolve().parents[2] / "configs" / "t2i" / family
    sizes = []
    for path in sorted(root.glob("*.yaml")):
        cfg = load_config(path)
        nodes = int(re.search(r"--nodes=(\d+)", path.read_text()).group(1))
        validate_config(cfg, world_size=8 * nodes)
        model = T2IModel(cfg.model, LayerFactory(device="meta"))
        denoiser = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in model.text.parameters())
        assert f"{denoiser / 1e9:.2f}B denoiser parameters" in path.read_text()
        sizes.append((denoiser, cfg.model.hidden_size, cfg.model.num_layers))
    sizes.sort()
    assert len(sizes) == 5 and 0.35e9 < sizes[0][0] < 0.45e9 and 3.9e9 < sizes[-1][0] < 4.4e9
    varying = {s[2] for s in sizes} if family == "depth" else {s[1] for s in sizes}
    fixed = {s[1] for s in sizes} if family == "depth" else {s[2] for s in sizes}
    assert len(varying) == 5 and len(fixed) == 1


def _tiny_bert(directory):
    """A randomly initialised 1-layer BERT and a word-level tokenizer for the shapes vocabulary, saved locally."""
    from transformers import BertConfig, BertModel, BertTokenizer

    from gigatron.data.shapes import BACKGROUNDS, COLOURS, POSITIONS, SHAPES

    words = {w for phrase in POSITIONS.values() for w in phrase.split()} | set(COLOURS) | set(BACKGROUNDS)
    words |= set(SHAPES) | {"a", "an", "and", "on", "background", ","}
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(words)]
    directory.mkdir()
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(directory / "vocab.txt")).save_pretrained(directory)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(directory)
    return len(vocab)


def test_frozen_local_hugging_face_text_encoder(tmp_path):
    from gigatron.config.schema import ImagesConfig
    from gigatron.data.caption_tokenizer import caption_tokenizer

    vocab = _tiny_bert(tmp_path / "bert")
    tokenizer = caption_tokenizer(DataConfig(tokenizer=f"hf:{tmp_path / 'bert'}"), ImagesConfig(), tmp_path)
    ids = tokenizer.encode("a red circle in the centre on a grey background")
    assert tokenizer.vocab_size == vocab and ids[0] == 2 and ids[-1] == 3 and 1 not in ids  # [CLS] ... [SEP], no [UNK]
    model = _model(text_encoder=str(tmp_path / "bert"), text_hidden_size=32)
    assert not any("_encoder" in name for name, _ in model.named_parameters())
    assert not any("_encoder" in key for key in model.state_dict())
    captions = torch.tensor([ids + [-1] * 2])
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    out = model(x, torch.tensor([0.5]), {"caption": captions})
    out.sum().backward()
    assert model.text.null.grad is not None and torch.isfinite(out).all()
    assert all(p.grad is None for p in model.text._encoder.parameters())
    with pytest.raises(ValueError, match="set model.text_hidden_size=32"):
        _model(text_encoder=str(tmp_path / "bert"), text_hidden_size=64)
