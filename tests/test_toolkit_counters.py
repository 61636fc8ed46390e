"""The toolkits' FLOP counters (mmengine's analyzers, fvcore's) count our ops with rv_plugins.utils.flops's numbers.

Both counters trace the model with ``torch.jit`` and count graph nodes through per-kind handles; the adapters add
ours (``rv_plugins.utils.jit_flops``). The whole-model checks use the counters' public entry points, as a user
would; they differ from ``count_flops`` only by the counters' own estimates for normalisation layers.
"""
import pytest
import torch
from torch import nn

from rv_plugins.utils.flops import count_flops
from rv_plugins.utils.jit_flops import RNN_KINDS, SCAN_KINDS, flop_handles

pytestmark = pytest.mark.usefixtures("one_thread")
mmengine_analysis = pytest.importorskip("mmengine.analysis")

NORM_OPS = ("layer_norm", "batch_norm", "group_norm", "instance_norm", "upsample_nearest2d",
            "upsample_bilinear2d", "adaptive_avg_pool2d")


@pytest.fixture(scope="module")
def mmengine_counters():
    from rv_plugins.openmmlab.counters import register_mmengine_counters
    assert register_mmengine_counters()
    return mmengine_analysis


def _mmengine_macs(model, *inputs, grad=False):
    """mmengine's FlopAnalyzer: (total without its norm/pool/upsample estimates, by-operator counts, unsupported)."""
    analyzer = mmengine_analysis.FlopAnalyzer(model, inputs)
    analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.set_grad_enabled(grad):
        by_op = analyzer.by_operator()
    return sum(v for k, v in by_op.items() if k not in NORM_OPS), by_op, analyzer.unsupported_ops()


class _Call(nn.Module):
    """A module around a function (the counters trace modules)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


# ----------------------------------------------------------------------------- handles, one op at a time
@pytest.mark.parametrize("kind, layers, bidirectional, batch_first", [
    ("LSTM", 1, False, False), ("LSTM", 2, True, True), ("GRU", 1, True, False), ("GRU", 2, False, True),
    ("RNN", 1, True, False), ("RNN_relu", 2, True, False)])
def test_rnn_kernels_count_every_weight_matrix_per_token(mmengine_counters, kind, layers, bidirectional, batch_first):
    T, N, I, H = 5, 3, 6, 4
    extra = dict(nonlinearity="relu") if kind == "RNN_relu" else {}
    rnn = getattr(nn, kind.split("_")[0])(I, H, num_layers=layers, bidirectional=bidirectional,
                                          batch_first=batch_first, **extra)
    gates = {"LSTM": 4, "GRU": 3}.get(kind.split("_")[0], 1)
    dirs = 2 if bidirectional else 1
    per_token = sum(dirs * gates * H * ((I if layer == 0 else dirs * H) + H) for layer in range(layers))
    x = torch.randn(N, T, I) if batch_first else torch.randn(T, N, I)
    for grad in (False, True):
        total, by_op, unsupported = _mmengine_macs(rnn, x, grad=grad)
        assert total == T * N * per_token, (kind, grad, by_op)
        assert not any(k in unsupported for k in RNN_KINDS)
    assert count_flops(rnn, x)["total"] == T * N * per_token  # the same formula as our own counter


def test_packed_sequences_count_their_real_tokens(mmengine_counters):
    lengths = torch.tensor([5, 3, 2])

    class Packed(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(6, 4)

        def forward(self, x):
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths)
            return nn.utils.rnn.pad_packed_sequence(self.lstm(packed)[0])[0]

    total, _, _ = _mmengine_macs(Packed(), torch.randn(5, 3, 6))
    assert total == int(lengths.sum()) * 4 * 4 * (6 + 4)


def test_scan_ops_count_one_multiply_add_per_state_element(mmengine_counters):
    B, L, D, H = 2, 7, 3, 5

    def scans(a, b, proj):
        h = torch.ops.rv_plugins.linear_scan(a, b, None, False, "torch")
        g = torch.ops.rv_plugins.mingru_scan(proj, None, False, True, "identity", "torch")
        return h.sum() + g.sum()

    a, b, proj = torch.rand(B, L, D), torch.randn(B, L, D), torch.randn(B, L, 4 * H)
    total, by_op, unsupported = _mmengine_macs(_Call(scans), a, b, proj)
    assert by_op["linear_scan"] == B * L * D and by_op["mingru_scan"] == B * L * 2 * H
    assert total == B * L * D + B * L * 2 * H == count_flops(_Call(scans), (a, b, proj))["total"]
    assert not any(k in unsupported for k in SCAN_KINDS)
    acts = mmengine_analysis.ActivationAnalyzer(_Call(scans), (a, b, proj)).unsupported_ops_warnings(False)
    assert acts.by_operator()["mingru_scan"] == B * L * 2 * H


def test_baddbmm_counts_as_bmm(mmengine_counters):
    x, b1, b2 = torch.randn(4, 3, 5), torch.randn(4, 3, 2), torch.randn(4, 2, 5)
    total, by_op, _ = _mmengine_macs(_Call(torch.baddbmm), x, b1, b2)
    assert by_op["baddbmm"] == total == 4 * 3 * 2 * 5


def test_registration_keeps_the_counters_own_handles_and_is_idempotent(mmengine_counters):
    from mmengine.analysis import complexity_analysis as ca

    from rv_plugins.utils.jit_flops import register_handles
    table = {"aten::lstm": "theirs"}
    register_handles(table)
    register_handles(table)
    assert table["aten::lstm"] == "theirs" and set(table) == set(flop_handles())
    assert set(flop_handles()) <= set(ca._DEFAULT_SUPPORTED_FLOP_OPS)
    assert set(flop_handles()) <= set(ca._DEFAULT_SUPPORTED_ACT_OPS)


# ----------------------------------------------------------------------------- whole models, as a user counts them
NAMES = {"visiongru-ti": "visiongru-ti_8xb128_in1k", "sequencer2d-s": "sequencer2d-s_8xb256_in1k"}


def _within_one_percent(name, grad, size, **backbone):
    """mmpretrain's classifier of our model index, counted by get_model_complexity_info and by count_flops."""
    pytest.importorskip("mmpretrain")
    import rv_plugins.mmpretrain  # noqa: F401
    from mmpretrain import get_model
    model = get_model(NAMES[name], backbone=backbone)
    ours = count_flops(model, (1, 3, size, size))["total"]
    with torch.set_grad_enabled(grad):
        info = mmengine_analysis.get_model_complexity_info(model, input_shape=(3, size, size), show_table=False,
                                                           show_arch=False)
    assert abs(info["flops"] / ours - 1) < 0.01, (name, backbone, info["flops"], ours)


