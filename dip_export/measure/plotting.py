"""matplotlib for the benchmark plots: checked before any work, imported headless when drawing."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path
from typing import Any

from dip_export.errors import MissingDependencyError

INSTALL_HINT = "pip install matplotlib (needed for --plot)"
PLOT_KIND = "bench-plot"  # the mark of every plot (ownership.PNG_KINDS): it replaces only an earlier plot


def require_matplotlib() -> None:
    """Fail at once, with the install hint, when matplotlib cannot be imported (checked without importing it)."""
    if "matplotlib" in sys.modules and sys.modules["matplotlib"] is None:  # marked missing
        raise MissingDependencyError("matplotlib", INSTALL_HINT)
    try:
        found = importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise MissingDependencyError("matplotlib", INSTALL_HINT)


def pyplot() -> Any:
    """matplotlib.pyplot on the headless Agg backend."""
    require_matplotlib()
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError("matplotlib", INSTALL_HINT) from None
    return plt


def save(fig: Any, path: Path) -> None:
    """The figure as a PNG marked as this tool's plot (PLOT_KIND), written atomically; the figure is closed."""
    from dip_export.io import atomic_path, png_info

    with atomic_path(path, PLOT_KIND) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight", metadata=png_info(PLOT_KIND))
    pyplot().close(fig)


def footnote(fig: Any, lines: list[str], width: int = 150) -> None:
    """Small text under the axes (rows that did not run, the settings), wrapped."""
    if lines:
        text = "\n".join(textwrap.fill(line, width) for line in lines)
        fig.text(0.01, -0.02, text, ha="left", va="top", fontsize=8)
