"""Content of a stored file is never echoed: errors name the file, the key of this run, or a count, not the text."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dip_export.config import check_sampling_defaults
from dip_export.distributed import SETTINGS_FILE, World, check_settings
from dip_export.errors import UsageError
from dip_export.settings import SAMPLING_DEFAULTS

SECRET = "hf_SeCrEt"
NAMEABLE = st.characters(exclude_characters="\x00", exclude_categories=["Cs"])  # JSON texts refuse NUL and lone surrogates
TEXT = st.text(NAMEABLE, min_size=1, max_size=20).map(lambda t: SECRET + t)  # every stored string carries the secret
ENTRY = st.fixed_dictionaries({"nfe": st.integers(1, 30) | TEXT, "cfg": st.just([1.0, 2.0]) | TEXT,
                               "interval": st.just([0.1, 1.0]), "shift": st.just(1.0) | TEXT, "sampler": TEXT,
                               "grid": st.just([0.0, 1.0])})  # fmt: skip
STORED = TEXT | st.lists(TEXT, max_size=3) | st.lists(ENTRY, min_size=1, max_size=2)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(SAMPLING_DEFAULTS)) | TEXT, STORED, min_size=1, max_size=4))
def test_a_refused_stored_sampling_default_echoes_no_stored_text(data):
    try:
        check_sampling_defaults(data)
    except UsageError as err:
        assert SECRET not in str(err)
    else:
        assert SECRET not in repr(data), "stored text carrying the secret was accepted as a setting"


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(TEXT, TEXT, min_size=1, max_size=4), st.sampled_from(["steps", "sampler"]))
def test_a_resume_folder_with_other_settings_echoes_no_stored_key_or_value(tmp_path_factory, stored, changed):
    folder = tmp_path_factory.mktemp("parts")
    (folder / SETTINGS_FILE).write_text(json.dumps({**stored, changed: SECRET + "v"}))
    with pytest.raises(UsageError) as err:
        check_settings(folder, {"steps": 5, "sampler": "euler"}, World())
    assert SECRET not in str(err.value) and changed in str(err.value)
    assert f"{len(set(stored) - {changed})} unknown key(s)" in str(err.value)
