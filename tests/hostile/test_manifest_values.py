"""What a manifest holds is shown, named and read by one set of rules, whatever its values.

- A value or key a manifest holds is shown in a message as `plain_value` shows it (quoted, at most 40 characters
  and an ellipsis), or by its kind: never verbatim, so a long or marked-up value cannot fill or style the line.
- A JSON number no float holds finitely (1e400, -1e999) is refused by the one JSON reader, in every file it reads,
  as NaN and Infinity are: never read as inf.
- A file path in a manifest is named plainly, as the export wrote it: `./backbone.onnx`, `backbone.onnx/` and
  `a//b.onnx` are refused (one file, one name), by the same rule as an external-data name.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dip_export import DiPPipeline, cli
from dip_export.errors import DipError
from dip_export.export.manifest import parse_manifest, plain_relative
from dip_export.untrusted import UntrustedFileError, parse_json
from tests.test_hostile import one_line, run

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
LONG_TEXT = st.text(min_size=60, max_size=400).filter(lambda t: len(t.strip()) > 50)


def _data(pristine: Path) -> dict[str, Any]:
    return json.loads((pristine / "manifest.json").read_text())


PLACES = {
    "format": lambda d, v: d.update(format=v),
    "precision": lambda d, v: d.update(precision=v),
    "image_size": lambda d, v: d.update(image_size=[v, 32]),
    "an unknown field": lambda d, v: d.update({v: 1}),
    "an engines key": lambda d, v: d.setdefault("engines", {}).update({v: 3}),
    "a files key": lambda d, v: d["files"].update({v: 7}),
    "a versions key": lambda d, v: d["versions"].update({v: 5}),
}


@FAST
@given(place=st.sampled_from(sorted(PLACES)), text=LONG_TEXT)
def test_a_stored_value_or_key_is_never_shown_verbatim(pristine: Path, place: str, text: str) -> None:
    data = _data(pristine)
    PLACES[place](data, text)
    with pytest.raises((ValueError, TypeError, KeyError)) as caught:
        parse_manifest(data)
    message = str(caught.value)
    assert text not in message and len(message) < 200, message


@FAST
@given(digits=st.integers(31, 4000))
def test_a_huge_opset_is_named_by_its_size(pristine: Path, digits: int) -> None:
    data = _data(pristine)
    data["opset"] = 10 ** (digits - 1)
    with pytest.raises(ValueError, match=f"got an integer of {digits} digits"):
        parse_manifest(data)


@FAST
@given(exponent=st.integers(309, 100_000), sign=st.sampled_from(["", "-"]), depth=st.integers(0, 5))
def test_a_number_beyond_a_float_is_refused_by_the_json_reader(exponent: int, sign: str, depth: int) -> None:
    text = "[" * depth + f"{sign}1e{exponent}" + "]" * depth
    with pytest.raises(UntrustedFileError, match="not finite"):
        parse_json(text, "f.json")


@FAST
@given(value=st.floats(allow_nan=False, allow_infinity=False))
def test_every_finite_float_reads_back_as_itself(value: float) -> None:
    assert parse_json(json.dumps({"v": value}), "f.json") == {"v": value}


@pytest.mark.parametrize("number", ["1e400", "-1e999", "NaN", "Infinity"])
def test_a_manifest_with_a_number_beyond_a_float_is_refused_on_every_surface(pristine: Path, tmp_path: Path,
                                                                             number: str) -> None:  # fmt: skip
    folder = Path(shutil.copytree(pristine, tmp_path / "exp"))
    text = (folder / "manifest.json").read_text()
    key = '"tolerance": '
    start = text.index(key) + len(key)
    end = min(i for i in (text.find(",", start), text.find("}", start), text.find("\n", start)) if i > 0)
    (folder / "manifest.json").write_text(text[:start] + number + text[end:])
    with pytest.raises(DipError, match="not finite"):
        DiPPipeline.load(folder)
    code, err = run(cli.sample_main, folder, "--num-samples", "1", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, "not finite")
    assert not (tmp_path / "o.npz").exists()


NAME_PART = st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=8)


@FAST
@given(parts=st.lists(NAME_PART, min_size=1, max_size=3), odd=st.sampled_from(["", "."]), at=st.integers(0, 3),
       trailing=st.booleans())  # fmt: skip
def test_a_path_not_named_plainly_is_never_plain(parts: list[str], odd: str, at: int, trailing: bool) -> None:
    """Parts that are names make a plain path; an empty or '.' part anywhere, or a trailing '/', never does."""
    plain = "/".join(parts)
    assert plain_relative(plain)
    named = "/".join([*parts[:at], odd, *parts[at:]])
    assert not plain_relative(named), named
    if trailing:
        assert not plain_relative(plain + "/")


@pytest.mark.parametrize("name", ["./backbone.onnx", "backbone.onnx/", ".//backbone.onnx", "sub/../backbone.onnx"])
def test_a_manifest_naming_a_graph_oddly_is_refused(pristine: Path, tmp_path: Path, name: str) -> None:
    folder = Path(shutil.copytree(pristine, tmp_path / "exp"))
    data = _data(folder)
    data["files"]["backbone"] = name
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(DipError, match=r"not a plain relative file name|leads outside"):
        DiPPipeline.load(folder)
    code, err = run(cli.sample_main, folder, "--num-samples", "1", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, "backbone path in the manifest")


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=12,
)


@FAST
@given(value=JSON_VALUES, bad=st.sampled_from(["\x00", "\ud800", "\udfff", "a\x00b"]), as_key=st.booleans())
def test_a_nul_or_lone_surrogate_anywhere_in_json_is_refused(value: Any, bad: str, as_key: bool) -> None:
    """No name or message can hold these: the one JSON reader refuses them wherever they are (a key or a text at
    any depth); the same JSON without them reads back as itself."""
    if _unusable(value):  # drawn already holding one
        with pytest.raises(UntrustedFileError, match="NUL character or a lone surrogate"):
            parse_json(json.dumps(value), "x.json")
    else:
        assert parse_json(json.dumps(value), "x.json") == value
    placed = {bad: value} if as_key else [value, {"k": [bad]}]
    with pytest.raises(UntrustedFileError, match="NUL character or a lone surrogate"):
        parse_json(json.dumps(placed), "x.json")


def _unusable(value: Any) -> bool:
    return "\\u0000" in json.dumps(value) or any(0xD800 <= ord(c) <= 0xDFFF for c in json.dumps(value, ensure_ascii=False))


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda d: d.update(name=""), "name must be one part of a folder name"),
        (lambda d: d.update(name=".."), "name must be one part of a folder name"),
        (lambda d: d.update(name="a/b"), "name must be one part of a folder name"),
        (lambda d: d.update(name="dip\x1b]0;owned\x07"), "not printed as itself"),
        (lambda d: d.update(name="dip\ndigits"), "not printed as itself"),
        (lambda d: d.update(name="dip\u202edigits"), "not printed as itself"),
        (lambda d: d.update(name="d" * 201), "at most 200 characters"),
        (lambda d: d.update(name="dip\x00digits"), "NUL character"),
        (lambda d: d["verification"].update(tolerance=1e308, worst_rel=1e300), "verification.tolerance must be"),
        (lambda d: d["verification"].update(tolerance=0, worst_rel=0), "verification.tolerance must be"),
        (lambda d: d["verification"].update(tolerance=-1.0, worst_rel=-2.0), "verification.tolerance must be"),
    ],
)
def test_a_manifest_whose_name_or_tolerance_means_nothing_is_refused_on_every_surface(pristine, tmp_path, change, words):
    folder = Path(shutil.copytree(pristine, tmp_path / "exp"))
    data = _data(folder)
    change(data)
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(DipError, match=words):
        DiPPipeline.load(folder)
    code, err = run(cli.sample_main, folder, "--num-samples", "1", "--out", tmp_path / "o.npz")
    one_line(code, err, 1, words.replace("\\", ""))
    assert not (tmp_path / "o.npz").exists()


CONTENTS_CHANGES = {
    "a text for an entry": lambda c, g: c.update({g: "x"}),
    "a negative size": lambda c, g: c[g].update(size=-1),
    "a size as text": lambda c, g: c[g].update(size=str(c[g]["size"])),
    "a short sha256": lambda c, g: c[g].update(sha256=c[g]["sha256"][:63]),
    "an upper-case sha256": lambda c, g: c[g].update(sha256=c[g]["sha256"].upper()),
    "a name not plain": lambda c, g: c.update({"./" + g: c.pop(g)}),
    "the graph left out": lambda c, g: c.pop(g),
    "no file listed": lambda c, g: c.clear(),
    "a name leading outside": lambda c, g: c.update({"../" + g: dict(c[g])}),
    "a name with a backslash": lambda c, g: c.update({"sub\\" + g: dict(c[g])}),
}


@pytest.mark.parametrize("change", sorted(CONTENTS_CHANGES))
def test_a_contents_list_that_does_not_record_the_graphs_as_written_is_refused(pristine, tmp_path, change):
    """The list of written files is what a graph is checked against (size and sha256): an entry of another shape,
    or a list leaving a graph out, would let any graph pass; both are refused, through the API and the command."""
    folder = Path(shutil.copytree(pristine, tmp_path / "exp"))
    data = _data(folder)
    graph = data["files"]["backbone"]
    assert graph in data["contents"]
    CONTENTS_CHANGES[change](data["contents"], graph)
    (folder / "manifest.json").write_text(json.dumps(data))
    words = ("contents entry", "not among the files", "contents lists no file")
    with pytest.raises(DipError, match="|".join(words)):
        DiPPipeline.load(folder)(classes=[1], seeds=[0], steps=1, sampler="euler")
    code, err = run(cli.sample_main, folder, "--num-samples", "1", "--steps", "1", "--out", tmp_path / "o.npz")
    assert code == 1 and any(w in err for w in words) and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o.npz").exists()


def test_a_negative_relative_error_is_no_verification(pristine, tmp_path):
    folder = Path(shutil.copytree(pristine, tmp_path / "exp"))
    data = _data(folder)
    data["verification"].update(worst_rel=-1.0)
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(DipError, match=r"verification.worst_rel is not within 0..its tolerance"):
        DiPPipeline.load(folder)


DIGESTS = st.one_of(st.text(max_size=70), st.integers(), st.none()).filter(lambda d: not (isinstance(d, str) and len(d) == 64))


@FAST
@given(digest=DIGESTS)
def test_a_source_sha256_is_a_checkpoints_digest_or_empty(pristine: Path, digest: Any) -> None:
    data = _data(pristine)
    data["source"]["sha256"] = digest
    if digest == "":
        parse_manifest(data)
        return
    with pytest.raises((ValueError, TypeError)):
        parse_manifest(data)


def test_the_contents_never_list_the_manifest_itself(pristine: Path) -> None:
    data = _data(pristine)
    data["contents"]["manifest.json"] = {"size": 1, "sha256": "0" * 64}
    with pytest.raises(ValueError, match=r"contents entry manifest\.json"):
        parse_manifest(data)
