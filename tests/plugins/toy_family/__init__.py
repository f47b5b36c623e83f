"""A toy model family outside gigatron: token-shift mixing and an MLP per block, no attention.

The package's entry point (`toy = "toy_family:FAMILY"` in the `gigatron.families` group) is all
gigatron needs: this module stays light, naming where the config dataclass and the ModelSpec live.
"""

from gigatron.config.families import Family

FAMILY = Family(config="toy_family.config:ToyConfig", spec="toy_family.model:SPEC")
