"""rv_plugins.ops.linear: oneDNN inference GEMMs on the CPU equal F.linear, and every other case takes F.linear."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rv_plugins.layers.mlp import Mlp
from rv_plugins.ops import linear as linear_mod
from rv_plugins.ops.linear import cpu_linear, linear, linear_module, set_cpu_linear

pytestmark = pytest.mark.skipif(not linear_mod.onednn_available(), reason="this torch build has no oneDNN linear op")

EAGER = {None: lambda y: y, "gelu": F.gelu, "gelu_tanh": lambda y: F.gelu(y, approximate="tanh")}


@pytest.fixture
def onednn_calls(monkeypatch):
    """Counts the oneDNN GEMMs :func:`linear` runs (the real op still runs)."""
    calls = []
    real = linear_mod._onednn_linear

    def spy(*args):
        calls.append(args[0].shape)
        return real(*args)

    monkeypatch.setattr(linear_mod, "_onednn_linear", spy)
    set_cpu_linear("onednn")
    yield calls
    set_cpu_linear("onednn")


@pytest.mark.parametrize("activation", [None, "gelu", "gelu_tanh"])
@pytest.mark.parametrize("shape", [(7, 24), (2, 5, 24), (2, 3, 4, 24)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_onednn_path_equals_f_linear(onednn_calls, activation, shape, with_bias):
    torch.manual_seed(0)
    x, w = torch.randn(shape), torch.randn(40, 24)
    b = torch.randn(40) if with_bias else None
    with torch.no_grad():
        out = linear(x, w, b, activation=activation)
    assert len(onednn_calls) == 1 and cpu_linear() == "onednn"
    assert out.shape == (*shape[:-1], 40)
    torch.testing.assert_close(out, EAGER[activation](F.linear(x, w, b)), atol=1e-5, rtol=1e-5)


def test_non_contiguous_input_and_weight(onednn_calls):
    torch.manual_seed(0)
    x = torch.randn(6, 24, 5).transpose(1, 2)    # (6, 5, 24), last dim strided
    w = torch.randn(24, 40).t()                    # (40, 24), transposed
    with torch.no_grad():
        out = linear(x, w)
    assert len(onednn_calls) == 1
    torch.testing.assert_close(out, F.linear(x, w), atol=1e-5, rtol=1e-5)


def test_bfloat16(onednn_calls):
    torch.manual_seed(0)
    x, w = torch.randn(9, 32, dtype=torch.bfloat16), torch.randn(16, 32, dtype=torch.bfloat16)
    with torch.inference_mode():
        out = linear(x, w, activation="gelu")
    assert len(onednn_calls) == 1 and out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), F.gelu(F.linear(x, w)).float(), atol=2e-2, rtol=2e-2)


def test_autograd_mixed_dtypes_autocast_and_empty_take_f_linear(onednn_calls):
    torch.manual_seed(0)
    x, w, b = torch.randn(4, 8), torch.randn(6, 8, requires_grad=True), torch.randn(6)
    y = linear(x, w, b, activation="gelu")                 # grad enabled
    y.sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    with torch.no_grad():
        linear(x.double(), w.double())                      # float64
        with pytest.raises(RuntimeError, match="dtype"):  # dtypes differ: F.linear's own error
            linear(x.half(), w)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert linear(x, w).dtype == torch.bfloat16         # autocast's policy, as F.linear
    with torch.no_grad():
        assert linear(x[:0], w).shape == (0, 6)
    assert onednn_calls == []


def test_flop_counter_and_aten_choice_see_aten_ops(onednn_calls):
    x, w = torch.randn(10, 8), torch.randn(6, 8)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        linear(x, w)
    assert counter.get_total_flops() == 2 * 10 * 8 * 6 and onednn_calls == []
    set_cpu_linear("aten")
    assert cpu_linear() == "aten"
    with torch.no_grad():
        linear(x, w)
    assert onednn_calls == []
    with pytest.raises(ValueError, match="'onednn', 'aten'"):
        set_cpu_linear("mkl")
    with pytest.raises(ValueError, match="activation"):
        linear(x, w, activation="relu")


def test_environment_switch(monkeypatch):
    monkeypatch.setenv("RV_CPU_LINEAR", "aten")
    assert linear_mod._initial_choice() == "aten"
    monkeypatch.setenv("RV_CPU_LINEAR", "fast")
    with pytest.raises(ValueError, match="RV_CPU_LINEAR='fast'"):
        linear_mod._initial_choice()


def test_mlp_fuses_gelu_without_hooks_and_keeps_module_hooks(onednn_calls):
    torch.manual_seed(0)
    mlp = Mlp(16, 4.0).eval()
    x = torch.randn(2, 5, 16)
    expected = mlp.fc2(mlp.act(mlp.fc1(x))).detach()
    with torch.no_grad():
        out = mlp(x)
    assert len(onednn_calls) == 2                          # fc1 + GELU in one oneDNN call, then fc2
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    seen = []
    mlp.fc1.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), expected, atol=1e-5, rtol=1e-5)
    assert seen == [(2, 5, 64)] and len(onednn_calls) == 2  # the module path ran, the hook saw fc1
    mlp.act = nn.ReLU()
    with torch.no_grad():
        mlp(x)
    assert len(onednn_calls) == 2


def test_linear_module_keeps_hooks_and_other_modules(onednn_calls):
    lin = nn.Linear(8, 4)
    x = torch.randn(3, 8)
    with torch.no_grad():
        torch.testing.assert_close(linear_module(lin, x), lin(x), atol=1e-6, rtol=1e-6)
        assert torch.equal(linear_module(nn.Identity(), x), x)
    assert len(onednn_calls) == 1
    lin.register_forward_pre_hook(lambda m, i: None)
    with torch.no_grad():
        linear_module(lin, x)
    assert len(onednn_calls) == 1


def test_visiongru_inference_equal_with_either_gemm(onednn_calls):
    from rv_plugins.backbones.visiongru import VisionGRU
    torch.manual_seed(0)
    model = VisionGRU(dict(embed_dims=[8, 16, 32, 64], depths=[1, 1, 1, 1]), num_classes=5, preset="paper",
                      img_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fast = model.forward_head(model(x))
        assert len(onednn_calls) > 0
        set_cpu_linear("aten")
        plain = model.forward_head(model(x))
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)


def _bias_cases():
    """(name, x, weight, bias): every shape, stride and type F.linear takes or refuses that the oneDNN GEMM
    would read differently (a 0-d, (1, out), length-1 or strided bias; mismatched features; wrong ranks)."""
    g = torch.Generator().manual_seed(0)

    def r(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=g).to(dtype)

    x, w = r(5, 8), r(6, 8)
    return [
        ("0-d bias", x, w, r(())), ("(1, out) bias", x, w, r(1, 6)), ("(rows, out) bias", x, w, r(5, 6)),
        ("length-1 bias", x, w, r(1)), ("expanded bias", x, w, r(1).expand(6)), ("strided bias", x, w, r(12)[::2]),
        ("bias at an offset", x, w, r(12)[6:]), ("bias too long", x, w, r(7)), ("(out, 1) bias", x, w, r(6, 1)),
        ("3-d x, (1, 1, out) bias", r(2, 5, 8), w, r(1, 1, 6)), ("3-d x, (rows, out) bias", r(2, 5, 8), w, r(5, 6)),
        ("in-features mismatch", r(5, 9), w, None), ("in-features mismatch, bias", r(5, 9), w, r(6)),
        ("1-d weight", x, r(8), None), ("1-d weight, 0-d bias", x, r(8), r(())), ("3-d weight", x, r(2, 6, 8), None),
        ("0-d x", r(()), w, None), ("1-d x", r(8), w, r(6)), ("no in-features", r(5, 0), r(6, 0), r(6)),
        ("no out-features", x, r(0, 8), r(0)), ("float64 bias", x, w, r(6, dtype=torch.float64)),
        ("bfloat16 x, float32 weight", x.bfloat16(), w, None), ("float32 x, bfloat16 weight", x, w.bfloat16(), None),
        ("bfloat16 x and weight, float32 bias", x.bfloat16(), w.bfloat16(), r(6)),
        ("integer bias", x, w, torch.ones(6, dtype=torch.int64)), ("list bias", x, w, [1.0] * 6),
        ("list x", [[1.0] * 8], w, None), ("sparse x", x.to_sparse(), w, None), ("sparse weight", x, w.to_sparse(), None),
        ("expanded weight", x, r(1, 8).expand(6, 8), None), ("strided weight", x, r(6, 16)[:, ::2], None),
        ("strided x", r(10, 8)[::2], w, r(6)), ("inf and nan in x", torch.tensor([[float("inf"), float("nan")] * 4]), w, r(6)),
    ]


@pytest.mark.parametrize("activation", [None, "gelu"])
@pytest.mark.parametrize("case", _bias_cases(), ids=lambda c: c[0])
def test_same_answers_and_errors_as_f_linear(onednn_calls, case, activation):
    """Without autograd on the CPU, linear() either equals F.linear (+ the activation) or raises F.linear's own
    error, whatever the shapes, strides and types: oneDNN runs only where it reads the operands as F.linear does."""
    _, x, w, b = case

    def outcome(fn):
        try:
            with torch.no_grad():
                return fn(x, w, b)
        except Exception as error:  # noqa: BLE001 - the error itself is compared
            return error

    ours = outcome(lambda *a: linear(*a, activation=activation))
    expected = outcome(lambda *a: EAGER[activation](F.linear(*a)))
    if isinstance(expected, Exception):
        assert type(ours) is type(expected) and str(ours) == str(expected)
    else:
        assert not isinstance(ours, Exception), ours
        assert ours.shape == expected.shape and ours.dtype == expected.dtype and ours.layout == expected.layout
        torch.testing.assert_close(ours.to_dense(), expected.to_dense(), atol=1e-5, rtol=1e-5, equal_nan=True)


def test_onednn_still_runs_for_a_unit_stride_bias_and_strided_operands(onednn_calls):
    """The checks above must not turn the fast path off for the ordinary cases (dense or strided x/weight)."""
    x, w, b = torch.randn(10, 8)[::2], torch.randn(6, 16)[:, ::2], torch.randn(12)[6:]
    with torch.no_grad():
        torch.testing.assert_close(linear(x, w, b), F.linear(x, w, b), atol=1e-5, rtol=1e-5)
    assert len(onednn_calls) == 1
