"""dip-export: export, accelerate and sample DiP pixel-space diffusion models."""

from dip_export.config import PRESETS, DiPConfig
from dip_export.errors import DipError

__all__ = ["PRESETS", "DiPConfig", "DipError"]
__version__ = "0.1.0"
