"""Sequencer2D-specific behaviour, its BiLSTM2D token mixer and the FLOP counter (rv_plugins.utils.flops).

What every backbone must do (any input size, out_indices, gradients, frozen_stages, norm_eval, with_cp,
state dicts, toolkit builds) is tests/test_backbone_contract.py, run on Sequencer2D's tiny test arch.

Reference figures are the paper's (Tatsunami & Taki, NeurIPS 2022): Table 1 parameters / FLOPs of
S, M, L at 224x224 and Table 2e for the GRU and tanh-RNN variants of S.
"""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from rv_plugins.backbones.sequencer2d import Sequencer2D, convert_timm_state_dict
from rv_plugins.layers.bilstm2d import RNN_TYPES, BiLSTM2D
from rv_plugins.utils.flops import SCAN_KEY, count_flops

# (arch, rnn_type) -> (parameters with the 1000-class classifier, FLOPs at 224^2), from the paper.
PAPER = {
    ("s", "lstm"): (28e6, 8.4e9), ("m", "lstm"): (38e6, 11.1e9), ("l", "lstm"): (54e6, 16.6e9),
    ("s", "gru"): (25e6, 7.5e9), ("s", "rnn"): (19e6, 5.8e9),
}
TINY = dict(depths=[1, 1, 1, 1], embed_dims=[16, 32, 32, 32], patch_sizes=[7, 2, 1, 1])


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def ceil_sizes(size, patch_sizes):
    out = []
    for p in patch_sizes:
        size = math.ceil(size / p)
        out.append(size)
    return out


# ----------------------------------------------------------------------------- size and cost
@pytest.mark.parametrize("arch,rnn_type", sorted(PAPER))
def test_parameter_count_matches_paper(arch, rnn_type):
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = Sequencer2D(arch, rnn_type=rnn_type, num_classes=1000)
    assert n_params(model) == pytest.approx(PAPER[arch, rnn_type][0], rel=0.02)


@pytest.mark.parametrize("arch", ["s", "m", "l"])
def test_parameter_count_equals_timm(arch):
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        ref = timm.create_model(f"sequencer2d_{arch}", pretrained=False)
        model = Sequencer2D(arch, num_classes=1000)
    assert n_params(model) == n_params(ref)


@pytest.mark.parametrize("arch,rnn_type", sorted(PAPER))
def test_flops_match_paper(arch, rnn_type):
    model = Sequencer2D(arch, rnn_type=rnn_type, num_classes=1000)
    result = count_flops(model, (1, 3, 224, 224))
    assert result["total"] == pytest.approx(PAPER[arch, rnn_type][1], rel=0.10)
    assert result["total"] == sum(result["by_op"].values()) == result["by_module"]["Global"]


def test_mingru_scans_are_counted():
    lstm = count_flops(Sequencer2D(TINY), (1, 3, 56, 70))
    mingru = count_flops(Sequencer2D(TINY, rnn_type="mingru"), (1, 3, 56, 70))
    # every block scans 4 directions x D channels over all its tokens: sum_i depth_i * tokens_i * 4 * D_i
    hs, ws = ceil_sizes(56, TINY["patch_sizes"]), ceil_sizes(70, TINY["patch_sizes"])
    hidden = [c // 4 for c in TINY["embed_dims"]]
    expected_scan = sum(d * h * w * 4 * k for d, h, w, k in zip(TINY["depths"], hs, ws, hidden))
    assert mingru["by_op"][SCAN_KEY] == expected_scan
    assert SCAN_KEY not in lstm["by_op"]
    assert mingru["total"] < lstm["total"]


# ----------------------------------------------------------------------------- FLOP counter
@pytest.mark.parametrize("cls", [torch.nn.LSTM, torch.nn.GRU, torch.nn.RNN])
def test_rnn_flops_formula_and_backends_agree(cls):
    """float32 LSTM runs oneDNN's kernel (our handler); float64 decomposes into matmuls (PyTorch's)."""
    rnn = cls(16, 8, num_layers=2, bidirectional=True)
    T, N = 5, 3
    expected = T * N * sum(p.numel() for p in rnn.parameters() if p.dim() == 2)  # every matrix once per token
    assert count_flops(rnn, (T, N, 16))["total"] == expected
    assert count_flops(rnn.double(), (T, N, 16))["total"] == expected


def test_lstm_counted_through_the_onednn_kernel():
    by_op = count_flops(torch.nn.LSTM(16, 8), (4, 2, 16))["by_op"]
    if "aten.mkldnn_rnn_layer" not in by_op:
        pytest.skip("this PyTorch build does not run nn.LSTM through oneDNN")
    assert by_op["aten.mkldnn_rnn_layer"] == 4 * 2 * 4 * 8 * (16 + 8)


def test_cpu_attention_is_counted():
    class Attention(torch.nn.Module):
        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q, k, v)

    B, heads, Lq, Lk, E = 2, 3, 10, 12, 8
    q, k, v = torch.randn(B, heads, Lq, E), torch.randn(B, heads, Lk, E), torch.randn(B, heads, Lk, E)
    result = count_flops(Attention(), (q, k, v))
    assert result["total"] == B * heads * Lq * Lk * (E + E)  # Q K^T and P V


