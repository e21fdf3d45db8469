"""`manifest.json`: what an export folder holds, where it came from, how well it verified."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dip_export.config import DiPConfig
from dip_export.errors import ExportError
from dip_export.io import atomic_path

MANIFEST = "manifest.json"
FORMAT = "dip-export/1"


@dataclass
class Manifest:
    name: str  # model name (folder names, tables)
    precision: str  # fp32 | fp16 | bf16 | int8
    image_size: tuple[int, int]  # (H, W) fixed at export
    config: DiPConfig
    files: dict[str, str]  # sub-model -> ONNX path relative to the folder
    source: dict[str, str]  # checkpoint path and sha256 (or preset / demo)
    versions: dict[str, str]  # tool versions that wrote it
    opset: int
    verification: dict[str, Any] = field(default_factory=dict)  # errors vs PyTorch per output
    sampling: dict[str, Any] = field(default_factory=dict)  # recommended sampler settings
    engines: dict[str, Any] = field(default_factory=dict)  # TensorRT plans built from this export
    extra: dict[str, Any] = field(default_factory=dict)  # stage-specific notes (quantization, timings)
    format: str = FORMAT

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["config"] = self.config.to_dict()
        data["image_size"] = list(self.image_size)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        data = dict(data)
        data["config"] = DiPConfig.from_dict(data["config"])
        data["image_size"] = tuple(data["image_size"])
        return cls(**data)


def write_manifest(folder: Path, manifest: Manifest) -> None:
    with atomic_path(folder / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest.to_json(), indent=2) + "\n")


def read_manifest(folder: Path) -> Manifest:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ExportError(f"{folder} is not an export folder (no {MANIFEST}); run `dip-export onnx` first")
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise ExportError(f"{path}: unknown format {data.get('format')!r}, expected {FORMAT}")
        manifest = Manifest.from_json(data)
    except (ValueError, TypeError, KeyError) as err:
        raise ExportError(f"{path}: unreadable manifest ({err})") from None
    for role, rel in manifest.files.items():
        if not (Path(folder) / rel).is_file():
            raise ExportError(f"{folder}: the {role} file {rel} named in the manifest is missing")
    return manifest
