"""hGRU cell, Gabor input layer and the BPTT / RBP / LCP fixed-point solver."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from rv_plugins.layers.hgru import GaborConv2d, HGRUCell, gabor_bank
from rv_plugins.solvers.fixed_point import MODES, FixedPointSolver, lipschitz_penalty


pytestmark = pytest.mark.usefixtures("one_thread")

DT = torch.float64


class ContractiveConvCell(torch.nn.Module):
    """``h -> tanh(W * h + x)``, a contraction: ``W`` (3x3, 'same') is rescaled so that the
    convolution's operator norm on ``size`` maps, measured by power iteration, is ``target`` < 1."""

    def __init__(self, channels: int = 3, target: float = 0.6, size=(5, 6)):
        super().__init__()
        weight = torch.randn(channels, channels, 3, 3, dtype=DT)
        probe = torch.randn(1, channels, *size, dtype=DT)
        for _ in range(30):  # power iteration on conv^T conv
            probe = F.conv_transpose2d(F.conv2d(probe, weight, padding=1), weight, padding=1)
            probe = probe / probe.norm()
        norm = F.conv2d(probe, weight, padding=1).norm()
        self.weight = torch.nn.Parameter(weight * target / norm)

    def forward(self, x, h):
        return torch.tanh(F.conv2d(h, self.weight, padding=1) + x)


def _flat_grads(loss, tensors):
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, tensors)])


def _task_loss(h, target):
    return ((h - target) ** 2).sum()


# --------------------------------------------------------------------------- RBP vs BPTT

@pytest.mark.parametrize("mode", ["rbp", "crbp"])
def test_rbp_gradient_matches_long_bptt(mode):
    """Tolerance: cosine >= 0.99 (asked) and relative error <= 1e-6 (what float64 reaches)."""
    torch.manual_seed(0)
    cell = ContractiveConvCell()
    x = torch.randn(2, 3, 5, 6, dtype=DT, requires_grad=True)
    target = torch.randn(2, 3, 5, 6, dtype=DT)
    h0 = torch.zeros_like(x)
    reference = FixedPointSolver("bptt", steps=60)
    h_ref, _ = reference(cell, x, h0)
    g_ref = _flat_grads(_task_loss(h_ref, target), [cell.weight, x])
    solver = FixedPointSolver(mode, steps=60, neumann_terms=200, lcp_lambda=0.99)
    h, info = solver(cell, x, h0)
    g = _flat_grads(_task_loss(h, target), [cell.weight, x])
    cosine = F.cosine_similarity(g, g_ref, dim=0)
    assert cosine >= 0.99
    assert (g - g_ref).norm() / g_ref.norm() <= 1e-6
    assert info.fixed_point_residual < 1e-10
    assert 0 < info.neumann_terms < 200 and info.neumann_residual < 1e-8


def test_neumann_series_is_what_makes_rbp_exact():
    """Without Neumann terms (one-step gradient) RBP is measurably off: the series does work."""
    torch.manual_seed(1)
    cell = ContractiveConvCell()
    x = torch.randn(2, 3, 5, 6, dtype=DT, requires_grad=True)
    target = torch.randn(2, 3, 5, 6, dtype=DT)
    h_ref, _ = FixedPointSolver("bptt", steps=60)(cell, x, torch.zeros_like(x))
    g_ref = _flat_grads(_task_loss(h_ref, target), [cell.weight, x])
    h, info = FixedPointSolver("rbp", steps=60, neumann_terms=0)(cell, x, torch.zeros_like(x))
    g = _flat_grads(_task_loss(h, target), [cell.weight, x])
    assert info.neumann_terms == 0 and info.neumann_residual > 1e-3
    assert (g - g_ref).norm() / g_ref.norm() > 1e-2


def test_rbp_reaches_parameters_and_input_with_plain_backward():
    torch.manual_seed(2)
    cell = ContractiveConvCell()
    x = torch.randn(1, 3, 5, 6, dtype=DT, requires_grad=True)
    h, info = FixedPointSolver("crbp", steps=10)(cell, x, torch.zeros_like(x))
    assert info.neumann_terms is None  # filled by the backward
    (h.sum() + info.weighted_lcp).backward()
    assert cell.weight.grad is not None and cell.weight.grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert info.neumann_terms is not None and info.neumann_residual is not None


def test_neumann_stops_when_terms_grow():
    """An expanding map (J = 1.5 I): the series diverges, so the backward stops at once."""
    x = torch.zeros(4, dtype=DT, requires_grad=True)
    h, info = FixedPointSolver("rbp", steps=3, neumann_terms=10)(lambda x, h: 1.5 * h + x,
                                                                  x, torch.ones(4, dtype=DT))
    h.sum().backward()
    assert info.neumann_terms == 0 and info.neumann_residual == pytest.approx(1.5)


def test_neumann_terms_default_to_the_steps_of_the_call():
    torch.manual_seed(3)
    cell = ContractiveConvCell()
    x = torch.randn(1, 3, 5, 6, dtype=DT, requires_grad=True)
    solver = FixedPointSolver("rbp", steps=50, neumann_tol=0.0)
    h, info = solver(cell, x, torch.zeros_like(x), steps=3)
    h.sum().backward()
    assert info.steps == 3 and info.neumann_terms == 3