def test_count_flops_restores_state():
    model = Sequencer2D(TINY, rnn_type="mingru").train()
    count_flops(model, (1, 3, 28, 28))
    assert model.training
    with pytest.raises(TypeError, match="input shape"):
        count_flops(model, "1x3x28x28")


# ----------------------------------------------------------------------------- BiLSTM2D
@pytest.mark.parametrize("rnn_type", RNN_TYPES)
@pytest.mark.parametrize("impl", ["native", "fused"])
def test_each_direction_mixes_only_its_own_line(rnn_type, impl):
    """Perturb token (h0, w0): vertical outputs change only in column w0 (forward: rows >= h0,
    backward: rows <= h0), horizontal ones only in row h0 (forward: cols >= w0, backward: <= w0)."""
    torch.manual_seed(0)
    H, W, h0, w0 = 5, 6, 2, 3
    layer = BiLSTM2D(8, hidden_dim=4, rnn_type=rnn_type, impl=impl)
    x = torch.randn(2, H, W, 8)
    x2 = x.clone()
    x2[:, h0, w0] += 1.0
    with torch.no_grad():
        changed = (layer.mix(x2) - layer.mix(x)).abs().amax(dim=0) > 1e-6  # (H, W, 4D)
    rows, cols = torch.arange(H)[:, None], torch.arange(W)[None, :]
    expected = [
        (cols == w0) & (rows >= h0), (cols == w0) & (rows <= h0),   # vertical fwd / bwd
        (rows == h0) & (cols >= w0), (rows == h0) & (cols <= w0),   # horizontal fwd / bwd
    ]
    for k, mask in enumerate(expected):
        direction = changed[..., 4 * k:4 * (k + 1)]
        assert torch.equal(direction.any(-1), mask), f"direction {k}"
    out_changed = (layer(x2) - layer(x)).abs().amax(dim=(0, 3)) > 1e-6
    assert torch.equal(out_changed, (rows == h0) | (cols == w0))


@pytest.mark.parametrize("rnn_type", RNN_TYPES)
@pytest.mark.parametrize("shape", [(2, 5, 5), (2, 3, 7), (1, 1, 4)])
def test_native_and_fused_agree(rnn_type, shape):
    torch.manual_seed(0)
    layer = BiLSTM2D(12, rnn_type=rnn_type)
    x = torch.randn(*shape, 12, requires_grad=True)
    results = []
    for impl in ("native", "fused"):
        layer.impl = impl
        y = layer(x)
        results.append((y, torch.autograd.grad(y.square().sum(), [x, *layer.parameters()])))
    (y0, g0), (y1, g1) = results
    torch.testing.assert_close(y1, y0, atol=1e-5, rtol=1e-4)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


def test_fused_and_native_count_the_same_flops():
    for rnn_type in RNN_TYPES:
        layer = BiLSTM2D(16, rnn_type=rnn_type)
        counts = []
        for impl in ("native", "fused"):
            layer.impl = impl
            counts.append(count_flops(layer, (2, 5, 5, 16))["total"])
        assert counts[0] == counts[1], rnn_type


