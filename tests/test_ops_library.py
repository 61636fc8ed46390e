"""rv_plugins.ops as torch ops: custom-op registration, torch.compile without graph breaks, FLOP counting
through the op, double backward on every backend, and the scan's edge cases (the reference is the truth)."""

import pytest
import torch

from rv_plugins.ops import backend_name, linear_scan, mingru_scan
from rv_plugins.utils.flops import SCAN_KEY, count_flops

pytestmark = pytest.mark.usefixtures("one_thread")

# (label, backend argument, env: force the chunked fallback)
BACKENDS = [("cpu-kernel", "torch", False), ("chunked", "torch", True),
            pytest.param(("triton", "triton", False), marks=pytest.mark.triton)]


@pytest.fixture(params=BACKENDS, ids=lambda b: b[0])
def backend(request, monkeypatch):
    label, name, chunked = request.param
    if label == "triton":
        pytest.importorskip("triton")
    if chunked:
        monkeypatch.setenv("RV_SCAN_DISABLE_CPU_KERNEL", "1")
    expected = "triton" if label == "triton" else f"torch[{label}]"
    assert backend_name("cpu", name) == expected
    return name


def _scan_inputs(B=2, L=5, D=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = (0.4 + 0.5 * torch.rand(B, L, D, generator=g, dtype=torch.float64))
    a[..., ::2] *= -1
    return a, torch.randn(B, L, D, generator=g, dtype=torch.float64), torch.randn(B, D, generator=g, dtype=torch.float64)


# ----------------------------------------------------------------------------- registration
def test_ops_are_registered_with_fake_and_autograd():
    a, b, h0 = _scan_inputs()
    torch.library.opcheck(torch.ops.rv_plugins.linear_scan.default, (a.float(), b.float(), h0.float(), True, "torch"))
    proj = torch.randn(2, 6, 8)
    torch.library.opcheck(torch.ops.rv_plugins.mingru_scan.default, (proj, torch.randn(2, 4), False, True, "g", "torch"))
    torch.library.opcheck(torch.ops.rv_plugins.mingru_scan.default, (proj, None, True, False, "identity", "torch"))


def test_torch_compile_has_no_graph_breaks():
    torch._dynamo.reset()

    def block(x, proj, h0):
        h = linear_scan(torch.sigmoid(x), x, h0, reverse=True)
        y = mingru_scan(proj, bidirectional=True, candidate_act="g")
        return h.sum(-1, keepdim=True) * y

    x, proj, h0 = torch.randn(2, 9, 4), torch.randn(2, 9, 12), torch.randn(2, 4)
    explanation = torch._dynamo.explain(block)(x, proj, h0)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1, explanation.break_reasons
    # and the compiled graph (fake tensors, registered autograd) gives the eager values and gradients
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    leaves = [t.clone().requires_grad_(True) for t in (x, proj, h0)]
    compiled(*leaves).square().sum().backward()
    eager = [t.clone().requires_grad_(True) for t in (x, proj, h0)]
    block(*eager).square().sum().backward()
    for p, q in zip(leaves, eager):
        torch.testing.assert_close(p.grad, q.grad)
    torch._dynamo.reset()


# ----------------------------------------------------------------------------- FLOP counter
def test_flop_counter_counts_the_ops():
    class Two(torch.nn.Module):
        def forward(self, a, b, proj):
            return linear_scan(a, b).sum() + mingru_scan(proj, bidirectional=True).sum()

    a, b, _ = _scan_inputs(2, 7, 3)
    proj = torch.randn(2, 7, 4 * 5)
    result = count_flops(Two(), (a.float(), b.float(), proj))
    assert result["by_op"][SCAN_KEY] == 2 * 7 * 3 + 2 * 7 * 10  # B*L*D + B*L*2H multiply-adds
    assert result["total"] == result["by_module"]["Global"] == result["by_op"][SCAN_KEY]


# ----------------------------------------------------------------------------- double backward
def _slow_on_triton(backend):
    if backend == "triton":  # gradgradcheck is ~100 interpreted launches; the LCP-shaped tests cover Triton
        pytest.skip("gradgradcheck under TRITON_INTERPRET takes minutes; see test_gradgradcheck_triton (slow)")


def test_double_backward_linear_scan(backend):
    _slow_on_triton(backend)
    a, b, h0 = (t.requires_grad_(True) for t in _scan_inputs(2, 6, 3))
    for reverse in (False, True):
        assert torch.autograd.gradgradcheck(lambda a, b, h0: linear_scan(a, b, h0, reverse, backend), (a, b, h0))


def test_double_backward_mingru_scan(backend):
    _slow_on_triton(backend)
    proj = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)  # (B, H) one-way, (B, 2H) bidirectional
    assert torch.autograd.gradgradcheck(lambda p, h: mingru_scan(p, h, candidate_act="g", backend=backend), (proj, h0))
    assert torch.autograd.gradgradcheck(lambda p, h: mingru_scan(p, h, bidirectional=True, backend=backend), (proj, h0))


