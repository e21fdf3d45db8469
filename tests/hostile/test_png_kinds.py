"""PNG outputs have kinds, as JSON ones do: a samples grid, a sample image (--png-dir) and a dip-bench plot each
carry their own mark and replace only a PNG of the same kind; the tool's own caches under engines/ (the --backend
auto cache, the yardstick folder) are no place for any output a user names. Refusals come before any work."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dip_export import cli
from dip_export.errors import UsageError
from dip_export.io import RESERVED, atomic_path, check_output_place, save_png
from dip_export.ownership import MARK, PNG_KINDS, check_replaceable_output, is_ours, mark, png_text
from tests.test_hostile import one_line, run

TMP = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
KINDS = sorted(PNG_KINDS)
EXISTING = [*KINDS, "old-form", "other-tool"]  # what an existing PNG says: a kind's mark, the bare mark, another program
BENCH = ["--backends", "torch", "--steps", "1", "--warmup", "0", "--repeats", "1", "--max-repeats", "1", "--batch-size", "1",
         "--device", "cpu"]  # fmt: skip


def _png(software: bytes, pixel: bytes = b"\x00\x00\x00") -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"tEXt", b"Software\x00" + software) + chunk(b"IDAT", zlib.compress(b"\x00" + pixel))
            + chunk(b"IEND", b""))  # fmt: skip


def _existing(existing: str) -> str:
    return {"old-form": MARK, "other-tool": "GIMP 2.10"}.get(existing) or mark(existing)


def _write(path: Path, kind: str) -> None:
    """What the writer of `kind` does: the minimal PNG writer for samples; for a plot, the atomic write under the
    plot's kind (matplotlib itself is drawn once, below)."""
    if kind == "bench-plot":
        with atomic_path(path, kind) as tmp:
            tmp.write_bytes(_png(png_text(kind).split(b"\x00", 1)[1], b"\x07\x07\x07"))
    else:
        save_png(path, np.full((2, 3, 3), 7, np.uint8), kind)


def test_each_kind_has_its_own_mark() -> None:
    assert {png_text(kind) for kind in KINDS} == {b"Software\x00dip-export/" + kind.encode() for kind in KINDS}
    with pytest.raises(ValueError):
        png_text("png")  # the single PNG kind of earlier versions is none


@TMP
@given(writer=st.sampled_from(KINDS), existing=st.sampled_from(EXISTING))
def test_a_png_is_replaced_only_by_a_writer_of_its_own_kind(tmp_path: Path, writer: str, existing: str) -> None:
    path = tmp_path / "out.png"
    path.write_bytes(_png(_existing(existing).encode()))
    before = path.read_bytes()
    assert is_ours(path, writer) == (existing == writer)
    if existing == writer:
        check_replaceable_output(path, writer)
        _write(path, writer)
        assert path.read_bytes() != before and is_ours(path, writer)
        assert [k for k in KINDS if is_ours(path, k)] == [writer]  # the new file carries its own kind only
        return
    with pytest.raises(UsageError, match=f"{path} exists and is not a .* this tool wrote"):
        check_replaceable_output(path, writer)
    with pytest.raises(UsageError):
        _write(path, writer)
    assert path.read_bytes() == before