@pytest.mark.parametrize("mode", MODES)
def test_empty_batch_runs_in_every_mode(mode):
    """An empty batch (e.g. an image without ROIs in a mask head) must not fail."""
    weight = torch.nn.Parameter(0.5 * torch.eye(3))
    x = torch.zeros(0, 3, requires_grad=True)
    h, info = FixedPointSolver(mode, steps=4, lcp_reduction="mean")(
        lambda x, h: torch.tanh(h @ weight + x), x, torch.zeros_like(x))
    loss = h.sum() + (info.weighted_lcp if info.weighted_lcp is not None else 0)
    loss.backward()
    assert h.shape == (0, 3) and weight.grad is not None and info.fixed_point_residual == 0


# --------------------------------------------------------------------------- LCP

def _tiny_hgru(seed=0):
    torch.manual_seed(seed)
    return HGRUCell(2, kernel_size=3, norm="none").double()


def test_lcp_equals_penalty_of_explicit_jacobian_column_sums():
    cell = _tiny_hgru()
    x = torch.rand(1, 2, 3, 4, dtype=DT)
    h_prev = torch.rand_like(x).requires_grad_(True)
    h_next = cell(x, h_prev)
    lam = 0.2
    penalty, colsum = lipschitz_penalty(h_next, h_prev, lam)
    jac = torch.autograd.functional.jacobian(lambda h: cell(x, h), h_prev.detach())
    explicit = jac.reshape(h_next.numel(), h_prev.numel()).sum(0).reshape(h_prev.shape)
    torch.testing.assert_close(colsum, explicit)
    torch.testing.assert_close(penalty, torch.relu(explicit - lam).pow(2).sum())
    assert penalty > 0  # lam is low enough for the penalty to be active


def _lcp_of(cell, solver, x, w_inh, h0):
    def step(x, h):
        return functional_call(cell, {"w_inh": w_inh}, (x, h))
    return solver(step, x, h0)[1].lcp


def test_lcp_gradcheck_through_the_bptt_trajectory():
    """C-BPTT: the LCP's gradient w.r.t. the drive and a kernel is exact through all steps."""
    cell = _tiny_hgru(3)
    x = torch.rand(1, 2, 3, 3, dtype=DT, requires_grad=True)
    w_inh = cell.w_inh.detach().clone().requires_grad_(True)
    solver = FixedPointSolver("cbptt", steps=3, lcp_lambda=0.3)
    lcp = lambda x, w: _lcp_of(cell, solver, x, w, torch.zeros_like(x))  # noqa: E731
    assert lcp(x, w_inh) > 0
    assert torch.autograd.gradcheck(lcp, (x, w_inh), eps=1e-6, atol=1e-6)


def test_crbp_lcp_gradient_is_exact_at_the_detached_state():
    """C-RBP: the LCP is taken at the detached state h* (constant memory, as the authors), so
    its gradient is exact for a fixed h*: gradcheck one step, then match the solver to it."""
    cell = _tiny_hgru(3)
    x = torch.rand(1, 2, 3, 3, dtype=DT, requires_grad=True)
    w_inh = cell.w_inh.detach().clone().requires_grad_(True)

    def one_step_lcp(x, w, h_star):
        h_star = h_star.detach().requires_grad_(True)
        h_next = functional_call(cell, {"w_inh": w}, (x, h_star))
        return lipschitz_penalty(h_next, h_star, 0.3)[0]

    steps = 4
    with torch.no_grad():
        h_star = torch.zeros_like(x)
        for _ in range(steps - 1):
            h_star = cell(x, h_star)
    assert torch.autograd.gradcheck(lambda x, w: one_step_lcp(x, w, h_star), (x, w_inh),
                                    eps=1e-6, atol=1e-6)
    solver = FixedPointSolver("crbp", steps=steps, lcp_lambda=0.3)
    via_solver = torch.autograd.grad(_lcp_of(cell, solver, x, w_inh, torch.zeros_like(x)), (x, w_inh))
    direct = torch.autograd.grad(one_step_lcp(x, w_inh, h_star), (x, w_inh))
    for got, expected in zip(via_solver, direct):
        torch.testing.assert_close(got, expected)
        assert got.abs().sum() > 0


def test_lcp_only_in_contractor_modes_and_weighted():
    cell = _tiny_hgru()
    x = torch.rand(1, 2, 4, 4, dtype=DT)
    for mode in MODES:
        _, info = FixedPointSolver(mode, steps=3, lcp_lambda=0.1, lcp_weight=0.25)(
            cell, x, torch.zeros_like(x))
        if mode in ("cbptt", "crbp"):
            assert info.lcp > 0
            torch.testing.assert_close(info.weighted_lcp, 0.25 * info.lcp)
        else:
            assert info.lcp is None and info.weighted_lcp is None
    with torch.no_grad():
        _, info = FixedPointSolver("crbp", steps=3)(cell, x, torch.zeros_like(x))
    assert info.lcp is None


