"""The JSON writer bounds its data before making any text: a list or dict that holds itself is refused at once, and
so is data sharing one list so often that its text would pass what the reader takes (`untrusted.json_items`);
shared data within the bound is written and read back equal."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dip_export.errors import UsageError
from dip_export.io import save_json
from dip_export.untrusted import JsonShapeError, json_items

FEW = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
LEAVES = st.one_of(st.integers(-5, 5), st.text(max_size=3), st.booleans(), st.none())
TREES = st.recursive(
    LEAVES,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=3), inner, max_size=4)),
    max_leaves=30,
)


def _text_values(data) -> int:
    """Values in the JSON text, counted from the text itself (keys and values, containers included)."""
    parsed = json.loads(json.dumps(data))
    stack, count = [parsed], 0
    while stack:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            count += len(item)  # the keys
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


@FEW
@given(tree=TREES, shared=st.integers(1, 6))
def test_items_are_counted_as_the_text_holds_them(tree, shared) -> None:
    data = {"a": [tree] * shared, "b": tree}  # the same object held several times: each time counted
    assert json_items(data, 10**9) == _text_values(data)


@FEW
@given(depth=st.integers(1, 40), kind=st.sampled_from(["list", "dict"]), where=st.integers(0, 39))
def test_data_holding_itself_is_refused_at_once(tmp_path_factory, depth, kind, where) -> None:
    root: dict = {}
    node: dict | list = root
    chain = [root]
    for i in range(depth):
        child: dict | list = [] if kind == "list" else {}
        node.append(child) if isinstance(node, list) else node.__setitem__(f"k{i}", child)
        node = child
        chain.append(child)
    target = chain[where % len(chain)]
    node.append(target) if isinstance(node, list) else node.__setitem__("back", target)
    with pytest.raises(JsonShapeError, match="holds itself"):
        json_items(root, 10**9)
    path = tmp_path_factory.mktemp("j") / "r.json"
    started = time.perf_counter()
    with pytest.raises(UsageError, match="holds itself"):
        save_json(path, root, "bench-report")
    assert time.perf_counter() - started < 1 and not path.exists()


@pytest.mark.parametrize("doublings", [30, 60, 200])
def test_data_shared_past_the_readers_bound_is_refused_at_once(tmp_path: Path, doublings: int) -> None:
    shared: list = []
    for _ in range(doublings):
        shared = [shared, shared]
    started = time.perf_counter()
    with pytest.raises(UsageError, match="more than"):
        save_json(tmp_path / "r.json", {"a": shared}, "bench-report")
    assert time.perf_counter() - started < 1 and list(tmp_path.iterdir()) == []


def test_shared_data_within_the_bound_is_written_and_read_back(tmp_path: Path) -> None:
    row = {"backend": "torch", "ms": [1, 2, 3]}
    save_json(tmp_path / "r.json", {"rows": [row, row, row]}, "bench-report")
    assert json.loads((tmp_path / "r.json").read_text())["rows"] == [row] * 3