def test_a_matplotlib_plot_is_a_plot_only(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dip_export.measure.plotting import save

    save(plt.figure(), tmp_path / "p.png")
    assert [k for k in KINDS if is_ours(tmp_path / "p.png", k)] == ["bench-plot"]
    save_png(tmp_path / "g.png", np.zeros((2, 2, 3), np.uint8), "samples-grid")
    before = (tmp_path / "g.png").read_bytes()
    with pytest.raises(UsageError, match="not a dip-bench plot"):
        save(plt.figure(), tmp_path / "g.png")
    assert (tmp_path / "g.png").read_bytes() == before


@pytest.fixture
def samples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A dip-sample run in an empty working folder: base.npz, its grid base.png, and pd/ with one image per sample."""
    monkeypatch.chdir(tmp_path)
    code, err = run(cli.sample_main, "--out", "base.npz", "--png-dir", "pd", "--num-samples", "1", "--steps", "2")
    assert code == 0, err
    return tmp_path


def test_dip_bench_plot_never_replaces_samples(samples: Path) -> None:
    for target in (samples / "base.png", samples / "pd" / "000000.png"):
        before = target.read_bytes()
        code, err = run(cli.bench_main, *BENCH, "--plot", target)
        one_line(code, err, 2, str(target), "not a dip-bench plot", "refusing to replace")
        assert target.read_bytes() == before
    assert is_ours(samples / "base.png", "samples-grid") and is_ours(samples / "pd" / "000000.png", "sample-image")


def test_dip_sample_replaces_its_own_grid_and_images(samples: Path) -> None:
    grid, image = (samples / "base.png").read_bytes(), (samples / "pd" / "000000.png").read_bytes()
    code, err = run(cli.sample_main, "--out", "base.npz", "--png-dir", "pd", "--num-samples", "1", "--steps", "2",
                    "--seed", "5")  # fmt: skip
    assert code == 0, err
    assert (samples / "base.png").read_bytes() != grid and (samples / "pd" / "000000.png").read_bytes() != image
    code, err = run(cli.sample_main, "--out", "other.npz", "--png-dir", samples / "other", "--num-samples", "1",
                    "--steps", "2")  # fmt: skip
    assert code == 0, err
    (samples / "pd" / "000000.png").write_bytes((samples / "other.png").read_bytes())  # a grid put among the images
    code, err = run(cli.sample_main, "--out", "base.npz", "--png-dir", "pd", "--num-samples", "1", "--steps", "2")
    one_line(code, err, 2, "000000.png", "sample image", "refusing to replace")


# ---------------------------------------------------------------- the tool's own cache places


@TMP
@given(top=st.sampled_from([*sorted(RESERVED), "auto-backend.jsonx", "yardstickx", "other"]),
       below=st.sampled_from(["", "r.json", "a/p.png"]), dotted=st.booleans())  # fmt: skip
def test_no_output_takes_a_cache_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, top: str, below: str,
                                       dotted: bool) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    engines = Path("engines/x/.." if dotted else "engines")  # the same folder, named the long way round
    path = engines / top / below if below else engines / top
    if top in RESERVED:
        with pytest.raises(UsageError, match=r"takes the place of .*which only the tool writes"):
            check_output_place(path, "--json")
        with pytest.raises(UsageError, match="takes the place of"):
            check_output_place(tmp_path / path, "--json")  # the same place, named absolute
    else:
        check_output_place(path, "--json")


def test_the_reserved_places_are_the_tools_caches() -> None:
    from dip_export.io import EXPORT_ROOT
    from dip_export.measure import autobackend, yardstick

    assert EXPORT_ROOT / autobackend.CACHE_FILE in [EXPORT_ROOT / name for name in RESERVED]
    assert yardstick.CACHE in [EXPORT_ROOT / name for name in RESERVED]


@pytest.mark.parametrize(("option", "target"), [
    ("--json", "engines/auto-backend.json"), ("--plot", "engines/yardstick/p.png"),
    ("--json", "engines/yardstick/r.json"), ("--json", "engines/auto-backend.json/r.json"),
])  # fmt: skip
def test_dip_bench_refuses_the_cache_places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, option: str, target: str) -> None:
    monkeypatch.chdir(tmp_path)
    code, err = run(cli.bench_main, *BENCH, option, target)
    one_line(code, err, 2, option, target, "which only the tool writes")
    assert not (tmp_path / "engines" / "auto-backend.json").exists()
    assert not (tmp_path / "engines" / "yardstick").exists() or not any((tmp_path / "engines" / "yardstick").iterdir())


def test_the_python_api_refuses_the_cache_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console
    from rich.progress import Progress

    from dip_export.app import BenchRequest, ModelRequest, run_bench

    monkeypatch.chdir(tmp_path)
    (tmp_path / "engines").mkdir()
    request = BenchRequest(ModelRequest(), {"steps": 1}, backends="torch", warmup=0, repeats=1, max_repeats=1,
                           device="cpu", json_out=Path("engines/auto-backend.json"))  # fmt: skip
    with pytest.raises(UsageError, match="--backend auto cache"):
        run_bench(request, Console(file=io.StringIO()), Progress(disable=True))
    assert list((tmp_path / "engines").iterdir()) == []