def test_bilstm2d_errors():
    with pytest.raises(ValueError, match="rnn_type"):
        BiLSTM2D(8, rnn_type="transformer")
    with pytest.raises(ValueError, match="impl"):
        BiLSTM2D(8, impl="cuda")
    with pytest.raises(ValueError, match="channels-last"):
        BiLSTM2D(8)(torch.randn(1, 8, 4, 4))


# ----------------------------------------------------------------------------- backbone
@pytest.mark.parametrize("arch", ["tiny", "s"])
def test_matches_timm_reference_with_its_weights(arch):
    timm = pytest.importorskip("timm")
    if arch == "s":
        ref = timm.create_model("sequencer2d_s", pretrained=False)
        model = Sequencer2D("s", num_classes=1000)
    else:
        from timm.models.sequencer import Sequencer2d
        ref = Sequencer2d(num_classes=10, layers=TINY["depths"], patch_sizes=TINY["patch_sizes"],
                          embed_dims=TINY["embed_dims"], hidden_sizes=[c // 4 for c in TINY["embed_dims"]],
                          mlp_ratios=[3.0] * 4)
        model = Sequencer2D(TINY, num_classes=10)
    torch.nn.init.normal_(ref.head.fc.weight, std=0.02)  # timm's head starts at zero
    model.load_state_dict(convert_timm_state_dict(ref.state_dict()))
    x = torch.randn(2, 3, 56, 84)
    with torch.no_grad():
        torch.testing.assert_close(model.eval().forward_head(model(x)), ref.eval()(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("rnn_type", RNN_TYPES)
def test_train_step(rnn_type):
    torch.manual_seed(0)
    model = Sequencer2D(TINY, rnn_type=rnn_type, out_indices=(0, 1, 2, 3), num_classes=5,
                        drop_path_rate=0.1).train()
    torch.nn.init.normal_(model.head.weight, std=0.1)  # starts at zero: no gradient would pass it
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(2, 3, 30, 23), torch.tensor([1, 3])
    feats = model(x)
    loss = F.cross_entropy(model.forward_head(feats), y) + sum(f.square().mean() for f in feats[:-1])
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_backbone_errors():
    with pytest.raises(ValueError, match="one entry per stage"):
        Sequencer2D(dict(depths=[1, 1], embed_dims=[8], patch_sizes=[7, 2]))
    with pytest.raises(ValueError, match=r"missing \['patch_sizes'\], unknown \['widths'\]"):
        Sequencer2D(dict(depths=[1], embed_dims=[8], widths=[2]))


@pytest.mark.parametrize("rnn_type", RNN_TYPES)
@pytest.mark.parametrize("grid_rounding", ["ceil", "floor"])
def test_traced_at_one_size_is_right_at_another(rnn_type, grid_rounding):
    """torch.jit.trace at one size, run at others: the traced padding and RNNs follow the input (traced at
    224^2 they were frozen: (1, C, 11, 13) at 160 x 192 where eager gives (1, C, 12, 14))."""
    torch.manual_seed(0)
    model = Sequencer2D(arch=dict(depths=[1, 1, 1, 1], embed_dims=[16, 32, 32, 32], patch_sizes=[7, 2, 1, 1]),
                        rnn_type=rnn_type, grid_rounding=grid_rounding).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python values
        size = 224 if rnn_type == "lstm" else 112  # the reported case; smaller traces keep the others fast
        traced = torch.jit.trace(model, torch.randn(1, 3, size, size), check_trace=False)
        for shape in [(1, 3, 160, 192), (2, 3, 99, 301)]:
            x = torch.randn(*shape)
            expected, got = model(x)[0], traced(x)[0]
            assert got.shape == expected.shape
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        if grid_rounding == "ceil":  # ceil(ceil(n / 7) / 2)
            assert tuple(traced(torch.randn(1, 3, 160, 192))[0].shape) == (1, 32, 12, 14)
