"""dip-export: export, accelerate and sample DiP pixel-space diffusion models.

```python
from dip_export import DiPPipeline

images = DiPPipeline.load()(classes=[1, 7], seeds=[0, 1])  # the bundled demo model; uint8 (N, H, W, 3)
```
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing itself is not loaded: a command's Ctrl-C handling comes first (`dip_export.entry`)
if TYPE_CHECKING:
    from typing import Any

    from dip_export.config import PRESETS, DiPConfig
    from dip_export.errors import DipError
    from dip_export.pipeline import DiPPipeline

__all__ = ["PRESETS", "DiPConfig", "DiPPipeline", "DipError"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # loaded on first use: the pipeline pulls in torch and the model (`--help` stays quick), and nothing but the
    # standard library loads before a command's Ctrl-C handling is in place (`dip_export.entry`)
    if name == "DiPPipeline":
        from dip_export.pipeline import DiPPipeline

        return DiPPipeline
    if name == "DipError":
        from dip_export.errors import DipError

        return DipError
    if name in ("PRESETS", "DiPConfig"):
        from dip_export import config

        return getattr(config, name)
    raise AttributeError(f"module 'dip_export' has no attribute {name!r}")