# --------------------------------------------------------------------------- robustness, memory

@pytest.mark.parametrize("mode", MODES)
def test_non_finite_state_raises_naming_the_step(mode):
    calls = []

    def blows_up_at_step_3(x, h):
        calls.append(1)
        return h * (float("nan") if len(calls) == 3 else 1.0) + x

    x = torch.ones(2, 3, requires_grad=True)
    with pytest.raises(FloatingPointError, match="step 3 of 5"):
        FixedPointSolver(mode, steps=5)(blows_up_at_step_3, x, torch.zeros_like(x))


def test_bad_arguments_name_the_fix():
    with pytest.raises(ValueError, match="unknown mode"):
        FixedPointSolver("deq")
    with pytest.raises(ValueError, match=">= 2"):
        FixedPointSolver("rbp", steps=1)
    with pytest.raises(ValueError, match="zeros_like"):
        HGRUCell(4, 3)(torch.zeros(1, 4, 5, 5), torch.zeros(1, 4, 5, 6))
    with pytest.raises(ValueError, match="norm_groups"):
        HGRUCell(5, 3, norm="group", norm_groups=2)
    with pytest.raises(ValueError, match="unknown norm"):
        HGRUCell(4, 3, norm="layer")


def _saved_bytes(mode, steps):
    """Bytes autograd saves for the backward of one training forward (the memory that grows)."""
    torch.manual_seed(0)
    cell = HGRUCell(4, kernel_size=3)
    x = torch.rand(2, 4, 6, 6, requires_grad=True)
    total = [0]

    def pack(tensor):
        total[0] += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        FixedPointSolver(mode, steps=steps)(cell, x, torch.zeros_like(x))
    return total[0]


def test_rbp_memory_does_not_grow_with_steps_but_bptt_does():
    for mode in ("rbp", "crbp"):
        assert _saved_bytes(mode, 3) == _saved_bytes(mode, 9)
    assert _saved_bytes("bptt", 9) > 2.5 * _saved_bytes("bptt", 3)


# --------------------------------------------------------------------------- hGRU and Gabor layer

@pytest.mark.parametrize("size", [(7, 9), (14, 14), (5, 3)])
@pytest.mark.parametrize("kernel_size,norm,share", [(1, "batch", False), (3, "group", True),
                                                    (4, "none", False), (15, "batch", True)])
def test_hgru_shapes_and_gradient_flow(size, kernel_size, norm, share):
    torch.manual_seed(0)
    cell = HGRUCell(6, kernel_size, norm=norm, norm_groups=3, share_kernels=share)
    x = torch.rand(2, 6, *size, requires_grad=True)
    h = torch.rand(2, 6, *size, requires_grad=True)
    out = cell(x, cell(x, h))
    assert out.shape == x.shape and bool((out >= 0).all())
    out.square().mean().backward()
    assert x.grad.abs().sum() > 0 and h.grad.abs().sum() > 0
    for name, param in cell.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert (cell.w_exc is None) == share


def test_hgru_gate_bias_init_follows_the_authors():
    cell = HGRUCell(64, 3)
    bias = cell.gain_gate.bias.detach()
    assert bool((bias >= 0).all()) and bool((bias <= math.log(7.0) + 1e-6).all())
    torch.testing.assert_close(cell.mix_gate.bias.detach(), -bias)
    for name, value in dict(alpha=0.1, gamma=1.0, kappa=0.5, omega=0.5, mu=1.0).items():
        torch.testing.assert_close(getattr(cell, name).detach(), torch.full((1, 64, 1, 1), value))


def test_hgru_gate_bias_rule_their_code_runs_is_offered():
    """'uniform': U(1, 7) without the log (the authors' code: `.log()` is not in place); the default stays
    log U(1, 7). Both reach the Pathfinder model through its cell arguments."""
    from rv_plugins.models.pathfinder_hgru import PathfinderHGRU
    torch.manual_seed(0)
    cell = HGRUCell(256, 3, gate_bias_rule="uniform")
    bias = cell.gain_gate.bias.detach()
    assert 1.0 <= float(bias.min()) < 1.5 and 6.5 < float(bias.max()) <= 7.0
    torch.testing.assert_close(cell.mix_gate.bias.detach(), -bias)
    assert float(HGRUCell(256, 3).gain_gate.bias.detach().max()) <= math.log(7.0) + 1e-6
    model = PathfinderHGRU(channels=4, kernel_size=3, steps=2, gate_bias_rule="uniform")
    assert model.cell.gate_bias_rule == "uniform" and float(model.cell.gain_gate.bias.detach().min()) >= 1.0
    with pytest.raises(ValueError, match="gate_bias_rule='log'.*'log_uniform', 'uniform'"):
        HGRUCell(4, 3, gate_bias_rule="log")
    with pytest.raises(ValueError, match="finite"):
        HGRUCell(4, 3, gate_bias_rule="uniform", gate_bias_range=(-1.0, math.inf))
    HGRUCell(4, 3, gate_bias_rule="uniform", gate_bias_range=(-1.0, 1.0))  # no log: any finite range


