"""The package's dependency rules, read from the imports: runtime never imports export, no import circles."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "dip_export"


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """module -> the dip_export modules it imports anywhere in its body (lazy imports included)."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            found |= {t for t in targets if t in modules and t != name}
        graph[name] = found
    return graph


def test_runtime_imports_nothing_from_export():
    graph = _imports()
    offenders = {m: sorted(t for t in targets if t.startswith("dip_export.export")) for m, targets in graph.items()}
    assert {m: t for m, t in offenders.items() if m.startswith("dip_export.runtime") and t} == {}
    assert len([m for m in graph if m.startswith("dip_export.runtime.")]) >= 7  # the check did read the engines


def test_no_import_circles_apart_from_the_package_face():
    graph = _imports()
    assert "dip_export.runtime.trt_engine" in graph["dip_export.export.trt_build"]  # lazy imports are read too
    graph = {m: {t for t in targets if t != "dip_export"} for m, targets in graph.items()}  # __init__ only hands names on
    circles = []
    for start in graph:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    circles.append(path)
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    assert circles == []


def test_stage_modules_live_in_their_packages():
    for rel in ("export/calibration.py", "export/quantize.py", "export/trt_build.py", "measure/bench.py",
                "measure/yardstick.py", "measure/autobackend.py", "measure/harness.py", "runtime/backends.py"):  # fmt: skip
        assert (PACKAGE / rel).is_file(), rel
    for rel in ("calibration.py", "quantize.py", "trt_build.py", "bench.py", "yardstick.py", "autobackend.py"):
        assert not (PACKAGE / rel).exists(), rel
