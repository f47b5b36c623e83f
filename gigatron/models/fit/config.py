"""The `model:` section of FIT image encoders and diffusion decoders (families fit, fit_diffusion)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from gigatron.config.validate import layer_chunk_problems
from gigatron.models.layers.fit_blocks import parse_layers


@dataclass
class FITConfig:
    """Shape of a FIT image encoder (classifier)."""

    family: ClassVar[str] = "fit"

    channels: int = 3
    patch_size: int = 4
    group_size: int = 4  # a group is group_size x group_size patches
    latents_per_group: int = 4
    hidden_size: int = 128  # data tokens
    latent_hidden_size: int | None = None  # latents; None = hidden_size
    num_heads: int = 4
    layers: str = "(2)2(2)"
    mlp_ratio: float = 4.0
    global_causal: bool = False  # chunk-causal global attention (autoregressive use)
    num_classes: int = 3
    norm_eps: float = 1e-5
    init_std: float = 0.02

    @property
    def recompute_layers(self) -> int:
        """The units `train.recompute: full` recomputes: FIT blocks (docs/memory.md)."""
        return len(parse_layers(self.layers))

    @property
    def latent_dim(self) -> int:
        """Width of the latent tokens."""
        return self.latent_hidden_size or self.hidden_size

    @property
    def group_tokens(self) -> int:
        """Data tokens per group."""
        return self.group_size * self.group_size

    def validate(self, run: Any) -> list[str]:
        """Problems with this shape in the run `run` (layout, images; empty when fine); messages name the keys."""
        parallel, images = run.parallel, run.images
        problems = []
        try:
            parse_layers(self.layers)
        except ValueError as exc:
            problems.append(f"model.layers: {exc}")
        for key, width in (("model.hidden_size", self.hidden_size), ("model.latent_hidden_size", self.latent_dim)):
            if width % self.num_heads:
                problems.append(f"{key}={width} is not divisible by model.num_heads={self.num_heads}")
        if self.latent_dim % 4:
            problems.append(f"model.latent_hidden_size={self.latent_dim} must be divisible by 4 (2-D sine-cosine "
                            "group positions)")
        side = self.patch_size * self.group_size
        if images.image_size % side:
            problems.append(f"images.image_size={images.image_size} is not divisible by model.patch_size*model.group_size "
                            f"= {self.patch_size}*{self.group_size} = {side}; use a multiple of {side}")
        for key in ("tp", "pp", "cp"):
            if getattr(parallel, key) > 1:
                problems.append(f"parallel.{key}={getattr(parallel, key)}: FIT models train with data parallelism and "
                                "ZeRO (parallel.zero_stage), as in the paper; set parallel.tp, pp and cp to 1")
        if self.channels != 3:
            problems.append(f"model.channels={self.channels}: the image shards hold RGB images; use 3")
        problems += self._class_problems(images)
        return problems + layer_chunk_problems(run)

    def _class_problems(self, images) -> list[str]:
        classes = images.classes or []
        if self.num_classes != len(classes) or not classes:
            return [f"model.num_classes={self.num_classes} but images.classes has {len(classes)} names "
                    f"({classes}); a classifier needs images.classes with one name per class"]
        return []


@dataclass
class FITDiffusionConfig(FITConfig):
    """Shape of a FIT diffusion decoder; num_classes 0 trains an unconditional model."""

    family: ClassVar[str] = "fit_diffusion"

    num_classes: int = 0
    self_condition: bool = True  # RIN's latent self-conditioning
    layers: str = "(2)2(2)2(2)"

    def validate(self, run: Any) -> list[str]:
        """As the encoder's, and the layer string must end with local layers (they produce the output)."""
        problems = super().validate(run)
        try:
            if parse_layers(self.layers)[-1][1]:
                problems.append(f"model.layers={self.layers!r}: a diffusion decoder's last block must be local "
                                "layers only (e.g. '(2)2(2)'), which read the final write into the data tokens")
        except ValueError:
            pass
        return problems

    def _class_problems(self, images) -> list[str]:
        classes = images.classes or []
        if self.num_classes != len(classes):
            return [f"model.num_classes={self.num_classes} but images.classes has {len(classes)} names; set "
                    "model.num_classes to their number (0 with no images.classes: unconditional)"]
        return []