def test_gabor_bank_and_layer():
    bank = gabor_bank()
    assert bank.shape == (25, 7, 7)
    torch.testing.assert_close(bank.flatten(1).sum(1), torch.zeros(25), atol=1e-5, rtol=0)
    torch.testing.assert_close(bank.flatten(1).norm(dim=1), torch.ones(25))
    layer = GaborConv2d(3, 25, 7)
    flat = layer(torch.full((1, 3, 16, 16), 0.7))
    assert flat.shape == (1, 25, 16, 16)
    assert flat[..., 4:-4, 4:-4].abs().max() < 1e-8  # zero-mean filters ignore a flat interior
    bar = torch.zeros(1, 3, 16, 16)
    bar[..., 8, :] = 1.0
    response = layer(bar)
    assert bool((response >= 0).all()) and response.max() > 0.1


# --------------------------------------------------------------------------- validation, reliability

def test_settings_are_validated_when_set_and_when_reassigned():
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="neumann_terms"):
            FixedPointSolver("rbp", steps=3, neumann_terms=bad)
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="lcp_weight"):
            FixedPointSolver("crbp", lcp_weight=bad)
        with pytest.raises(ValueError, match="lcp_lambda"):
            FixedPointSolver("crbp", lcp_lambda=bad)
    with pytest.raises(TypeError, match="lcp_weight"):
        FixedPointSolver("crbp", lcp_weight="1e-3")
    for bad in (2.5, True, "4", 0):
        with pytest.raises(ValueError, match="steps"):
            FixedPointSolver("bptt", steps=bad)
    with pytest.raises(ValueError, match="neumann_norm_cap"):
        FixedPointSolver("rbp", neumann_norm_cap=0.0)
    solver = FixedPointSolver("rbp", steps=3, neumann_terms=0)  # 0 terms: the one-step gradient
    with pytest.raises(ValueError, match="neumann_terms"):
        solver.neumann_terms = -1
    with pytest.raises(ValueError, match="lcp_weight"):
        solver.lcp_weight = -1.0
    with pytest.raises(ValueError, match="steps"):
        solver(lambda x, h: h, torch.zeros(2), torch.zeros(2), steps=1)
    assert solver.neumann_terms == 0 and solver.steps == 3


class _LSTMStep(torch.nn.Module):
    """A user's mistake: the LSTM cell's (h, c) tuple returned as the next state."""

    def __init__(self):
        super().__init__()
        self.cell = torch.nn.LSTMCell(3, 4)

    def forward(self, x, h):
        return self.cell(x, (h, torch.zeros_like(h)))


@pytest.mark.parametrize("mode", MODES)
def test_transition_must_return_one_tensor_shaped_like_the_state(mode):
    x, h0 = torch.randn(2, 3), torch.zeros(2, 4)
    with pytest.raises(TypeError, match=r"_LSTMStep returned a tuple of 2 \(a tensor of shape \(2, 4\)"):
        FixedPointSolver(mode, steps=3)(_LSTMStep(), x, h0)
    with pytest.raises(TypeError, match=r"LSTMCell.*\(h, c\) tuple"):
        FixedPointSolver(mode, steps=3)(torch.nn.LSTMCell(3, 4), x, h0)
    with pytest.raises(TypeError, match=r"returned a tensor of shape \(2, 2\) at step 1.*\(2, 4\)"):
        FixedPointSolver(mode, steps=3)(lambda x, h: h[:, :2], x, h0)
    gru = torch.nn.GRUCell(3, 4)  # (input, h) -> h: a valid transition as it is
    h, _ = FixedPointSolver(mode, steps=3)(gru, x, h0)
    assert h.shape == (2, 4)


def _implicit_grad(solver, weight):
    """d h_N / d x of F(x, h) = weight * h + x (scalar state), and the solver's info."""
    x = torch.ones(1, dtype=DT, requires_grad=True)
    h, info = solver(lambda x, h: weight * h + x, x, torch.zeros_like(x))
    h.sum().backward()
    return float(x.grad), info


def test_slow_contraction_is_flagged_with_a_matching_error_estimate(caplog):
    """J = 0.999 I: 20 terms give 20.8 instead of the implicit value 1000, and the solver says so."""
    with caplog.at_level("WARNING", logger="rv_plugins.solvers.fixed_point"):
        grad, info = _implicit_grad(FixedPointSolver("rbp", steps=20), 0.999)
    assert grad == pytest.approx(sum(0.999 ** k for k in range(21)))  # 20.8
    assert info.neumann_stop == "max_terms" and info.neumann_terms == 20
    assert info.neumann_error_estimate == pytest.approx((1000 - grad) / grad, rel=1e-6)  # 47.1
    assert info.rbp_unreliable and "estimated relative error" in info.rbp_unreliable_reason
    assert any("RBP gradient unreliable" in r.getMessage() for r in caplog.records)


