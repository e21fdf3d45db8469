"""The yardstick: PSNR against a converged reference per solver and evaluation count (demo model)."""

import json

import pytest
import torch

from dip_export.checkpoint import resolve_model
from dip_export.measure import yardstick
from dip_export.runtime.backends import BackendSpec, make_torch_engine


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(yardstick, "REFERENCE_STEPS", 96)  # a short reference keeps the test fast
        mp.setattr(yardstick, "REFERENCE_AGREEMENT_DB", 40.0)
        mp.setattr(yardstick, "CACHE", tmp_path_factory.mktemp("ys"))
        loaded = resolve_model(None, None)
        net = make_torch_engine(BackendSpec("torch", "fp32"), loaded, torch.device("cpu"))
        y = yardstick.Yardstick(num_samples=6, batch=6, cfg=3.0)
        first = yardstick.measure(net, loaded, y, ["euler", "ab2"], [6, 12])
        assert len(list(yardstick.CACHE.iterdir())) == 1  # the reference was cached
        again = yardstick.measure(net, loaded, y, ["euler"], [6])
        assert again["results"][0]["psnr_db"] == first["results"][0]["psnr_db"]
        return first


def test_rows_count_evaluations_and_improve_with_them(report):
    rows = {(r["sampler"], r["nfe"]): r for r in report["results"]}
    assert set(rows) == {("euler", 6), ("euler", 12), ("ab2", 6), ("ab2", 12)}
    assert rows[("euler", 12)]["psnr_db"] > rows[("euler", 6)]["psnr_db"]
    assert rows[("ab2", 12)]["psnr_db"] > rows[("euler", 12)]["psnr_db"]  # second order pays
    assert 0 <= rows[("ab2", 12)]["digit_accuracy"] <= 1 and rows[("ab2", 12)]["digit_fd"] > 0
    json.dumps(report)  # serialisable as is


def test_evaluations_to_match(report):
    target = next(r["psnr_db"] for r in report["results"] if r["sampler"] == "euler" and r["nfe"] == 12)
    best = yardstick.evaluations_to_match(report, target)
    assert best["euler"] == 12 and best["ab2"] in (6, 12)


def test_frechet_distance_of_identical_sets_is_zero():
    import numpy as np

    a = np.random.default_rng(0).normal(size=(200, 5))
    assert yardstick.frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    assert yardstick.frechet_distance(a, a + 1.0) == pytest.approx(5.0, rel=1e-6)


def test_euler_100s_level_is_measured_and_marked(report, tmp_path):
    rows = {(r["sampler"], r["nfe"]): r for r in report["results"]}
    assert report["euler_100_db"] > rows[("euler", 12)]["psnr_db"]  # measured although not asked for
    yardstick.plot(report, tmp_path / "y.png")
    assert (tmp_path / "y.png").read_bytes().startswith(b"\x89PNG")


def test_shift_reaches_the_runs_and_the_reference(tmp_path, monkeypatch):
    monkeypatch.setattr(yardstick, "REFERENCE_STEPS", 48)
    monkeypatch.setattr(yardstick, "REFERENCE_AGREEMENT_DB", 30.0)
    monkeypatch.setattr(yardstick, "CACHE", tmp_path)
    loaded = resolve_model(None, None)
    net = make_torch_engine(BackendSpec("torch", "fp32"), loaded, torch.device("cpu"))
    sticks = [yardstick.Yardstick(num_samples=2, batch=2, shift=s) for s in (1.0, 3.0)]
    reports = [yardstick.measure(net, loaded, y, ["ab2"], [8]) for y in sticks]
    assert [r["settings"]["shift"] for r in reports] == [1.0, 3.0]
    assert len(list(tmp_path.iterdir())) == 2  # one reference per shift
    assert reports[0]["settings"]["reference"].startswith("ab3 ")
    assert reports[0]["results"][0]["psnr_db"] != reports[1]["results"][0]["psnr_db"]


def test_a_damaged_cached_reference_is_refused_and_kept(tmp_path, monkeypatch):
    import numpy as np

    from dip_export.errors import DipError
    from dip_export.generate import make_plan
    from dip_export.sampling import SamplerSettings

    monkeypatch.setattr(yardstick, "REFERENCE_STEPS", 16)
    monkeypatch.setattr(yardstick, "REFERENCE_AGREEMENT_DB", 10.0)
    monkeypatch.setattr(yardstick, "CACHE", tmp_path)
    loaded = resolve_model(None, None)
    plan = make_plan(loaded.config.num_classes, num_samples=2, seed=0)
    y, base = yardstick.Yardstick(num_samples=2, batch=2), SamplerSettings(cfg=1.5)
    steps = []
    first = yardstick.reference_images(loaded, plan, y, base, on_step=steps.append)
    assert len(steps) == 8 + 16  # the half-step run and the full one, each step reported
    (path,) = tmp_path.iterdir()
    damaged = [
        lambda: np.savez(path, images=np.zeros((1, 32, 32, 3), np.uint8), x=first.x[:1], label=np.array("x")),
        lambda: np.savez(path, images=first.images, x=np.full_like(first.x, np.nan), label=np.array("x")),
        lambda: path.write_bytes(b"not a zip file"),
    ]
    good = path.read_bytes()
    for damage in damaged:
        damage()
        before = path.read_bytes()
        steps.clear()
        with pytest.raises(DipError, match="delete it to compute the reference again"):
            yardstick.reference_images(loaded, plan, y, base, on_step=steps.append)
        assert steps == [] and path.read_bytes() == before  # refused before any work, left as it was
    path.write_bytes(good)
    steps.clear()
    assert (yardstick.reference_images(loaded, plan, y, base, on_step=steps.append).images == first.images).all()
    assert steps == []  # a good cached file is used as it is
    path.unlink()
    path.mkdir()
    with pytest.raises(DipError, match="yardstick reference"):
        yardstick.reference_images(loaded, plan, y, base)
