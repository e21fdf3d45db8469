"""DiP architecture configuration and the named presets."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from dip_export.errors import UsageError
from dip_export.settings import (
    MAX_IMAGE_SIDE,
    MAX_STEPS,
    exact_str,
    parse_sampling_defaults,
    plain_value,
)

# Bounds on a stored or given architecture: well above DiP-XL/16 (1152, 16, 26, 16, 1000, 3, 64).
CONFIG_LIMITS = {
    "hidden_size": 8192,
    "num_heads": 256,
    "depth": 256,
    "patch_size": 256,
    "num_classes": 1_000_000,
    "in_channels": 64,
    "detailer_width": 4096,
    "image_size": MAX_IMAGE_SIDE,
}


@dataclass(frozen=True)
class DiPConfig:
    """Everything that fixes the shapes of a DiP network (defaults: the released DiP-XL/16)."""

    hidden_size: int = 1152  # D: token width of the DiT backbone
    num_heads: int = 16  # attention heads; head dim = D / heads, must be divisible by 4 (2D RoPE)
    depth: int = 26  # number of DiT blocks
    patch_size: int = 16  # P: side of the square patch; a power of two (detailer halves it log2(P) times)
    num_classes: int = 1000  # real classes; the label table has one more row, the null class
    in_channels: int = 3  # image channels (RGB)
    detailer_width: int = 64  # channels of the detailer's first level; doubles at every halving
    image_size: int = 256  # native training resolution (used for defaults only; RoPE adapts)

    def __post_init__(self) -> None:
        for name, limit in CONFIG_LIMITS.items():
            value = getattr(self, name)
            if type(value) is not int or not 1 <= value <= limit:
                raise UsageError(f"config {name} must be an integer in 1..{limit}, got {plain_value(value)}")
        if self.hidden_size % self.num_heads:
            raise UsageError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 4:
            raise UsageError(f"head dim {self.head_dim} must be divisible by 4 for 2D RoPE")
        p = self.patch_size
        if p < 2 or p & (p - 1):
            raise UsageError(f"patch_size must be a power of two >= 2, got {p}")
        if self.image_size % p:  # the side every default run and export takes: whole patches
            raise UsageError(f"image_size {self.image_size} is not a multiple of the patch size {p}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        """SwiGLU hidden width: int(2 * 4D / 3), 3072 for D = 1152."""
        return int(2 * 4 * self.hidden_size / 3)

    @property
    def detailer_levels(self) -> int:
        """Number of 2x halvings from a PxP patch down to 1x1."""
        return self.patch_size.bit_length() - 1

    @property
    def null_class(self) -> int:
        return self.num_classes

    def num_tokens(self, height: int, width: int) -> int:
        return (height // self.patch_size) * (width // self.patch_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiPConfig:
        """A config from a mapping of field names (text) to values; every other key or value is refused."""
        if not isinstance(data, dict):
            raise UsageError(f"a DiPConfig is made from a dict of its fields, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        keys = list(dict.keys(data))
        unknown = sorted(plain_value(k) for k in keys if type(k) is not str or k not in names)
        if unknown:
            raise UsageError(f"unknown DiPConfig fields: {', '.join(unknown[:8])}{' ...' if len(unknown) > 8 else ''}")
        return cls(**{k: dict.__getitem__(data, k) for k in keys})


def check_sampling_defaults(data: Any) -> dict[str, Any]:
    """Recommended sampler settings stored in a file: a JSON object of known keys within the limits."""
    parsed = parse_sampling_defaults(data)
    if "grids" in parsed:
        from dip_export.sampling.grids import check_grid_entries  # fitted time grids: sampling's own format

        parsed["grids"] = check_grid_entries(parsed["grids"], MAX_STEPS)
    from dip_export.sampling.rules import stored_settings

    stored_settings(parsed)  # the values as a whole: a recommended guidance that no recommended step would use
    return parsed


PRESETS: Mapping[str, DiPConfig] = MappingProxyType(
    {  # read-only: a released architecture is what it says
        "dip-xl-16": DiPConfig(hidden_size=1152, num_heads=16, depth=26),
        "dip-l-16": DiPConfig(hidden_size=1024, num_heads=16, depth=22),
        "dip-b-16": DiPConfig(hidden_size=768, num_heads=12, depth=12),
        "dip-s-16": DiPConfig(hidden_size=384, num_heads=6, depth=12),
    }
)


def get_preset(name: str) -> DiPConfig:
    name = exact_str(name)
    if not isinstance(name, str) or name not in PRESETS:
        shown = plain_value(name) if isinstance(name, str) else type(name).__name__
        raise UsageError(f"unknown preset {shown}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]
