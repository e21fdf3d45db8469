"""How the tool names the folders it writes under `engines/`: NAME-HxW-VARIANT, made and recognised here only.

VARIANT is an export's precision (with its target when not ONNX Runtime: `int8-trt`) or `calib` (the
calibration trajectories of a model at a size). Light on purpose: the Hub name rule (`hub.py`) reads it too.
"""

from __future__ import annotations

import re

from dip_export.settings import BUILD_PRECISIONS, BUILD_TARGETS
from dip_export.text import visible

MAX_MODEL_NAME = 200  # characters: with the size and variant, one part of a folder name

CALIBRATION = "calib"


def model_name_problem(name: str) -> str:
    """Why `name` cannot be a model's name ("" when it can): it names the tool's folders (`export_folder_name`) and
    is printed as it is, so it is one non-empty part of a folder name, short, with every character seen as itself."""
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        return f"must be one part of a folder name, got '{visible(name, 80)}'"
    if len(name) > MAX_MODEL_NAME:
        return f"must be at most {MAX_MODEL_NAME} characters, got {len(name)}"
    if visible(name) != name:
        return f"holds a character that is not printed as itself: '{visible(name, 80)}'"
    return ""


def export_variant(precision: str, target: str = "onnx") -> str:
    """fp16 -> fp16; int8 for TensorRT -> int8-trt."""
    return precision if target == "onnx" else f"{precision}-{target}"


def export_folder_name(name: str, size: tuple[int, int], variant: str) -> str:
    """dip-digits, (32, 32), fp32 -> dip-digits-32x32-fp32."""
    return f"{name}-{size[0]}x{size[1]}-{variant}"


VARIANTS = (*(export_variant(p, t) for p in BUILD_PRECISIONS for t in BUILD_TARGETS), CALIBRATION)
# recognised in any ASCII case (`-32X32-FP32` too: a folder renamed by hand, or on a file system that ignores case);
# only ASCII letters fold, so no look-alike (`İnt8` with a dotted capital I, a Kelvin sign) passes for a variant
_FOLDER_NAME = re.compile(rf".+-[0-9]+x[0-9]+-(?:{'|'.join(map(re.escape, VARIANTS))})", re.ASCII | re.IGNORECASE)


def is_export_folder_name(text: str) -> bool:
    """A name as `export_folder_name` makes it, for any model name, size and variant, in any ASCII case (the tool
    writes them in lower case: `export_folder_name`)."""
    return _FOLDER_NAME.fullmatch(text) is not None
