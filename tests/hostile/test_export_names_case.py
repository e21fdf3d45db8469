"""An export-folder name is recognised in any ASCII case (`dip-digits-32x32-FP32`, `-32X32-Int8-TRT`), so that a
folder renamed by hand, or named on a file system that ignores case, stays a local name and never becomes a Hub
request; the tool still writes its names in lower case, and no non-ASCII look-alike passes for a variant.

The rule (`naming.is_export_folder_name`) and the local-or-Hub decision built on it are property-tested over case
variants; DiPPipeline.load and dip-sample are run against a local endpoint that records every request (`fake_hub`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dip_export import DiPPipeline, cli
from dip_export.errors import DipError
from dip_export.export.naming import VARIANTS, export_folder_name, is_export_folder_name
from dip_export.hub import is_local_name, looks_like_hub_name
from tests.test_hostile import one_line, run

WORD = st.from_regex(r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,9}[A-Za-z0-9])?", fullmatch=True).filter(lambda w: "--" not in w)
SIZE = st.tuples(st.integers(1, 4096), st.integers(1, 4096))


def _recase(text: str, upper: list[bool]) -> str:
    """`text` with the letters the mask marks in upper case, the others in lower case."""
    return "".join(c.upper() if upper[i % len(upper)] else c.lower() for i, c in enumerate(text))


@given(WORD, SIZE, st.sampled_from(VARIANTS), st.lists(st.booleans(), min_size=1, max_size=12))
def test_an_export_folder_name_in_any_case_is_one(model, size, variant, upper):
    written = export_folder_name(model, size, variant)
    assert written == f"{model}-{size[0]}x{size[1]}-{variant}" and variant == variant.lower()  # written in lower case
    tail = _recase(written[len(model) :], upper)  # `-HxW-VARIANT` in the case the mask gives
    name = model + tail
    assert is_export_folder_name(name)
    for given_as in (f"{model}-nonexistent/{name}", f"a-nonexistent/b-nonexistent/{name}"):
        assert is_local_name(given_as) and not looks_like_hub_name(given_as)


# letters in either case, digits and '-', no 'x': the size written before it is the only `HxW` in the name
@given(WORD, SIZE, st.text(alphabet="abcfilnprtABCFILNPRT0123456789-", max_size=9))
def test_only_the_tools_variants_in_some_case_make_an_export_name(model, size, variant):
    name = f"{model}-{size[0]}x{size[1]}-{variant}"
    assert is_export_folder_name(name) == (variant.lower() in VARIANTS)


LOOK_ALIKES = {"i": ("\u0130", "\u0131"), "k": ("\u212a",), "s": ("\u017f",)}  # İ ı, the Kelvin sign, long s


@given(WORD, SIZE, st.sampled_from([v for v in VARIANTS if "i" in v]), st.sampled_from(LOOK_ALIKES["i"]))
def test_a_non_ascii_look_alike_is_no_variant(model, size, variant, look_alike):
    """Unicode case folding would take `İnt8` (a dotted capital I) for `int8`: only ASCII letters fold here."""
    name = f"{model}-{size[0]}x{size[1]}-{variant.replace('i', look_alike, 1)}"
    assert not is_export_folder_name(name)


NAMES = ["myexports/dip-digits-32x32-FP32", "myexports/dip-digits-32X32-Int8-TRT", "runs/golden-32x64-Calib",
         "myexports/dip-digits-32x32-fP16"]  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_load_takes_it_as_a_local_folder_and_makes_no_request(fake_hub, name):
    assert is_local_name(name) and not looks_like_hub_name(name)
    with pytest.raises(DipError, match="no such"):
        DiPPipeline.load(name)
    assert fake_hub == []


@pytest.mark.parametrize("name", NAMES[:2])
def test_dip_sample_takes_it_as_a_local_folder_and_makes_no_request(fake_hub, tmp_path: Path, name):
    code, err = run(cli.sample_main, name, "--steps", "2", "--num-samples", "1", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, f"{name}: no such")
    assert fake_hub == [] and not (tmp_path / "o.npz").exists()


def test_a_repo_name_without_a_size_stays_a_hub_name():
    """The control: a repo name that is no export-folder name (no size before the variant) stays a Hub name."""
    assert looks_like_hub_name("org-nonexistent/dip-digits-FP32") and not is_local_name("org-nonexistent/dip-FP32")
