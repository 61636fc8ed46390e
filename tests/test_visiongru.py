"""VisionGRU-specific behaviour: paper sizes, arch table and errors, the real tiny arch at 224, the positional
embedding, scan directions, backends. What every backbone must do (any input size, out_indices, gradients,
frozen_stages, norm_eval, with_cp, state dicts, 224 -> 512 checkpoints, toolkit builds) is
tests/test_backbone_contract.py, run on VisionGRU's tiny test arch."""
import copy
import math

import pytest
import torch

from rv_plugins.backbones.visiongru import ARCH_ALIASES, ARCH_SETTINGS, GRU2DMixer, VisionGRU

SMALL = dict(embed_dims=[8, 16, 32, 64], depths=[1, 1, 1, 1])
STRIDES = (4, 8, 16, 32)
PAPER_PARAMS = {"tiny": 30e6, "base": 86e6}  # Table I of the paper, 1000-class classifier included


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def expected_shapes(embed_dims, batch, h, w, out_indices):
    return [(batch, embed_dims[i], math.ceil(h / STRIDES[i]), math.ceil(w / STRIDES[i])) for i in out_indices]


@pytest.mark.parametrize("arch", sorted(ARCH_SETTINGS))
def test_param_count_matches_paper(arch):
    with torch.device("meta"):  # counting only: no memory, no init cost
        model = VisionGRU(arch, num_classes=1000)
    assert abs(n_params(model) / PAPER_PARAMS[arch] - 1) <= 0.05, n_params(model)


@pytest.mark.parametrize("alias,name", sorted(ARCH_ALIASES.items()) + [("TINY", "tiny"), ("Base", "base")])
def test_arch_aliases(alias, name):
    with torch.device("meta"):
        model = VisionGRU(alias)
    assert model.embed_dims == ARCH_SETTINGS[name]["embed_dims"]
    assert model.depths == ARCH_SETTINGS[name]["depths"]


@pytest.mark.parametrize("arch,match", [
    ("small", "tiny"), (dict(embed_dims=[8, 16, 32]), "depths"),
    (dict(embed_dims=[8, 16, 32], depths=[1, 1, 1]), "4 stages"),
])
def test_bad_arch_errors(arch, match):
    with pytest.raises(ValueError, match=match):
        VisionGRU(arch)


def test_tiny_forward_224():
    model = VisionGRU("tiny", out_indices=(0, 1, 2, 3), num_classes=10).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 224, 224))
        logits = model.forward_head(outs)
    assert [tuple(o.shape) for o in outs] == expected_shapes(model.embed_dims, 1, 224, 224, range(4))
    assert logits.shape == (1, 10)
    assert all(torch.isfinite(o).all() for o in outs)


def test_positional_embedding_is_resized_and_used():
    model = VisionGRU(SMALL, img_size=64, preset="paper").eval()  # the paper's positional embedding
    x = torch.randn(1, 3, 50, 90)
    with torch.no_grad():
        out = model(x)[0]
        model.pos_embed.add_(torch.randn_like(model.pos_embed))
        assert not torch.allclose(model(x)[0], out)
    assert tuple(model._pos_embed((13, 23)).shape) == (1, 13, 23, SMALL["embed_dims"][0])
    assert VisionGRU(SMALL, img_size=None).pos_embed is None


def _moved(f, x, t):
    """Which raster positions of f's output change when token t of x changes: (H*W,) bool."""
    B, H, W, C = x.shape
    x2 = x.clone()
    x2.view(B, H * W, C)[:, t] += 1.0
    with torch.no_grad():
        diff = (f(x2) - f(x)).abs().amax(dim=(0, 3))
    return (diff > 0).flatten()


@pytest.mark.parametrize("t", [0, 7, 19])
def test_scan_directions(t):
    torch.manual_seed(0)
    mixer = GRU2DMixer(8)
    x = torch.randn(2, 4, 5, 8)
    L = 4 * 5
    before = torch.arange(L) < t
    fwd, rev = _moved(mixer.scan_forward, x, t), _moved(mixer.scan_reverse, x, t)
    assert torch.equal(fwd, ~before), fwd  # raster: at and after t only
    assert torch.equal(rev, torch.arange(L) <= t), rev  # reverse raster: at and before t only


def test_reverse_scan_equals_flipped_map_scan():
    """The authors flip the map in H and W and scan forward; ``reverse=True`` must be the same."""
    torch.manual_seed(0)
    mixer = GRU2DMixer(8)
    x = torch.randn(2, 4, 5, 8)
    flipped_gru = copy.deepcopy(mixer.gru_bwd)
    flipped_gru.reverse = False
    with torch.no_grad():
        expected = GRU2DMixer._scan(flipped_gru, x.flip(1, 2)).flip(1, 2)
        assert torch.allclose(mixer.scan_reverse(x), expected, atol=1e-6)
        assert not torch.allclose(mixer.scan_forward(x), expected, atol=1e-3)


def test_reference_backend_matches_default():
    torch.manual_seed(0)
    default = VisionGRU(SMALL, out_indices=(0, 1, 2, 3)).eval()
    reference = VisionGRU(SMALL, out_indices=(0, 1, 2, 3), scan_backend="reference").eval()
    reference.load_state_dict(default.state_dict())
    grus = [m for m in reference.modules() if type(m).__name__ == "MinGRU"]
    assert len(grus) == 2 * sum(SMALL["depths"]) and all(g.backend == "reference" for g in grus)
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        for a, b in zip(default(x), reference(x)):
            assert torch.allclose(a, b, atol=1e-5)
