import torch
import torch.nn.functional as F

from dip_export.checkpoint import build_model
from dip_export.config import PRESETS, DiPConfig
from dip_export.model import DiP, count_parameters, patchify, unpatchify
from tests.conftest import rel_err


def test_backbone_and_velocity_match_authors(golden, golden_model):
    x, t, y = golden.tensor("x"), golden.tensor("t"), golden.tensor("y")
    with torch.no_grad():
        tokens = golden_model.backbone(x, t, y)
        v = golden_model.detailer(x, tokens)
    assert rel_err(tokens, golden["tokens"]) <= 1e-5
    assert rel_err(v, golden["v"]) <= 1e-5


def test_detailer_on_supplied_tokens_matches_authors(golden, golden_model):
    with torch.no_grad():
        v = golden_model.detailer(golden.tensor("x"), golden.tensor("tokens_given"))
    assert rel_err(v, golden["v_given_tokens"]) <= 1e-5


def test_patchify_is_unfold_order_and_inverts():
    x = torch.randn(2, 3, 32, 48)
    patches = patchify(x, 16)  # (B, N, C, P, P)
    expected = F.unfold(x, 16, stride=16).transpose(1, 2)
    assert torch.equal(patches.flatten(2), expected)
    assert torch.equal(unpatchify(patches, 2, 3), x)


def test_xl_preset_has_631m_parameters():
    with torch.device("meta"):
        n = count_parameters(DiP(PRESETS["dip-xl-16"]))
    assert abs(n - 631e6) / 631e6 <= 0.01


def test_detailer_generalises_to_other_patch_sizes_and_widths():
    cfg = DiPConfig(hidden_size=32, num_heads=2, depth=1, patch_size=8, num_classes=3, detailer_width=8)
    model = build_model(cfg)
    names = set(model.state_dict())
    assert "local_decoder.enc3.0.weight" in names and "local_decoder.enc4.0.weight" not in names
    assert model.state_dict()["local_decoder.enc3.0.weight"].shape == (32, 16, 3, 3)
    x = torch.randn(3, 3, 16, 24)
    with torch.no_grad():
        v = model(x, torch.rand(3), torch.tensor([0, 1, 3]))
    assert v.shape == x.shape and torch.isfinite(v).all()


def test_batch_rows_are_independent(golden_model):
    x = torch.randn(3, 3, 32, 64)
    t, y = torch.tensor([0.1, 0.5, 0.9]), torch.tensor([0, 2, 5])
    with torch.no_grad():
        full = golden_model(x, t, y)
        one = golden_model(x[1:2], t[1:2], y[1:2])
    assert torch.allclose(full[1:2], one, rtol=1e-4, atol=1e-5)