@pytest.mark.parametrize("name", ["visiongru-ti", "sequencer2d-s"])
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_get_model_complexity_info_counts_our_models_like_count_flops(mmengine_counters, name, grad):
    _within_one_percent(name, grad, 64)


@pytest.mark.slow
@pytest.mark.parametrize("name, backbone", [("visiongru-ti", {}), ("visiongru-ti", dict(preset="paper")),
                                            ("sequencer2d-s", {}), ("sequencer2d-s", dict(rnn_type="gru")),
                                            ("sequencer2d-s", dict(rnn_type="rnn")),
                                            ("sequencer2d-s", dict(rnn_type="mingru"))])
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_get_model_complexity_info_at_224(mmengine_counters, name, backbone, grad):
    _within_one_percent(name, grad, 224, **backbone)


@pytest.mark.parametrize("config, channels, size", [("upernet_visiongru_ti_synthetic.py", 3, 32),
                                                    ("fpn_sequencer2d_s_synthetic.py", 3, 64),
                                                    ("pathfinder/hgru_crbp_pathfinder32.py", 1, 32)])
def test_segmentors_count_like_count_flops(config, channels, size):
    """mmseg's segmentors through the call docs/tooling.md gives for mmseg's broken get_flops tool."""
    pytest.importorskip("mmseg")
    import os

    import rv_plugins.mmseg  # noqa: F401
    from mmseg.apis import init_model
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    model = init_model(os.path.join(repo, "configs", config), device="cpu")
    x = torch.rand(1, channels, size, size)
    ours = count_flops(model, x)["total"]
    info = mmengine_analysis.get_model_complexity_info(model, inputs=(x,), show_table=False, show_arch=False)
    assert abs(info["flops"] / ours - 1) < 0.01, (config, info["flops"], ours)
