"""Typed run configuration: dataclasses, YAML loading with overrides, validation."""

from gigatron.config.errors import ConfigError
from gigatron.config.loader import config_from_dict, config_to_dict, config_to_yaml, load_config
from gigatron.config.schema import (
    CheckpointConfig,
    Config,
    DataConfig,
    DatasetSpec,
    HardwareConfig,
    ImagesConfig,
    LoggingConfig,
    ParallelConfig,
    TrainConfig,
)
from gigatron.config.validate import validate_config

__all__ = [
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "DatasetSpec",
    "HardwareConfig",
    "ImagesConfig",
    "LoggingConfig",
    "ParallelConfig",
    "TrainConfig",
    "config_from_dict",
    "config_to_dict",
    "config_to_yaml",
    "load_config",
    "validate_config",
]