@pytest.mark.slow
@pytest.mark.triton
def test_gradgradcheck_triton():
    pytest.importorskip("triton")
    a, b, h0 = (t.requires_grad_(True) for t in _scan_inputs(1, 4, 2))
    assert torch.autograd.gradgradcheck(lambda a, b, h0: linear_scan(a, b, h0, True, "triton"), (a, b, h0))
    proj = torch.randn(1, 4, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda p: mingru_scan(p, bidirectional=True, backend="triton"), (proj,))


def test_double_backward_reference():
    a, b, h0 = (t.requires_grad_(True) for t in _scan_inputs(2, 4, 2))
    assert torch.autograd.gradgradcheck(lambda a, b, h0: linear_scan(a, b, h0, True, "reference"), (a, b, h0))


# ----------------------------------------------------------------------------- edge cases (issue 15)
def _same(x, y):
    """Equal, NaN where NaN, same infinities."""
    torch.testing.assert_close(x, y, equal_nan=True, atol=0, rtol=1e-6)


@pytest.mark.parametrize("reverse", [False, True])
def test_infinite_decay_gives_infinity_not_nan(backend, reverse):
    a = torch.full((1, 7, 2), 0.5)
    a[0, 3, 0], a[0, 4, 1] = float("inf"), -float("inf")
    b = torch.ones(1, 7, 2)
    expected = linear_scan(a, b, reverse=reverse, backend="reference")
    assert torch.isinf(expected).any() and not torch.isnan(expected).any()
    _same(linear_scan(a, b, reverse=reverse, backend=backend), expected)


@pytest.mark.parametrize("reverse", [False, True])
def test_huge_decay_on_zero_state_stays_zero(backend, reverse):
    a, b = torch.full((2, 37, 3), 1e30), torch.zeros(2, 37, 3)
    out = linear_scan(a, b, reverse=reverse, backend=backend)
    assert torch.equal(out, torch.zeros_like(out))
    b[:, 20 if not reverse else 16] = 1.0  # a non-zero input overflows to inf after it, as step by step
    _same(linear_scan(a, b, reverse=reverse, backend=backend), linear_scan(a, b, reverse=reverse, backend="reference"))


def test_empty_channels_and_batch(backend):
    for shape in [(2, 5, 0), (0, 5, 3)]:
        a = torch.rand(shape, requires_grad=True)
        h = linear_scan(a, torch.rand(shape), backend=backend)
        assert h.shape == shape
        h.sum().backward()
        assert a.grad.shape == shape
        p = torch.rand(shape[0], 5, 2 * shape[2], requires_grad=True)
        assert mingru_scan(p, backend=backend).shape == shape


@pytest.mark.parametrize("value", [1, 0, "yes", None, torch.tensor(True)])
def test_reverse_must_be_a_bool(value):
    a = torch.rand(1, 3, 2)
    with pytest.raises(TypeError, match="reverse must be a bool"):
        linear_scan(a, a, reverse=value)
    with pytest.raises(TypeError, match="must be bools"):
        mingru_scan(torch.rand(1, 3, 4), reverse=value)


def test_lcp_shaped_second_derivative_matches_reference(backend):
    """The C-RBP Lipschitz penalty differentiates a vector-Jacobian product (create_graph=True); through
    a transition built on the scan it must get the reference's gradient (it had the wrong sign before)."""
    a0, b, h_prev0 = _scan_inputs(2, 8, 3)

    def lcp_grad(name):
        a, h_prev = a0.clone().requires_grad_(True), h_prev0.clone().requires_grad_(True)
        h = linear_scan(torch.tanh(a), b, h_prev, backend=name)
        colsum, = torch.autograd.grad(h, h_prev, torch.ones_like(h), create_graph=True)
        (colsum - 0.9).clamp(min=0).square().sum().backward()
        return a.grad

    torch.testing.assert_close(lcp_grad(backend), lcp_grad("reference"))


def test_mingru_second_derivative_matches_reference(backend):
    proj0 = torch.randn(2, 9, 12, dtype=torch.float64)

    def second(name):
        proj = proj0.clone().requires_grad_(True)
        h = mingru_scan(proj, bidirectional=True, candidate_act="g", backend=name)
        grad, = torch.autograd.grad(h.square().sum(), proj, create_graph=True)
        grad.sin().sum().backward()
        return proj.grad

    torch.testing.assert_close(second(backend), second("reference"))