def test_expanding_map_is_flagged_by_forward_and_backward(caplog):
    """F = 2h + x: BPTT's gradient is 2^20 - 1 ~ 1e6; RBP stops at once and returns 1, flagged."""
    with caplog.at_level("WARNING", logger="rv_plugins.solvers.fixed_point"):
        bptt, _ = _implicit_grad(FixedPointSolver("bptt", steps=20), 2.0)
        grad, info = _implicit_grad(FixedPointSolver("rbp", steps=20, warn_interval_s=0), 2.0)
    assert bptt == 2 ** 20 - 1 and grad == 1.0
    assert info.neumann_stop == "growth" and info.neumann_terms == 0
    assert info.neumann_error_estimate == math.inf
    assert "fixed-point residual" in info.rbp_unreliable_reason  # forward: 0.5 > 0.05
    assert "not smaller" in info.rbp_unreliable_reason           # backward: the series diverges
    assert len([r for r in caplog.records if "unreliable" in r.getMessage()]) == 2


@pytest.mark.parametrize("weight", [1.0, -1.0])
def test_norm_preserving_jacobian_cannot_hang(weight):
    """|J| = 1 along g (F = w h + x, |w| = 1): a term equal to the previous one stops the series;
    without that rule the series still ends at neumann_terms."""
    grad, info = _implicit_grad(FixedPointSolver("rbp", steps=5), weight)
    assert info.neumann_stop == "growth" and info.neumann_terms == 0 and grad == 1.0
    assert info.rbp_unreliable
    grad, info = _implicit_grad(FixedPointSolver("rbp", steps=5, neumann_terms=50,
                                                 stop_on_growth=False), weight)
    assert info.neumann_stop == "max_terms" and info.neumann_terms == 50
    assert grad == (51.0 if weight == 1.0 else 1.0) and info.rbp_unreliable


def test_authors_norm_cap_stops_the_series_before_the_sum_exceeds_it():
    """J = 0.5 I, g = 1: partial sums 1.5, 1.75, 1.875 ...; a cap of 1.8 keeps 1.75 (two terms)."""
    grad, info = _implicit_grad(FixedPointSolver("rbp", steps=60, neumann_norm_cap=1.8), 0.5)
    assert grad == pytest.approx(1.75) and info.neumann_terms == 2 and info.neumann_stop == "norm_cap"
    assert info.rbp_unreliable and "norm_cap" in info.rbp_unreliable_reason  # error 0.25/1.75
    grad, info = _implicit_grad(FixedPointSolver("rbp", steps=60, neumann_tol=1e-12), 0.5)
    assert grad == pytest.approx(2.0) and info.neumann_stop == "tolerance"
    assert not info.rbp_unreliable and info.neumann_error_estimate < 1e-10


def test_unconverged_forward_is_flagged_before_the_backward():
    x = torch.ones(1, dtype=DT, requires_grad=True)
    _, info = FixedPointSolver("crbp", steps=2)(lambda x, h: 0.5 * h + x, x, torch.zeros_like(x))
    assert info.rbp_unreliable and info.rbp_unreliable_reason.startswith("fixed-point residual 0.333")
    _, info = FixedPointSolver("bptt", steps=2)(lambda x, h: 0.5 * h + x, x, torch.zeros_like(x))
    assert not info.rbp_unreliable  # BPTT's gradient is exact whatever the residual


def test_converged_contraction_is_not_flagged(caplog):
    torch.manual_seed(4)
    cell = ContractiveConvCell()
    x = torch.randn(1, 3, 5, 6, dtype=DT, requires_grad=True)
    with caplog.at_level("WARNING", logger="rv_plugins.solvers.fixed_point"):
        h, info = FixedPointSolver("crbp", steps=60, neumann_terms=200)(cell, x, torch.zeros_like(x))
        (h.sum() + info.weighted_lcp).backward()
    assert info.neumann_stop == "tolerance" and not info.rbp_unreliable
    assert info.rbp_unreliable_reason is None and not caplog.records


def test_unreliability_warnings_are_rate_limited(caplog):
    from rv_plugins.solvers.fixed_point import RateLimitedWarning
    now = [0.0]
    warner = RateLimitedWarning(interval_s=60, clock=lambda: now[0])
    import logging
    log = logging.getLogger("rv_plugins.test_rate_limit")
    with caplog.at_level("WARNING", logger=log.name):
        shown = [warner(log, "a"), warner(log, "b"), warner(log, "c")]
        now[0] = 61.0
        shown.append(warner(log, "d"))
    assert shown == [True, False, False, True]
    assert [r.getMessage() for r in caplog.records] == [
        "a", "d (2 similar warning(s) in the last 61 s not shown)"]
    caplog.clear()
    solver = FixedPointSolver("rbp", steps=20)  # default: one warning per minute per solver
    with caplog.at_level("WARNING", logger="rv_plugins.solvers.fixed_point"):
        for _ in range(5):
            _, info = _implicit_grad(solver, 2.0)
            assert info.rbp_unreliable  # the flag is set every time, the log line once
    assert len(caplog.records) == 1


# --------------------------------------------------------------------------- the authors' COCO cell and head

