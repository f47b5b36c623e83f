"""Training objectives and features. The trainer is shared; a task says how a micro-batch becomes a
loss, and a feature (objectives.features) changes how a run starts or steps behind small hooks.

Each task names the data it reads (`modality`: token shards or image shards) and computes one
micro-batch's loss from the model and the batch (`forward_loss`). Tasks that use randomness
(diffusion noise) draw it per sample from the sample's global number, so a run's losses do not
depend on its data-parallel layout.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from gigatron.config.schema import Config
from gigatron.data.build import TrainingData, build_image_data, build_lm_data
from gigatron.models.layers.factory import LayerFactory
from gigatron.objectives.features import StepContext, TrainingFeature
from gigatron.objectives.lm import LanguageModelingTask


class Task(Protocol):
    """What the trainer needs of an objective."""

    name: str
    modality: str  # "text" (token shards) or "image" (image shards)

    def forward_loss(self, model: nn.Module, batch: Any) -> torch.Tensor: ...


def _registry() -> dict[str, type]:
    from gigatron.objectives.image_classification import ImageClassificationTask
    from gigatron.objectives.rectified_flow import RectifiedFlowTask

    return {"lm": LanguageModelingTask, "classify": ImageClassificationTask, "rectified_flow": RectifiedFlowTask}


def build_task(name: str, factory: LayerFactory, cfg: Config | None = None) -> Task:
    """The task registered under `name`, configured from the run's config."""
    tasks = _registry()
    if name not in tasks:
        raise KeyError(f"unknown task {name!r}; valid: {', '.join(tasks)}")
    return tasks[name](factory, cfg)


def task_modality(name: str) -> str:
    """The data a task reads: "text" (token shards) or "image" (image shards)."""
    return _registry()[name].modality


def build_features(cfg: Config) -> list[TrainingFeature]:
    """The training-time features `cfg` turns on, in the order the trainer calls them."""
    features: list[TrainingFeature] = []
    if cfg.grow.checkpoint:
        from gigatron.objectives.growth import GrowthAtStart

        features.append(GrowthAtStart(cfg))
    if getattr(cfg.model, "matformer", None) is not None:
        from gigatron.objectives.matformer import MatFormerTraining

        features.append(MatFormerTraining(cfg))
    return features


def build_task_data(spec: Any, cfg: Config) -> TrainingData:
    """The training data the objective of model spec `spec` reads in run `cfg`: token shards, or
    image shards (with caption token ids for models conditioned on text)."""
    if task_modality(spec.task) == "image":
        return build_image_data(cfg.data, cfg.images, captions=spec.reads_captions)
    return build_lm_data(cfg.data)


def batch_to(batch: Any, device: torch.device | str) -> Any:
    """A micro-batch (tensor, or dict of tensors for image data) on `device`."""
    if isinstance(batch, dict):
        return {key: value.to(device) for key, value in batch.items()}
    return batch.to(device)


__all__ = ["LanguageModelingTask", "StepContext", "Task", "TrainingFeature", "batch_to", "build_features", "build_task",
           "build_task_data", "task_modality"]
