"""Triton kernels of rv_plugins.ops (``rv_plugins.ops.triton_kernels``) without a GPU: equal to the reference
under ``TRITON_INTERPRET=1`` (every dtype, direction, ``h0``, odd sizes, many chunks handed on by look-back,
±inf/NaN/huge values), the look-back's composition of published summaries, and the sm_90 compile report
(registers, no spills, the tile layout, vector loads) with the runtime's specialisation."""
import contextlib
import math

import pytest
import torch

from rv_plugins.ops import linear_scan_reference, mingru_scan_reference

triton = pytest.importorskip("triton")
pytestmark = [pytest.mark.triton, pytest.mark.usefixtures("one_thread")]

import triton.language as tl  # noqa: E402

from rv_plugins.ops.triton_kernels import configs, linear_scan as tk_scan, mingru as tk_mingru  # noqa: E402
from rv_plugins.ops.triton_kernels.chunk_scan import carry_in  # noqa: E402

SMALL = dict(block_l=8, block_d=4, num_warps=1, steps=2)   # many chunks at interpreter-friendly lengths


def _scan_inputs(B, L, D, dtype, seed, h0=True):
    g = torch.Generator().manual_seed(seed)
    a = 0.5 + 0.6 * torch.rand(B, L, D, generator=g, dtype=torch.float64)   # some decays > 1
    a[..., ::3] *= -1
    b = torch.randn(B, L, D, generator=g, dtype=torch.float64)
    state = torch.randn(B, D, generator=g, dtype=torch.float64) if h0 else None
    return a.to(dtype), b.to(dtype), None if state is None else state.to(dtype)


def _kernels_scan(a, b, h0, reverse, grad_h, config=SMALL):
    with configs.forced(**config) if config else contextlib.nullcontext():
        h = tk_scan.scan_forward(a, b, h0, reverse)
        grads = tk_scan.scan_backward(a, h, h0, grad_h, reverse)
    return [h, *grads]


def _reference_scan(a, b, h0, reverse, grad_h):
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in (a, b, h0)]
    h = linear_scan_reference(*leaves, reverse=reverse)
    h.backward(grad_h)
    return [h.detach()] + [t.grad if t is not None else None for t in leaves]


def _same(got, want, rtol, atol):
    """Equal where the reference is finite (to rounding), and NaN / ±inf exactly where it has them."""
    for x, y in zip(got, want):
        if y is None:
            assert x is None
            continue
        assert x.shape == y.shape
        x, y = x.double(), y.double()
        assert torch.equal(torch.isnan(x), torch.isnan(y)), f"NaN at {torch.isnan(x).sum()} vs {torch.isnan(y).sum()}"
        assert torch.equal(torch.isinf(x), torch.isinf(y)), f"inf at {torch.isinf(x).sum()} vs {torch.isinf(y).sum()}"
        assert torch.equal(x[torch.isinf(y)], y[torch.isinf(y)])
        finite = torch.isfinite(y)
        torch.testing.assert_close(x[finite], y[finite], rtol=rtol, atol=atol * max(1.0, y[finite].abs().max().item()
                                                                                     if finite.any() else 1.0))


@pytest.mark.parametrize("shape, reverse, h0", [((2, 37, 5), False, True), ((1, 61, 6), True, True),
                                                ((3, 9, 3), True, False), ((1, 1, 1), False, True)])
