"""HF_HUB_OFFLINE and HF_HUB_CACHE apply as the environment holds them at each load, also when set after
huggingface_hub was imported (it reads its constants once, at import): the tool passes the values it checked
(`hub_settings`) on every call, so offline set late makes no request, and a changed cache folder is the one read."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dip_export import DiPPipeline, cli
from dip_export.errors import CheckpointError
from dip_export.hub import hub_settings
from tests.hostile.test_hub_cache import REPO as CACHED_REPO
from tests.hostile.test_hub_cache import _cache
from tests.test_hostile import one_line, run

REPO = "org/name"


def _sample(*args: str | Path) -> tuple[int, str]:
    return run(cli.sample_main, *args, "--steps", "1", "--num-samples", "1", "--device", "cpu")


def test_api_offline_set_after_a_first_load_makes_no_request(fake_hub: list) -> None:
    from huggingface_hub import constants

    with pytest.raises(CheckpointError, match="HTTP 404"):
        DiPPipeline.load(REPO)  # imported and asked online
    asked = len(fake_hub)
    assert asked > 0
    os.environ["HF_HUB_OFFLINE"] = "1"  # as a script would, after the first load (monkeypatch restores it)
    for name in (REPO, f"{REPO}/model.safetensors"):
        with pytest.raises(CheckpointError, match="not in the Hugging Face cache") as err:
            DiPPipeline.load(name)
        assert "HTTP" not in str(err.value)
    assert len(fake_hub) == asked and constants.HF_HUB_OFFLINE is False  # the library itself was never told


def test_cli_offline_set_after_a_first_load_makes_no_request(fake_hub: list, monkeypatch, tmp_path: Path) -> None:
    code, err = _sample(REPO, "--out", tmp_path / "o.npz")
    one_line(code, err, 1, "HTTP 404")
    asked = len(fake_hub)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, err = _sample(REPO, "--out", tmp_path / "o.npz")
    one_line(code, err, 1, "not in the Hugging Face cache")
    assert len(fake_hub) == asked and not (tmp_path / "o.npz").exists()


def test_a_cache_folder_changed_after_import_is_the_one_read(fake_hub: list, monkeypatch, tmp_path: Path) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(empty))
    with pytest.raises(CheckpointError, match="not in the Hugging Face cache") as err:
        DiPPipeline.load(CACHED_REPO)
    assert str(empty) in str(err.value)
    filled, _ = _cache(tmp_path / "filled-cache", "relative blob")
    monkeypatch.setenv("HF_HUB_CACHE", str(filled))
    assert DiPPipeline.load(CACHED_REPO, device="cpu").config.num_classes > 0  # API: read from the new folder
    out = tmp_path / "o.npz"
    code, err = _sample(CACHED_REPO, "--out", out)  # CLI
    assert code == 0, err
    assert out.is_file() and fake_hub == []
    assert Path(constants.HF_HUB_CACHE) != filled and not Path(constants.HF_HUB_CACHE).exists()  # the library's own


# ---------------------------------------------------------------- the mechanism: as huggingface_hub reads them

SWITCHES = st.sampled_from(["1", "0", "true", "FALSE", "yes", "No", "on", "OFF", ""])
FOLDERS = st.sampled_from(["/a/b", "~/c", "$HOME/d", "rel/e", "", "/x/${DIPV}/f", "~"])
ENVIRONMENTS = st.fixed_dictionaries(
    {"HOME": st.just("/home/u"), "DIPV": st.just("v")},
    optional={"HF_HUB_OFFLINE": SWITCHES, "TRANSFORMERS_OFFLINE": SWITCHES, "HF_HUB_CACHE": FOLDERS,
              "HUGGINGFACE_HUB_CACHE": FOLDERS, "HF_HOME": FOLDERS, "XDG_CACHE_HOME": FOLDERS},
)  # fmt: skip


def _as_imported(env: dict[str, str]) -> tuple[bool, str]:
    """What huggingface_hub's constants are when it is imported under `env`: its module run afresh, apart."""
    from huggingface_hub import constants

    spec = importlib.util.spec_from_file_location("hf_constants_afresh", constants.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.HF_HUB_OFFLINE, module.HF_HUB_CACHE


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(env=ENVIRONMENTS)
def test_the_settings_are_what_huggingface_hub_would_read_at_import(monkeypatch, env: dict[str, str]) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(env)
        offline, cache = _as_imported(env)
        found = hub_settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert (found.offline, found.cache) == (offline, Path(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # set at import: the library stays offline
    assert hub_settings(env).offline
