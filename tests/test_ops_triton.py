"""Triton kernels of rv_plugins.ops: every kernel compiles for sm_80 / sm_90 (no GPU needed), and the
chunked time-parallel scan matches the reference (under TRITON_INTERPRET=1 on a CPU-only machine)."""
import pytest
import torch

from rv_plugins.ops import linear_scan, linear_scan_reference

triton = pytest.importorskip("triton")
pytestmark = [pytest.mark.triton, pytest.mark.usefixtures("one_thread")]


def test_every_kernel_compiles_for_sm80_and_sm90():
    from rv_plugins.ops import triton_compile
    rows = triton_compile.compile_all_in_subprocess(capabilities=(80, 90), dtypes=("float32", "bfloat16"))
    expected = set(triton_compile.KERNEL_CONSTEXPRS)
    assert {r["kernel"] for r in rows} == expected, "a kernel was not compiled (or a spec has no kernel)"
    assert len(rows) == len(expected) * 4
    for r in rows:
        assert 0 < r["registers"] <= 255 and r.get("stack_bytes", 0) == 0, f"register spills: {r}"
        assert r["shared_bytes"] < 100 * 1024, r


def test_every_kernel_has_a_compile_spec():
    """Kernels found by name in triton_scan (works under the interpreter too) all have specs."""
    from rv_plugins.ops import triton_compile, triton_scan
    names = {n for n in vars(triton_scan) if n.endswith("_kernel")}
    assert names == set(triton_compile.KERNEL_CONSTEXPRS)


@pytest.fixture
def small_chunks(monkeypatch):
    from rv_plugins.ops import triton_scan
    monkeypatch.setattr(triton_scan, "CHUNK", 64)  # several chunks at interpreter-friendly lengths
    monkeypatch.setattr(triton_scan, "use_chunked", lambda B, L, D: True)
    return triton_scan


@pytest.mark.parametrize("shape, reverse, use_h0", [((1, 301, 5), False, True), ((2, 200, 3), True, True),
                                                    ((1, 64, 2), True, False), ((1, 7, 3), False, False)])
def test_chunked_scan_matches_reference(small_chunks, shape, reverse, use_h0):
    g = torch.Generator().manual_seed(0)
    a = (0.6 + 0.5 * torch.rand(shape, generator=g, dtype=torch.float64))
    a[..., ::2] *= -1
    b = torch.randn(shape, generator=g, dtype=torch.float64)
    h0 = torch.randn(shape[0], shape[2], generator=g, dtype=torch.float64) if use_h0 else None
    grad = torch.randn(shape, generator=g, dtype=torch.float64)
    results = []
    for backend in ("triton", "reference"):
        leaves = [t.clone().requires_grad_(True) for t in (a, b) + ((h0,) if use_h0 else ())]
        h = linear_scan(*leaves[:2], leaves[2] if use_h0 else None, reverse, backend)
        h.backward(grad)
        results.append([h.detach()] + [t.grad for t in leaves])
    for x, y in zip(*results):
        torch.testing.assert_close(x, y, atol=1e-10, rtol=1e-8)
    # bf16 in, float32 carries
    got = small_chunks.scan_forward_chunked(a.abs().clamp(max=0.99).bfloat16(), b.bfloat16(), None, reverse)
    exact = linear_scan_reference(a.abs().clamp(max=0.99).bfloat16().double(), b.bfloat16().double(), None, reverse)
    torch.testing.assert_close(got.double(), exact, rtol=2 ** -7, atol=2 ** -7 * exact.abs().max().item())


def test_chunked_scan_edge_values(small_chunks):
    a, b = torch.full((1, 200, 2), 1e30), torch.zeros(1, 200, 2)
    assert torch.equal(linear_scan(a, b, backend="triton"), torch.zeros_like(a))
    a = torch.full((1, 150, 2), 0.5)
    a[0, 100, 0] = float("inf")
    b = torch.ones(1, 150, 2)
    torch.testing.assert_close(linear_scan(a, b, reverse=True, backend="triton"),
                               linear_scan(a, b, reverse=True, backend="reference"), equal_nan=True)


def test_chunked_scan_is_chosen_for_few_long_sequences():
    from rv_plugins.ops.triton_scan import use_chunked
    assert use_chunked(1, 65536, 144)       # VisionGRU-Ti stage 1 at 1024²: 18 programs otherwise
    assert not use_chunked(64, 65536, 144)  # enough programs already
    assert not use_chunked(1, 512, 144)     # too short to cut