def test_linear_scan_float64_many_chunks(shape, reverse, h0):
    a, b, state = _scan_inputs(*shape, torch.float64, seed=sum(shape), h0=h0)
    grad = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _same(_kernels_scan(a, b, state, reverse, grad), _reference_scan(a, b, state, reverse, grad), 1e-10, 1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reverse", [False, True])
def test_linear_scan_lower_precision(dtype, reverse):
    """float32 state for half data: the error is the output's rounding (the reference in float64 on the
    same rounded inputs)."""
    a, b, state = _scan_inputs(2, 29, 7, torch.float64, seed=5)
    a = a.abs().clamp(max=0.98)
    a, b, state = a.to(dtype), b.to(dtype), state.float()
    grad = torch.randn(2, 29, 7, generator=torch.Generator().manual_seed(2)).to(dtype)
    got = _kernels_scan(a, b, state, reverse, grad)
    want = _reference_scan(a.double(), b.double(), state.double(), reverse, grad.double())
    assert got[0].dtype == dtype and got[3].dtype == torch.float32
    tol = {torch.float32: 1e-5, torch.bfloat16: 2 ** -7, torch.float16: 2 ** -9}[dtype]
    for x, y in zip(got, want):
        torch.testing.assert_close(x.double(), y, rtol=tol, atol=tol * y.abs().max().item())


def test_linear_scan_long_sequence_batch_one():
    """L = 301 (odd) at batch 1: 38 chunks of 8 steps, each state handed on by look-back."""
    a, b, state = _scan_inputs(1, 301, 3, torch.float64, seed=9)
    a = a.clamp(-0.99, 0.99)
    grad = torch.randn(1, 301, 3, dtype=torch.float64)
    _same(_kernels_scan(a, b, state, True, grad), _reference_scan(a, b, state, True, grad), 1e-10, 1e-12)


def test_default_configuration_multi_warp_tiles():
    """The launchers' own configuration (64-step tiles, 32 channels, several groups per tile) in float32."""
    a, b, state = _scan_inputs(1, 130, 40, torch.float32, seed=4)
    grad = torch.randn(1, 130, 40, generator=torch.Generator().manual_seed(3))
    assert configs.choose(130, 40, torch.float32) == configs.Config(64, 32, 4, 4)
    _same(_kernels_scan(a, b, state, False, grad, config=None),
          _reference_scan(a.double(), b.double(), state.double(), False, grad.double()), 1e-5, 1e-6)


SPECIAL = [math.inf, -math.inf, math.nan, 1e30, 3e38]


@pytest.mark.parametrize("value", SPECIAL)
@pytest.mark.parametrize("reverse", [False, True])
def test_linear_scan_special_values_across_chunks(value, reverse):
    """±inf, NaN and huge values in a, b and h0: NaN / inf exactly where the step-by-step loop has them,
    forward and backward, with the value in a middle chunk (a[0, 20, 1] with L = 40: 21 steps after it)."""
    a, b, state = _scan_inputs(2, 40, 3, torch.float32, seed=7)
    a[0, 20, 1] = value
    b[1, 5, 2] = value
    state[1, 0] = value
    grad = torch.randn(2, 40, 3, generator=torch.Generator().manual_seed(8))
    _same(_kernels_scan(a, b, state, reverse, grad), _reference_scan(a, b, state, reverse, grad), 1e-4, 1e-5)


def test_linear_scan_huge_products_that_stay_finite():
    """Decays 1e30 / 1e-30 in turn: products overflow in the parallel scan but not step by step; a huge
    h0 decaying through tiny decays; a 1e30 decay times a zero state."""
    a, b, state = _scan_inputs(2, 40, 3, torch.float32, seed=3)
    a[:, ::2], a[:, 1::2] = 1e30, 1e-30
    state.fill_(1e20)
    grad = torch.randn(2, 40, 3)
    _same(_kernels_scan(a, b, state, False, grad), _reference_scan(a, b, state, False, grad), 1e-4, 1e-5)
    a, zeros = torch.full((1, 40, 2), 0.01), torch.zeros(1, 40, 2)
    _same(_kernels_scan(a, zeros, torch.full((1, 2), 1e30), True, grad[:1, :, :2]),
          _reference_scan(a, zeros, torch.full((1, 2), 1e30), True, grad[:1, :, :2]), 1e-4, 1e-5)
    a = torch.full((1, 40, 2), 1e30)
    _same(_kernels_scan(a, zeros, None, False, grad[:1, :, :2]),
          _reference_scan(a, zeros, None, False, grad[:1, :, :2]), 1e-4, 1e-5)


def _kernels_mingru(proj, h0, reverse, bidirectional, act, grad_h, config=SMALL):
    with configs.forced(**config) if config else contextlib.nullcontext():
        h = tk_mingru.mingru_forward(proj, h0, reverse, bidirectional, act)
        grads = tk_mingru.mingru_backward(proj, h, h0, grad_h, reverse, bidirectional, act)
    return [h, *grads]


def _reference_mingru(proj, h0, reverse, bidirectional, act, grad_h):
    p = proj.detach().clone().requires_grad_(True)
    s = None if h0 is None else h0.detach().clone().requires_grad_(True)
    h = mingru_scan_reference(p, s, reverse, bidirectional, act)
    h.backward(grad_h)
    return [h.detach(), p.grad, None if s is None else s.grad]


MINGRU_CASES = [  # B, L, H, reverse, bidirectional, act, h0
    (2, 37, 3, False, False, "identity", True),
    (1, 50, 5, True, False, "g", True),
    (2, 19, 6, False, True, "g", True),
    (1, 33, 4, False, True, "identity", False),
]


@pytest.mark.parametrize("case", MINGRU_CASES)
def test_mingru_float64_many_chunks(case):
    B, L, H, reverse, bidirectional, act, use_h0 = case
    ndir = 2 if bidirectional else 1
    g = torch.Generator().manual_seed(L)
    proj = 2 * torch.randn(B, L, 2 * ndir * H, generator=g, dtype=torch.float64)
    h0 = torch.randn(B, ndir * H, generator=g, dtype=torch.float64) if use_h0 else None
    grad = torch.randn(B, L, ndir * H, generator=g, dtype=torch.float64)
    _same(_kernels_mingru(proj, h0, reverse, bidirectional, act, grad),
          _reference_mingru(proj, h0, reverse, bidirectional, act, grad), 1e-10, 1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_mingru_lower_precision_strided(dtype):
    """Half/float32 projections with batch and time strides (a slice of a wider buffer), gates and state in
    float32, against the float64 reference on the same rounded inputs."""
    g = torch.Generator().manual_seed(6)
    wide = 2 * torch.randn(2, 30, 40, generator=g)
    proj = wide.to(dtype)[:, 1::2, 3:27]          # (2, 15, 24): bidirectional, H = 6
    assert proj.stride(1) == 80 and proj.stride(0) == 1200
    grad = torch.randn(2, 15, 12, generator=g).to(dtype)
    h0 = torch.randn(2, 12, generator=g)
    got = _kernels_mingru(proj, h0, False, True, "g", grad)
    want = _reference_mingru(proj.double(), h0.double(), False, True, "g", grad.double())
    assert got[0].dtype == dtype and got[1].dtype == dtype and got[2].dtype == torch.float32
    tol = {torch.float32: 1e-5, torch.bfloat16: 2 ** -7, torch.float16: 2 ** -9}[dtype]
    for x, y in zip(got, want):
        torch.testing.assert_close(x.double(), y, rtol=tol, atol=tol * y.abs().max().item())


def test_mingru_long_sequence_batch_one_bidirectional():
    """L = 201 at batch 1, both directions: 26 chunks per direction handed on by look-back."""
    g = torch.Generator().manual_seed(12)
    proj = torch.randn(1, 201, 8, generator=g, dtype=torch.float64)
    proj[..., 0:2] -= 4.0                          # decays near 0.98: long memories
    grad = torch.randn(1, 201, 4, generator=g, dtype=torch.float64)
    h0 = torch.randn(1, 4, generator=g, dtype=torch.float64)
    _same(_kernels_mingru(proj, h0, False, True, "g", grad), _reference_mingru(proj, h0, False, True, "g", grad),
          1e-10, 1e-12)


@pytest.mark.parametrize("value", SPECIAL)
@pytest.mark.parametrize("bidirectional, reverse", [(False, True), (True, False)])
def test_mingru_special_values_across_chunks(value, bidirectional, reverse):
    """±inf, NaN and huge values in gates, candidates and h0: as the reference, forward and backward."""
    ndir = 2 if bidirectional else 1
    g = torch.Generator().manual_seed(13)
    proj = 2 * torch.randn(2, 40, 2 * ndir * 3, generator=g)
    proj[0, 20, 1] = value                       # a gate (direction 0)
    proj[1, 9, 2 * ndir * 3 - 1] = value         # a candidate (the last direction)
    h0 = torch.randn(2, ndir * 3, generator=g)
    h0[1, 0] = value
    grad = torch.randn(2, 40, ndir * 3, generator=g)
    for act in ("identity", "g"):
        _same(_kernels_mingru(proj, h0, reverse, bidirectional, act, grad),
              _reference_mingru(proj, h0, reverse, bidirectional, act, grad), 1e-4, 1e-5)


# ----------------------------------------------------------------------------- the look-back itself
# Under the interpreter every predecessor has finished (published its inclusive state) when a chunk looks
# back, so the kernels above never compose aggregates. This kernel runs the look-back on prepared
# summaries, as a GPU chunk finds them while its predecessors are still running.
@triton.jit
def _carry_in_kernel(FLAGS, VALS, H0, OUT, chunk, LIMIT: tl.constexpr, HMAX: tl.constexpr, BLOCK_D: tl.constexpr):
    offs = tl.arange(0, BLOCK_D)
    tl.store(OUT + offs, carry_in(FLAGS, VALS, 1, 0, chunk, tl.load(H0 + offs), offs, LIMIT, HMAX, BLOCK_D))


def _look_back(statuses, summaries, h0, chunk):
    """``summaries[c]`` = (A, B, M, N, inclusive) of chunk c (one line, 2 channels)."""
    flags = torch.tensor([0] + statuses, dtype=torch.int32)
    values = torch.tensor(summaries, dtype=torch.float32).reshape(-1)
    out = torch.empty(2)
    limit, hmax = configs.LIMITS[torch.float32]
    _carry_in_kernel[(1,)](flags, values, torch.tensor(h0, dtype=torch.float32), out, chunk, LIMIT=limit, HMAX=hmax,
                           BLOCK_D=2)
    return out


def test_look_back_composes_published_aggregates():
    nan = math.nan
    summaries = [[[nan, nan], [nan, nan], [nan, nan], [nan, nan], [1.5, -2.0]],     # chunk 0: inclusive
                 [[0.5, 2.0], [1.0, 0.0], [1.0, 2.0], [2.0, 1.0], [nan, nan]],      # chunks 1-3: aggregates
                 [[0.25, -1.0], [0.0, 3.0], [1.0, 1.0], [1.0, 3.0], [nan, nan]],
                 [[2.0, 0.5], [-1.0, 1.0], [2.0, 1.0], [1.0, 2.0], [nan, nan]]]
    h = torch.tensor([1.5, -2.0])
    for a, b in [(torch.tensor(s[0]), torch.tensor(s[1])) for s in summaries[1:]]:
        h = a * h + b
    torch.testing.assert_close(_look_back([2, 1, 1, 1], summaries, [0.0, 0.0], 4), h)
    # no inclusive state published: the aggregates compose onto h0
    h = torch.tensor([0.5, 4.0])
    for a, b in [(torch.tensor(s[0]), torch.tensor(s[1])) for s in summaries[:3]]:
        h = a * h + b if not torch.isnan(a).any() else h
    first_three = [[[1.0, 1.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0], [nan, nan]]] + summaries[1:3]
    torch.testing.assert_close(_look_back([1, 1, 1], first_three, [0.5, 4.0], 3), h)
    # chunk 0 gets h0 as it is
    torch.testing.assert_close(_look_back([0], summaries[:1], [0.5, -7.0], 0), torch.tensor([0.5, -7.0]))


def test_look_back_waits_for_the_exact_state_when_composing_could_overflow():
    """A huge published inclusive state (beyond HMAX) is taken as it is, not composed with aggregates."""
    nan = math.nan
    summaries = [[[nan, nan]] * 4 + [[1e30, -1e30]], [[nan, nan]] * 4 + [[3e38, math.inf]]]
    torch.testing.assert_close(_look_back([2, 2], summaries, [0.0, 0.0], 2), torch.tensor([3e38, math.inf]))


# ----------------------------------------------------------------------------- configurations and compilation
def test_configurations_follow_the_rule():
    assert configs.choose(65536, 144, torch.float32) == configs.Config(64, 32, 4, 4)
    assert configs.choose(65536, 144, torch.bfloat16) == configs.Config(64, 32, 4, 2)
    assert configs.choose(65536, 144, torch.float64) == configs.Config(64, 16, 4, 4, 255)
    assert configs.choose(7, 3, torch.float32) == configs.Config(16, 16, 1, 2)
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        for config, _ in configs.all_configs(dtype):
            assert config.block_l % config.steps == 0 and config.block_l // config.steps >= 1
    with pytest.raises(ValueError, match="not a multiple"):
        with configs.forced(block_l=8, block_d=4, steps=3):
            pass


def _check_rows(rows, expected_kernels):
    from rv_plugins.ops import triton_compile
    assert {r["kernel"] for r in rows} == expected_kernels
    assert not triton_compile.spills(rows), f"register spills: {triton_compile.spills(rows)}"
    for r in rows:
        assert 0 < r["registers"] <= 255, r
        assert r["steps_in_thread"], f"the step axis of a tile left the thread: {r}"
        assert r["async_copies"] == 0, r            # what the docs say: plain loads, one tile per program
        if r["specialization"] == "aligned":
            assert r["vector_loads"] > 0 and r["programs_per_sm"] >= 2, r
        else:
            assert r["vector_loads"] == 0, r


def test_main_configurations_compile_for_sm90_without_spills():
    """The 64-step, 16-byte-aligned configuration of every kernel (the shapes that matter for speed), as
    the runtime JIT specialises it, in float32 and bfloat16."""
    from rv_plugins.ops import triton_compile
    rows = triton_compile.compile_all_in_subprocess(dtypes=("float32", "bfloat16"), main_only=True)
    _check_rows(rows, set(triton_compile.kernels(compilable=False)))
    assert len(rows) == 4 * 2


@pytest.mark.slow
def test_every_configuration_compiles_for_sm90_without_spills():
    """Every (configuration, alignment) the launchers can pick, every kernel and dtype (~112 compilations)."""
    from rv_plugins.ops import triton_compile
    rows = triton_compile.compile_all_in_subprocess()
    _check_rows(rows, set(triton_compile.kernels(compilable=False)))
    per_kernel = sum(len(configs.all_configs(d)) for d in triton_compile.DTYPES)
    assert len(rows) == 4 * per_kernel


def test_compile_spec_names_every_argument():
    """Every argument of every kernel has a type in the compile spec (a new argument must be added there)."""
    from rv_plugins.ops import triton_compile
    for name, fn in triton_compile.kernels(compilable=False).items():
        signature, constexprs, attrs, options = triton_compile.compile_spec(
            fn, torch.float32, configs.choose(65536, 144, torch.float32), "aligned")
        assert list(signature) == list(fn.arg_names), name
        assert options["num_warps"] == 4
        strides = [i for i, arg in enumerate(fn.arg_names) if arg in ("D", "H", "stride_pb", "stride_pt")]
        assert strides and all((i,) in attrs for i in strides), name
