"""Every registered scan backend against the reference: the op tests are parametrised over
``rv_plugins.ops.registry``, so a backend is tested by being registered (see docs/adding_a_scan_backend.md).

Covered per backend: forward and backward of ``linear_scan`` and ``mingru_scan`` (both directions,
bidirectional, ``h0``, both candidate activations, odd sizes), special values (±inf, NaN, huge decays) as
the reference gives them, ``h0`` wider than the data (a float32 state with float16 data is not rounded),
strided inputs. A toy backend registered here (a Python loop) shows that registering is all it takes.
"""
import math

import pytest
import torch

from rv_plugins.ops import linear_scan, linear_scan_reference, mingru_scan, mingru_scan_reference, registry
from rv_plugins.ops.adjoint import linear_scan_adjoint

pytestmark = pytest.mark.usefixtures("one_thread")


class LoopKernels:
    """A complete backend in a few lines: the forward as a Python loop, the backward from the shared adjoint."""

    @staticmethod
    def scan_forward(a, b, h0, reverse):
        h = torch.zeros_like(a[:, 0], dtype=torch.float64) if h0 is None else h0.double()
        out = torch.empty(a.shape, dtype=torch.float64)
        for t in (range(a.shape[1] - 1, -1, -1) if reverse else range(a.shape[1])):
            h = a[:, t].double() * h + b[:, t].double()
            out[:, t] = h
        return out

    @staticmethod
    def scan_backward(a, h, h0, grad_h, reverse):
        return linear_scan_adjoint(LoopKernels.scan_forward, a, h, h0, grad_h, reverse)


if "test-loop" not in registry.backend_names():
    registry.register_backend("test-loop", LoopKernels(), devices=("cpu",), priority=-1)


def _runnable(name):
    backend = registry.get_backend(name)
    if name == "triton":
        return pytest.param(name, marks=pytest.mark.triton)
    return name if backend.is_available() else pytest.param(name, marks=pytest.mark.skip(f"{name} unavailable here"))


BACKENDS = [_runnable(n) for n in registry.backend_names() if n not in ("reference", registry.TORCH_ALIAS)]


@pytest.fixture(params=BACKENDS)
def backend(request):
    if request.param == "triton":
        pytest.importorskip("triton")
    return request.param


def _scan_case(B, L, D, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    a = 0.3 + 0.6 * torch.rand(B, L, D, generator=g, dtype=torch.float64)
    a[..., ::3] *= -1
    return (a.to(dtype), torch.randn(B, L, D, generator=g, dtype=torch.float64).to(dtype),
            torch.randn(B, D, generator=g, dtype=torch.float64).to(dtype))


def _grads(fn, inputs):
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    (out * weight).sum().backward()
    return out.detach(), [t.grad for t in leaves]


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 7, 5), (3, 33, 9)])
@pytest.mark.parametrize("reverse", [False, True])
def test_linear_scan_forward_and_backward(backend, shape, reverse):
    a, b, h0 = _scan_case(*shape, seed=sum(shape))
    out, grads = _grads(lambda a_, b_, h_: linear_scan(a_, b_, h_, reverse, backend), (a, b, h0))
    ref, ref_grads = _grads(lambda a_, b_, h_: linear_scan_reference(a_, b_, h_, reverse), (a, b, h0))
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("bidirectional, reverse", [(False, False), (False, True), (True, False)])
@pytest.mark.parametrize("act", ["identity", "g"])
def test_mingru_scan_forward_and_backward(backend, bidirectional, reverse, act):
    g = torch.Generator().manual_seed(3)
    H, parts = 5, (4 if bidirectional else 2)
    proj = 2 * torch.randn(2, 11, parts * H, generator=g, dtype=torch.float64)
    h0 = torch.randn(2, (2 if bidirectional else 1) * H, generator=g, dtype=torch.float64)
    run = lambda p, h: mingru_scan(p, h, reverse, bidirectional, act, backend)  # noqa: E731
    out, grads = _grads(run, (proj, h0))
    ref, ref_grads = _grads(lambda p, h: mingru_scan_reference(p, h, reverse, bidirectional, act), (proj, h0))
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def _same_special_values(got, want):
    assert torch.equal(torch.isnan(got), torch.isnan(want)), (torch.isnan(got).sum(), torch.isnan(want).sum())
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    assert torch.equal(torch.sign(got[torch.isinf(want)]), torch.sign(want[torch.isinf(want)]))
    finite = torch.isfinite(want)
    torch.testing.assert_close(got[finite], want[finite], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, 1e30])