def _coco_step_by_hand(cell, x, h):
    """The authors' COCO cell written out from its equations (CocoHGRUCell's docstring)."""
    sp, k = F.softplus, cell.kernel_size
    a = F.conv2d(sp(F.conv2d(h, cell.gate_channel_in.weight, cell.gate_channel_in.bias)),
                 cell.gate_channel_out.weight)
    s = F.conv2d(sp(F.conv2d(h, cell.gate_spatial_in, cell.gate_spatial_bias, padding=k // 2)),
                 cell.gate_spatial_out, padding=k // 2)
    g1 = torch.sigmoid(a * s + cell.gain_bias)
    c1 = cell.norm_inh(F.conv2d(h * g1, cell.w_inh, padding=k // 2))
    h1 = sp(x - c1 * (cell.alpha * h + cell.mu))
    g2 = torch.sigmoid(F.conv2d(h1, cell.mix_gate.weight, cell.mix_gate.bias))
    candidate = sp(cell.norm_exc(F.conv2d(h1, cell.w_exc, padding=k // 2)))
    return (1 - g2) * h + g2 * candidate


def test_coco_cell_matches_its_equations_and_the_authors_init():
    from rv_plugins.layers.hgru import CocoHGRUCell
    torch.manual_seed(5)
    cell = CocoHGRUCell(8, kernel_size=3, norm_groups=4).double()
    with torch.no_grad():  # move the norms off their init so they matter
        cell.norm_inh.weight.uniform_(0.5, 1.5)
        cell.norm_exc.bias.uniform_(-0.5, 0.5)
    x, h = torch.rand(2, 8, 7, 7, dtype=DT), torch.rand(2, 8, 7, 7, dtype=DT)
    torch.testing.assert_close(cell(x, h), _coco_step_by_hand(cell, x, h), rtol=1e-12, atol=1e-12)
    fresh = CocoHGRUCell(256).requires_grad_(False)
    bias = fresh.gain_bias.detach().flatten()
    assert 1.0 <= float(bias.min()) and float(bias.max()) <= 19.0 and float(bias.std()) > 3
    torch.testing.assert_close(fresh.mix_gate.bias, -bias)
    assert isinstance(fresh.norm_inh, torch.nn.GroupNorm) and fresh.norm_inh.num_groups == 32
    assert fresh.norm_inh.eps == 1e-5 and float(fresh.norm_exc.weight.mean()) == pytest.approx(0.1)
    assert float(fresh.alpha.mean()) == pytest.approx(0.1) and float(fresh.mu.mean()) == 1.0
    std = float(fresh.w_inh.std())  # kaiming normal: sqrt(2 / fan_in), fan_in = 256 * 9
    assert std == pytest.approx(math.sqrt(2 / (256 * 9)), rel=0.02)
    shapes = {n: tuple(p.shape) for n, p in fresh.named_parameters()}
    assert shapes["gate_channel_in.weight"] == (64, 256, 1, 1) and "gate_channel_out.bias" not in shapes
    assert shapes["gate_spatial_in"] == (128, 256, 3, 3) and shapes["gate_spatial_out"] == (1, 128, 3, 3)
    assert sum(p.numel() for p in fresh.parameters()) == 1_576_256


def test_coco_head_saves_783552_parameters_against_the_4conv_head():
    """R-50 defaults: 256-channel ROI features, 80 classes. Detectron2's head: 4 x conv3x3(256) +
    deconv2x2(256) + conv1x1(80); the authors' recurrent head: cell + BN + the same deconv/predictor."""
    from rv_plugins.heads.hgru_mask_head import HGRUMaskPredictor
    c, k = 256, 80
    four_conv = 4 * (c * c * 9 + c) + (c * c * 4 + c) + (c * k + k)
    coco = sum(p.numel() for p in HGRUMaskPredictor(cell="coco").parameters())
    ours = sum(p.numel() for p in HGRUMaskPredictor(cell="pathfinder").parameters())
    assert four_conv == 2_643_280 and coco == 1_859_728 and ours == 1_662_288
    assert four_conv - coco == 783_552  # the paper's "0.78M fewer parameters"


@pytest.mark.parametrize("mode", MODES)
def test_coco_head_trains_in_every_mode(mode):
    from rv_plugins.heads.hgru_mask_head import HGRUMaskPredictor
    torch.manual_seed(6)
    head = HGRUMaskPredictor(in_channels=16, num_classes=3, channels=16, cell="coco", steps=4,
                             norm_groups=4, solver_mode=mode).train()
    assert head.input_proj is None and isinstance(head.readout_norm, torch.nn.BatchNorm2d)
    x = torch.rand(3, 16, 14, 14)
    logits, info = head(x)
    assert logits.shape == (3, 3, 28, 28)
    (logits.square().mean() + (info.weighted_lcp if info.weighted_lcp is not None else 0)).backward()
    missing = [n for n, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing
    assert head.solver.lcp_weight == 1e-3 and head.solver.neumann_terms == 15  # the authors' COCO values
    assert head.cell.gate_bias_range == (1.0, 3.0)  # U(1, steps - 1) as the authors


def test_coco_head_rejects_a_projection_width_and_shared_kernels():
    from rv_plugins.heads.hgru_mask_head import HGRUMaskPredictor
    with pytest.raises(ValueError, match="no projection.*channels=64"):
        HGRUMaskPredictor(in_channels=64, channels=32, cell="coco", norm_groups=8)
    with pytest.raises(ValueError, match="share_kernels"):
        HGRUMaskPredictor(cell="coco", share_kernels=True)
    with pytest.raises(ValueError, match="unknown cell"):
        HGRUMaskPredictor(cell="gala")


def test_pathfinder_model_defaults_to_the_authors_penalty_scale():
    """c-rbp/pathfinder_experiments mainclean.py adds penalty.mean() * 10 (lambda 0.9)."""
    from rv_plugins.models.pathfinder_hgru import PathfinderHGRU
    solver = PathfinderHGRU(channels=4, kernel_size=3, steps=2).solver
    assert (solver.lcp_reduction, solver.lcp_weight, solver.lcp_lambda) == ("mean", 10.0, 0.9)


# --------------------------------------------------------------------------- a loss gradient that is not finite

@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("rule", ["stop", "skip"])
def test_nonfinite_loss_gradient_is_named_flagged_and_passed_on(caplog, bad, rule):
    """A NaN/Inf gradient reaching the state is not a 'zero_gradient' and not reliable: a stop reason
    of its own, the flag, a warning; the gradient goes on unchanged (as BPTT's would)."""
    x = torch.ones(3, dtype=DT, requires_grad=True)
    solver = FixedPointSolver("rbp", steps=30, warn_interval_s=0, neumann_rule=rule)
    with caplog.at_level("WARNING", logger="rv_plugins.solvers.fixed_point"):
        h, info = solver(lambda x, h: 0.5 * h + x, x, torch.zeros_like(x))
        (h * torch.tensor([1.0, bad, 1.0], dtype=DT)).sum().backward()
    assert info.neumann_stop == "nonfinite_gradient" and info.neumann_terms == 0
    assert info.rbp_unreliable and ("NaN" if math.isnan(bad) else "Inf") in info.rbp_unreliable_reason
    assert not math.isfinite(float(x.grad[1])) and float(x.grad[0]) == 1.0  # one step's VJP of g, unchanged
    assert any("holds" in r.getMessage() for r in caplog.records)
    assert math.isnan(info.log_scalars(forward=False)["neumann_residual"])


def test_nonfinite_loss_gradient_raises_when_asked():
    x = torch.ones(2, dtype=DT, requires_grad=True)
    solver = FixedPointSolver("crbp", steps=30, on_nonfinite_gradient="raise")
    h, info = solver(lambda x, h: 0.5 * h + x, x, torch.zeros_like(x))
    with pytest.raises(FloatingPointError, match="on_nonfinite_gradient='raise'.*NaN"):
        (h.sum() * math.nan + info.weighted_lcp).backward()
    assert info.neumann_stop == "nonfinite_gradient" and info.rbp_unreliable
    with pytest.raises(ValueError, match="on_nonfinite_gradient"):
        FixedPointSolver("rbp", on_nonfinite_gradient="ignore")
    with pytest.raises(ValueError, match="neumann_rule.*'stop', 'skip'"):
        FixedPointSolver("rbp").neumann_rule = "coco"


# --------------------------------------------------------------------------- a transition that does not read h

class _Ignores(torch.nn.Module):
    """A transition that drops its state in one of the ways users do."""

    def __init__(self, how):
        super().__init__()
        self.how, self.weight = how, torch.nn.Parameter(torch.full((3,), 0.5, dtype=DT))

    def forward(self, x, h):
        if self.how == "ignores":
            return torch.tanh(self.weight * x)
        if self.how == "detach":
            h = h.detach()
        elif self.how == "data":
            h = h.data
        elif self.how == "numpy":
            h = torch.from_numpy(h.detach().numpy().copy())
        elif self.how == "no_grad":
            with torch.no_grad():
                h = h * 1.0
        return torch.tanh(self.weight * h + x)


@pytest.mark.parametrize("how", ["ignores", "detach", "data", "numpy", "no_grad"])
@pytest.mark.parametrize("mode", ["rbp", "crbp", "cbptt"])
def test_transition_that_does_not_read_its_state_is_named(mode, how):
    x = torch.ones(2, 3, dtype=DT, requires_grad=True)
    with pytest.raises(RuntimeError, match="does not depend on its state h through autograd.*mode='bptt'"):
        h, info = FixedPointSolver(mode, steps=4)(_Ignores(how), x, torch.zeros_like(x))
        (h.sum() + (info.weighted_lcp if info.weighted_lcp is not None else 0)).backward()
    h, _ = FixedPointSolver("bptt", steps=4)(_Ignores(how), x, torch.zeros_like(x))  # BPTT needs no dF/dh
    h.sum().backward()
    assert x.grad is not None


def test_lipschitz_penalty_names_a_state_that_was_not_used():
    h_prev = torch.ones(3, requires_grad=True)
    weight = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(RuntimeError, match="lipschitz_penalty"):
        lipschitz_penalty(weight * 2.0, h_prev, 0.9)


# --------------------------------------------------------------------------- the authors' two Neumann rules

def _authors_pathfinder_rule(vjp, g, iterations):
    """c-rbp/pathfinder_experiments models/hgrucleanSEG.py, dummyhgru.backward, restated: the first
    violation (sum norm > 1, a growing or a tiny term) drops that term and ends the loop."""
    total, term, last_norm = g.clone(), g.clone(), float(g.norm())
    for _ in range(iterations):
        nxt = vjp(term)
        if float((total + nxt).norm()) > 1 or float(nxt.norm()) > last_norm or float(nxt.norm()) < 1e-9:
            break
        total, term, last_norm = total + nxt, nxt, float(nxt.norm())
    return total


def _authors_coco_rule(vjp, g, iterations):
    """c-rbp/panoptic_segmentation rnns.py, RBPFun.backward with norm_cap=True, restated: a violating term
    is left out of the sum but the loop goes on from it; the sum as it stood at the last violation wins."""
    total, term, last_norm, at_last_skip = g.clone(), g.clone(), float(g.norm()), None
    for _ in range(iterations):
        nxt = vjp(term)
        if float((total + nxt).norm()) > 1 or float(nxt.norm()) > last_norm or float(nxt.norm()) < 1e-9:
            at_last_skip = total.clone()
        else:
            total = total + nxt
        term, last_norm = nxt, float(nxt.norm())
    return total if at_last_skip is None else at_last_skip


def test_both_authors_rules_are_reproduced_and_differ_on_random_linear_maps():
    """Unit-norm g (their tolerance is absolute, ours relative to ||g||), cap 1, 15 iterations: each rule
    equals its authors' loop on every map; the two rules disagree on a good share of the maps."""
    from rv_plugins.solvers.neumann import neumann_series
    generator = torch.Generator().manual_seed(0)
    differ = 0
    for _ in range(200):
        matrix = torch.randn(4, 4, generator=generator, dtype=DT) * 0.4
        g = torch.randn(4, generator=generator, dtype=DT) * 0.6

        def vjp(v):
            return v @ matrix

        g = g / g.norm() * 0.6
        for rule, reference in (("stop", _authors_pathfinder_rule), ("skip", _authors_coco_rule)):
            ours = neumann_series(vjp, g, max_terms=15, tol=1e-9 / 0.6, stop_on_growth=True, norm_cap=1.0,
                                  rule=rule).gradient
            torch.testing.assert_close(ours, reference(vjp, g, 15), atol=1e-12, rtol=0)
        differ += not torch.allclose(_authors_pathfinder_rule(vjp, g, 15), _authors_coco_rule(vjp, g, 15))
    assert 20 <= differ <= 180, differ


def test_skip_rule_through_the_solver_keeps_the_sum_at_the_last_skip():
    """J = 0.5 I, g = 1, cap 1.8: 'stop' keeps 1.75 (2 terms); 'skip' also admits the later small terms
    that fit (terms 5, 6, 9, 10, 13, 14 of 15) and returns the sum at the last term it dropped (term 15):
    8 terms, 1.79993; residual exact."""
    stop, info_stop = _implicit_grad(FixedPointSolver("rbp", steps=60, neumann_norm_cap=1.8), 0.5)
    skip, info = _implicit_grad(FixedPointSolver("rbp", steps=60, neumann_norm_cap=1.8, neumann_terms=15,
                                                 neumann_rule="skip"), 0.5)
    expected = float(_authors_coco_rule(lambda v: 0.5 * v, torch.ones(1, dtype=DT) / 1.8, 15) * 1.8)
    assert stop == pytest.approx(1.75) and info_stop.neumann_terms == 2
    assert skip == pytest.approx(expected) and skip > 1.79
    assert info.neumann_stop == "norm_cap" and info.neumann_terms == 8
    assert info.neumann_residual == pytest.approx(abs(1 + 0.5 * skip - skip) / skip)
    assert info.neumann_error_estimate == pytest.approx((2 - skip) / skip)


def test_skip_rule_flags_a_growing_term_and_converges_like_stop_on_a_contraction(caplog):
    with caplog.at_level("WARNING", logger="rv_plugins.solvers.fixed_point"):
        grad, info = _implicit_grad(FixedPointSolver("rbp", steps=20, neumann_rule="skip"), 2.0)
    assert grad == 1.0 and info.neumann_stop == "growth" and info.rbp_unreliable
    assert "skipped it ('skip' rule)" in info.rbp_unreliable_reason
    torch.manual_seed(4)
    cell = ContractiveConvCell()
    x = torch.randn(1, 3, 5, 6, dtype=DT, requires_grad=True)
    grads = []
    for rule in ("stop", "skip"):
        h, info = FixedPointSolver("rbp", steps=60, neumann_terms=200, neumann_rule=rule)(cell, x, torch.zeros_like(x))
        grads.append(_flat_grads(h.sum(), [cell.weight, x]))
        assert not info.rbp_unreliable and info.neumann_residual < 1e-8
    torch.testing.assert_close(grads[0], grads[1], atol=1e-7, rtol=1e-6)  # both within their 1e-9 tolerance
