"""Image samples for training: caption labels, decoding to fixed-size uint8, placeholders for
skipped samples, and the loader's dict batches carrying each sample's global number."""

from __future__ import annotations

import numpy as np
import pytest

from gigatron.config.errors import ConfigError
from gigatron.config.schema import DataConfig, DatasetSpec, ImagesConfig
from gigatron.data.build import build_image_data
from gigatron.data.errors import DataError
from gigatron.data.image_shards import load_image_dataset, write_image_shards
from gigatron.data.image_source import CaptionLabels, ImageShardSource
from gigatron.data.loader import GlobalBatchLoader
from gigatron.data.shapes import COLOURS, POSITIONS, cell_centre, generate_shapes, render_shape_image


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    captions = generate_shapes(root / "images", 12, seed=0)
    write_image_shards(str(captions), root / "ds", samples_per_shard=5)
    return root / "ds"


def test_caption_labels_take_the_first_named_class():
    labels = CaptionLabels(["square", "red", "dark blue"])
    assert labels("a red circle and a blue square", "x") == 1
    assert labels("a dark blue square", "x") == 2  # "dark blue" starts first
    assert labels("a squared red", "x") == 1  # whole words only
    with pytest.raises(DataError, match="shard.tar:0007: caption 'a green circle' names none of images.classes"):
        labels("a green circle", "shard.tar:0007")
    with pytest.raises(ValueError, match="distinct"):
        CaptionLabels(["a", "a"])


def test_source_decodes_labels_and_sizes(shapes):
    dataset = load_image_dataset(shapes)
    source = ImageShardSource(dataset, 48, list(COLOURS), start=2, stop=12)
    assert len(source) == 10
    sample = source[0]
    assert sample["image"].dtype == np.uint8 and sample["image"].shape == (3, 48, 48)
    _, caption = render_shape_image(0, 2)
    assert list(COLOURS)[int(sample["label"])] == caption.split()[1]
    assert bool(sample["present"]) and not bool(source.placeholder()["present"])
    with pytest.raises(IndexError):
        source[10]


def test_first_shape_colour_is_at_its_cell_centre(shapes):
    """The shapes set's promise, through the training path: square images keep cell centres."""
    source = ImageShardSource(load_image_dataset(shapes), 256, list(COLOURS))
    checked = 0
    for i in range(len(source)):
        image, caption = render_shape_image(0, i)
        if image.size != (256, 256):
            continue
        first_cell = next(cell for cell, phrase in POSITIONS.items() if caption.split(" ", 3)[3].startswith(phrase))
        x, y = cell_centre(256, 256, first_cell)
        assert tuple(source[i]["image"][:, y, x]) == COLOURS[caption.split()[1]]
        checked += 1
    assert checked > 0


def test_loader_batches_dicts_with_global_numbers(shapes):
    data = build_image_data(DataConfig(source="shards", datasets=[DatasetSpec(str(shapes))]),
                            ImagesConfig(image_size=16, classes=list(COLOURS), valid_images=4))
    assert [len(s) for s in data.train] == [8] and [len(s) for s in data.valid] == [4]
    loader = GlobalBatchLoader(data.train, 4, 2, dp_rank=1, dp_size=2, seed=0, shuffle=False)
    (batch,) = loader.next_batch()
    assert batch["image"].shape == (2, 3, 16, 16) and batch["number"].tolist() == [2, 3]
    with pytest.raises(ConfigError, match="images.valid_images=12 leaves no training images of the 12"):
        build_image_data(DataConfig(source="shards", datasets=[DatasetSpec(str(shapes))]), ImagesConfig(valid_images=12))
