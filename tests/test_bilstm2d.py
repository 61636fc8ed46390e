"""BiLSTM2D's building blocks: the batched LSTM/GRU/RNN cells of the fused step loop (pinned against
PyTorch's cells) and the bidirectional minGRU pieces (BiMinGRU) the fused minGRU path is made of.
Whole-layer agreement of the implementations is in tests/test_sequencer2d.py."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rv_plugins.layers.bilstm2d import (BiLSTM2D, gru_cell_batched, lstm_cell_batched,
                                        rnn_tanh_cell_batched)
from rv_plugins.layers.mingru import (BiMinGRU, MinGRU, bidirectional_in_proj, bidirectional_scan,
                                      can_scan_together)

pytestmark = pytest.mark.usefixtures("one_thread")

CELLS = {"lstm": (nn.LSTMCell, lstm_cell_batched), "gru": (nn.GRUCell, gru_cell_batched),
         "rnn": (nn.RNNCell, rnn_tanh_cell_batched)}


@pytest.mark.parametrize("rnn_type, fold_b_hh", [("lstm", False), ("lstm", True), ("gru", False),
                                                  ("rnn", False), ("rnn", True)])
def test_batched_cell_equals_torch_cell_per_direction(rnn_type, fold_b_hh):
    """K = 3 directions with their own weights in one call == each nn.*Cell on its own, values and
    gradients (to the input gates, the state and the recurrent weights). ``fold_b_hh``: b_hh added to
    the input gates up front (what BiLSTM2D does for LSTM/RNN; the GRU cannot: its reset gate scales b_hn)."""
    torch.manual_seed(0)
    ref_cls, batched = CELLS[rnn_type]
    K, N, C, D = 3, 5, 6, 4
    cells = [ref_cls(C, D) for _ in range(K)]
    x = torch.randn(K, N, C)
    h = torch.randn(K, N, D, requires_grad=True)
    c = torch.randn(K, N, D, requires_grad=True)
    state = (h, c) if rnn_type == "lstm" else h

    expected = [cell(x[k], (h[k], c[k]) if rnn_type == "lstm" else h[k]) for k, cell in enumerate(cells)]
    expected_h = torch.stack([e[0] if rnn_type == "lstm" else e for e in expected])

    x_gates = torch.stack([F.linear(x[k], cell.weight_ih, cell.bias_ih) for k, cell in enumerate(cells)])
    w_hh = torch.stack([cell.weight_hh for cell in cells]).transpose(1, 2)       # (K, D, G)
    b_hh = torch.stack([cell.bias_hh for cell in cells]).unsqueeze(1)             # (K, 1, G)
    if fold_b_hh:
        x_gates, b_hh = x_gates + b_hh, None
    out = batched(x_gates, state, w_hh, b_hh)
    got_h = out[0] if rnn_type == "lstm" else out
    torch.testing.assert_close(got_h, expected_h, atol=1e-6, rtol=1e-5)
    if rnn_type == "lstm":
        torch.testing.assert_close(out[1], torch.stack([e[1] for e in expected]), atol=1e-6, rtol=1e-5)

    weights = [p for cell in cells for p in cell.parameters()]
    probe = torch.randn_like(got_h)
    want = torch.autograd.grad((expected_h * probe).sum(), [h, *weights], allow_unused=True)
    got = torch.autograd.grad((got_h * probe).sum(), [h, *weights], allow_unused=True)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("rnn_type", sorted(CELLS))
def test_fused_step_loop_equals_the_torch_rnn_it_replaces(rnn_type):
    """The fused path's per-direction states equal nn.LSTM/GRU/RNN run on each column and row (H != W:
    two step-loop groups)."""
    torch.manual_seed(0)
    layer = BiLSTM2D(8, hidden_dim=3, rnn_type=rnn_type, impl="fused")
    x = torch.randn(2, 3, 5, 8)
    with torch.no_grad():
        got = layer.mix(x)
        cols, _ = layer.rnn_v(x.permute(1, 0, 2, 3).reshape(3, 2 * 5, 8))      # (H, B*W, 2D)
        rows, _ = layer.rnn_h(x.permute(2, 0, 1, 3).reshape(5, 2 * 3, 8))      # (W, B*H, 2D)
    torch.testing.assert_close(got[..., :6], cols.view(3, 2, 5, 6).permute(1, 0, 2, 3), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got[..., 6:], rows.view(5, 2, 3, 6).permute(1, 2, 0, 3), atol=1e-6, rtol=1e-5)


def test_bimingru_fused_pieces_equal_its_two_mingrus():
    """BiMinGRU.in_proj + scan (one GEMM, one bidirectional scan) == fwd(x), bwd(x) one by one, with
    gradients to both directions' in_proj; BiLSTM2D's fused minGRU path is made of these two calls."""
    torch.manual_seed(0)
    bi = BiMinGRU(6, 4)
    x = torch.randn(3, 7, 6)
    want = bi(x)
    weight, bias = bi.in_proj()
    assert weight.shape == (16, 6) and bias.shape == (16,)
    got = bi.scan(F.linear(x, weight, bias))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    params = list(bi.parameters())
    for a, b in zip(torch.autograd.grad(got.sum(), params), torch.autograd.grad(want.sum(), params)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert bi.fusable and sorted(bi.state_dict()) == ["bwd.in_proj.bias", "bwd.in_proj.weight",
                                                      "fwd.in_proj.bias", "fwd.in_proj.weight"]


def test_directions_that_cannot_share_a_scan_are_refused_and_run_one_by_one():
    torch.manual_seed(0)
    fwd, bwd = MinGRU(4, hidden_dim=3, proj_out=False), MinGRU(4, hidden_dim=3, proj_out=False, reverse=True)
    assert can_scan_together(fwd, bwd) and not can_scan_together(bwd, fwd)
    x = torch.randn(2, 5, 4)
    torch.testing.assert_close(bidirectional_scan(fwd, bwd, F.linear(x, *bidirectional_in_proj(fwd, bwd))),
                               torch.cat([fwd(x), bwd(x)], -1), atol=1e-6, rtol=1e-5)
    bwd.candidate_act = "g"
    assert not can_scan_together(fwd, bwd)
    with pytest.raises(ValueError, match="one by one"):
        bidirectional_in_proj(fwd, bwd)
    # BiLSTM2D's fused path falls back to one MinGRU call per direction and still matches native
    layer = BiLSTM2D(8, hidden_dim=3, rnn_type="mingru", impl="fused")
    layer.rnn_h.bwd.candidate_act = "g"
    x = torch.randn(1, 4, 5, 8)
    fused = layer.mix(x)
    layer.impl = "native"
    torch.testing.assert_close(fused, layer.mix(x))


def test_bilstm2d_mingru_state_dict_keys_are_unchanged():
    """Checkpoint compatibility: the minGRU mixer keeps its parameter names."""
    expected = ["fc.bias", "fc.weight"] + [f"{axis}.{d}.in_proj.{p}" for axis in ("rnn_v", "rnn_h")
                                           for d in ("fwd", "bwd") for p in ("weight", "bias")]
    assert sorted(BiLSTM2D(8, rnn_type="mingru").state_dict()) == sorted(expected)