def test_special_values_as_the_reference(backend, reverse, value):
    if backend == "parallel" and not math.isfinite(value):
        pytest.skip("the export lowering is one static graph: it cannot rescan step by step where a chunk holds "
                    "inf/NaN, so those spread differently (finite huge values match; docs/deployment.md)")
    a, b, _ = _scan_case(2, 40, 3, seed=7, dtype=torch.float32)
    a[0, 20, 1] = value
    b[1, 5, 2] = value
    inputs = (a, b)
    out, grads = _grads(lambda a_, b_: linear_scan(a_, b_, None, reverse, backend), inputs)
    ref, ref_grads = _grads(lambda a_, b_: linear_scan_reference(a_, b_, None, reverse), inputs)
    _same_special_values(out, ref)
    for got, want in zip(grads, ref_grads):
        _same_special_values(got, want)


def test_wide_state_with_half_data_is_not_rounded(backend):
    """A float32 (or float64) h0 with float16 data enters the float32 state as it is (the reference keeps it)."""
    proj = torch.zeros(1, 3, 4, dtype=torch.float16)
    proj[..., :2] = -8.0                       # gate -> a close to 1: the state carries h0
    h0 = torch.full((1, 2), 1e5, dtype=torch.float32)   # beyond float16's range (65504)
    for run in (lambda: mingru_scan(proj, h0, backend=backend), lambda: mingru_scan_reference(proj, h0)):
        assert run().dtype == torch.float16
    got, want = mingru_scan(proj.float(), h0, backend=backend), mingru_scan_reference(proj.float(), h0)
    torch.testing.assert_close(got, want)
    a = torch.full((1, 3, 2), 0.5, dtype=torch.bfloat16)
    state = torch.full((1, 2), 3e38, dtype=torch.float64)
    torch.testing.assert_close(linear_scan(a, torch.zeros_like(a), state, backend=backend),
                               linear_scan_reference(a, torch.zeros_like(a), state))
    # the gradient for a wide h0 comes back in h0's dtype
    h0 = torch.randn(1, 2, dtype=torch.float64, requires_grad=True)
    mingru_scan(torch.randn(1, 3, 4, dtype=torch.float32), h0, backend=backend).sum().backward()
    assert h0.grad.dtype == torch.float64


def test_strided_inputs(backend):
    a, b, h0 = _scan_case(2, 9, 12, seed=11)
    a_s, b_s = a[:, ::2, ::3], b.transpose(0, 1).contiguous().transpose(0, 1)[:, ::2, ::3]
    torch.testing.assert_close(linear_scan(a_s, b_s, h0[:, ::3], True, backend),
                               linear_scan_reference(a_s, b_s, h0[:, ::3], True))
    proj = torch.randn(3, 10, 16, dtype=torch.float64)[:, 1:, :8]
    torch.testing.assert_close(mingru_scan(proj, backend=backend), mingru_scan_reference(proj))


def test_registered_names_are_listed_and_unknown_names_fail():
    assert {"reference", "chunked", "cpu-kernel", "triton", "torch", "test-loop"} <= set(registry.backend_names())
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        linear_scan(torch.rand(1, 2, 1), torch.rand(1, 2, 1), backend="nope")
    with pytest.raises(ValueError, match="registered already"):
        registry.register_backend("test-loop", LoopKernels())
    with pytest.raises(ValueError, match="alias"):
        registry.register_backend("torch", LoopKernels())
