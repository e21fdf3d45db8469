"""The `polygraphy run` command that reproduces a failed engine verification, layer by layer.

When an engine disagrees with ONNX Runtime, the user's next step is Polygraphy: it builds the engine
from the same ONNX with the same settings, runs it and ONNX Runtime on the same inputs with every
tensor marked as an output, and names the first layer whose values part. This module writes that
command (and the inputs, with a data-loader script Polygraphy imports) next to the export; Polygraphy
itself is not imported here.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import numpy as np

from dip_export.export.spec import SubModelSpec
from dip_export.io import atomic_path

LOADER = '''"""Inputs of the failed verification, for `polygraphy run --data-loader-script`."""
from pathlib import Path

import numpy as np


def load_data():
    for path in sorted(Path(__file__).parent.glob("{role}-inputs-*.npz")):
        with np.load(path) as data:
            yield {{name: data[name] for name in data.files}}
'''


def _shape_arg(spec: SubModelSpec, rows: tuple[int, ...], which: int) -> str:
    return " ".join(f"{t.name}:{list(t.concrete(rows[which]))}".replace(" ", "") for t in spec.inputs)


def polygraphy_command(onnx_path: Path, spec: SubModelSpec, entry: dict[str, Any], tolerance: float, loader: Path) -> str:
    """`polygraphy run` comparing TensorRT and ONNX Runtime on every tensor, as the verification did."""
    rows = tuple(int(r) for r in entry["profile"]["network_rows"])
    args = [
        "polygraphy", "run", str(onnx_path), "--trt", "--onnxrt", "--strongly-typed",
        "--trt-min-shapes", *_shape_arg(spec, rows, 0).split(), "--trt-opt-shapes", *_shape_arg(spec, rows, 1).split(),
        "--trt-max-shapes", *_shape_arg(spec, rows, 2).split(),
        "--builder-optimization-level", str(entry.get("opt_level", 3)),
        "--onnx-outputs", "mark", "all", "--trt-outputs", "mark", "all",
        "--atol", f"{tolerance:g}", "--rtol", f"{tolerance:g}", "--check-error-stat", "max",
        "--data-loader-script", f"{loader}:load_data",
    ]  # fmt: skip
    if entry["precision"] != "fp32":
        args.insert(6, "--tf32")  # the engine was built with TensorRT's default TF32; Polygraphy's default is off
    return shlex.join(args)


def write_repro(
    folder: Path, entry: dict[str, Any], onnx_dir: Path, onnx_files: dict[str, str], specs: dict[str, SubModelSpec],
    feeds: dict[str, list[dict[str, np.ndarray]]], tolerance: float,
) -> Path:  # fmt: skip
    """Inputs, loader scripts and the commands under `folder/verify-<precision>/`; returns the command file."""
    out = folder / f"verify-{entry['precision']}"
    out.mkdir(exist_ok=True)
    lines = [
        "#!/bin/sh",
        "# TensorRT against ONNX Runtime, every tensor compared: the first one out of tolerance is",
        "# where the engine parts from the graph. `polygraphy inspect model` lists an engine's layers.",
    ]
    for role, role_feeds in feeds.items():
        for i, feed in enumerate(role_feeds):
            arrays: dict[str, Any] = dict(feed)
            with atomic_path(out / f"{role}-inputs-{i}.npz") as tmp, open(tmp, "wb") as f:
                np.savez(f, **arrays)
        loader = out / f"{role}_loader.py"
        with atomic_path(loader) as tmp:
            tmp.write_text(LOADER.format(role=role))
        lines.append(polygraphy_command((onnx_dir / onnx_files[role]).resolve(), specs[role], entry, tolerance, loader.resolve()))
    command = out / "polygraphy.sh"
    with atomic_path(command) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return command
