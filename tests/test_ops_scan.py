"""rv_plugins.ops: every scan implementation against the step-by-step reference."""
import pytest
import torch
from tool_loader import load_tool

from rv_plugins.ops import backend_name, layout, linear_scan, linear_scan_reference

SHAPES = [(1, 1, 1), (2, 1, 3), (1, 7, 5), (3, 33, 12), (2, 130, 40)]


def _inputs(shape, dtype=torch.float64, h0=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    B, L, D = shape
    a = (0.5 + 0.6 * torch.rand(B, L, D, generator=g, dtype=torch.float64)).to(dtype)  # some > 1
    a[..., ::3] *= -1  # negative decays too: the scan must not assume a > 0
    b = torch.randn(B, L, D, generator=g, dtype=torch.float64).to(dtype)
    h = torch.randn(B, D, generator=g, dtype=torch.float64).to(dtype) if h0 else None
    return a, b, h


def _with_kernel(kernel, monkeypatch):
    """'cpu-kernel' is the default torch path on the CPU; 'chunked' is its portable fallback."""
    if kernel == "chunked":
        monkeypatch.setenv("RV_SCAN_DISABLE_CPU_KERNEL", "1")
    assert backend_name("cpu", "torch") == f"torch[{kernel}]"


def _grads(backend, a, b, h0, reverse, grad_out):
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in (a, b, h0)]
    h = linear_scan(*leaves, reverse=reverse, backend=backend)
    h.backward(grad_out)
    return [h.detach()] + [t.grad for t in leaves if t is not None]


def _compare(backend, shape, reverse, use_h0, dtype=torch.float64, atol=1e-10, non_contiguous=False):
    a, b, h0 = _inputs(shape, dtype, use_h0)
    if non_contiguous:  # same values, strided memory
        a, b = a.transpose(0, 1).contiguous().transpose(0, 1), b.transpose(1, 2).contiguous().transpose(1, 2)
        assert not b.is_contiguous()
    grad_out = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    expected = _grads("reference", a, b, h0, reverse, grad_out)
    got = _grads(backend, a, b, h0, reverse, grad_out)
    assert got[0].dtype == dtype and got[0].shape == shape
    for name, x, y in zip(["h", "grad_a", "grad_b", "grad_h0"], got, expected):
        torch.testing.assert_close(x, y, atol=atol, rtol=1e-6, msg=f"{backend} {name} {shape} reverse={reverse}")


@pytest.mark.parametrize("kernel", ["cpu-kernel", "chunked"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("use_h0", [False, True])
def test_torch_backend_matches_reference(kernel, shape, reverse, use_h0, monkeypatch):
    _with_kernel(kernel, monkeypatch)
    _compare("torch", shape, reverse, use_h0)


@pytest.mark.parametrize("kernel", ["cpu-kernel", "chunked"])
def test_torch_backend_non_contiguous_float32(kernel, monkeypatch):
    _with_kernel(kernel, monkeypatch)
    _compare("torch", (2, 19, 6), True, True, dtype=torch.float32, atol=1e-5, non_contiguous=True)


@pytest.mark.parametrize("kernel", ["cpu-kernel", "chunked"])
@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck_torch(kernel, reverse, monkeypatch):
    _with_kernel(kernel, monkeypatch)
    a, b, h0 = (t.requires_grad_(True) for t in _inputs((2, 9, 3), h0=True))
    assert torch.autograd.gradcheck(lambda a, b, h0: linear_scan(a, b, h0, reverse, "torch"), (a, b, h0))


def test_gradcheck_reference():
    a, b, h0 = (t.requires_grad_(True) for t in _inputs((2, 6, 3), h0=True))
    assert torch.autograd.gradcheck(lambda a, b, h0: linear_scan(a, b, h0, True, "reference"), (a, b, h0))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kernel", ["cpu-kernel", "chunked"])
def test_half_precision_accumulates_in_float32(dtype, kernel, monkeypatch):
    """Half inputs, float32 accumulation: error stays at the output rounding (bf16: 2^-8 relative)."""
    _with_kernel(kernel, monkeypatch)
    a, b, _ = _inputs((2, 500, 8), torch.float32)
    a = a.abs().clamp(max=0.99)  # a stable recurrence over 500 steps
    exact = linear_scan_reference(a.double(), b.double())
    got = linear_scan(a.to(dtype), b.to(dtype), backend="torch")
    assert got.dtype == dtype
    exact_from_rounded = linear_scan_reference(a.to(dtype).double(), b.to(dtype).double())
    tol = 2 ** -7 if dtype == torch.bfloat16 else 2 ** -10
    torch.testing.assert_close(got.double(), exact_from_rounded, rtol=tol, atol=tol * exact.abs().max().item())


@pytest.mark.triton
@pytest.mark.parametrize("shape", [(1, 1, 3), (2, 7, 5), (1, 70, 3)])  # more in tests/test_ops_triton.py
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("use_h0", [False, True])
def test_triton_matches_reference(shape, reverse, use_h0):
    pytest.importorskip("triton")
    _compare("triton", shape, reverse, use_h0, dtype=torch.float64, atol=1e-10)
    _compare("triton", shape, reverse, use_h0, dtype=torch.float32, atol=1e-5)


@pytest.mark.triton
def test_triton_bfloat16_and_non_contiguous():
    pytest.importorskip("triton")
    _compare("triton", (2, 40, 6), False, True, dtype=torch.float32, atol=1e-5, non_contiguous=True)
    a, b, _ = _inputs((2, 100, 8), torch.float32)
    a = a.abs().clamp(max=0.99)
    got = linear_scan(a.bfloat16(), b.bfloat16(), backend="triton")
    exact = linear_scan_reference(a.bfloat16().double(), b.bfloat16().double())
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), exact, rtol=2 ** -7, atol=2 ** -7 * exact.abs().max().item())


def test_reverse_is_the_flipped_forward_scan():
    a, b, h0 = _inputs((2, 11, 4), h0=True)
    flipped = linear_scan(a.flip(1), b.flip(1), h0, backend="torch").flip(1)
    torch.testing.assert_close(linear_scan(a, b, h0, reverse=True, backend="torch"), flipped)


@pytest.mark.parametrize("call, message", [
    (lambda: linear_scan(torch.rand(2, 3), torch.rand(2, 3)), r"shape \(B, L, D\)"),
    (lambda: linear_scan(torch.rand(2, 3, 4), torch.rand(2, 3, 5)), r"a.shape=\(2, 3, 4\) and b.shape=\(2, 3, 5\)"),
    (lambda: linear_scan(torch.rand(2, 3, 4), torch.rand(2, 3, 4).double()), "same floating dtype|share one floating dtype"),
    (lambda: linear_scan(torch.ones(2, 3, 4, dtype=torch.long), torch.ones(2, 3, 4, dtype=torch.long)), "floating dtype"),
    (lambda: linear_scan(torch.rand(2, 3, 4), torch.rand(2, 3, 4), h0=torch.rand(2, 3)), r"h0 must have shape \(B, D\)=\(2, 4\)"),
    (lambda: linear_scan(torch.rand(2, 3, 4), torch.rand(2, 3, 4), backend="cuda"), "unknown backend 'cuda'"),
    (lambda: linear_scan(torch.rand(2, 0, 4), torch.rand(2, 0, 4)), "empty sequence"),
])
def test_bad_inputs_name_the_problem(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_layout_round_trips_and_views():
    x = torch.randn(2, 5, 3, 4)  # (B, C, H, W)
    seq = layout.to_sequence(x)
    assert seq.shape == (2, 12, 5)
    torch.testing.assert_close(seq[:, 4], x[:, :, 1, 0])  # raster order: row 1, column 0
    torch.testing.assert_close(layout.from_sequence(seq, (3, 4)), x)
    rows = layout.to_sequence_by_rows(x)
    assert rows.shape == (6, 4, 5)
    torch.testing.assert_close(rows[1 * 3 + 2, 3], x[1, :, 2, 3])
    torch.testing.assert_close(layout.from_sequence_by_rows(rows, 2), x)
    cols = layout.to_sequence_by_columns(x)
    assert cols.shape == (8, 3, 5)
    torch.testing.assert_close(cols[1 * 4 + 3, 2], x[1, :, 2, 3])
    torch.testing.assert_close(layout.from_sequence_by_columns(cols, 2), x)
    x_cl = x.permute(0, 2, 3, 1).contiguous()  # channels-last maps give free views
    assert layout.to_sequence(x_cl, channels_last=True).data_ptr() == x_cl.data_ptr()
    assert layout.to_sequence_by_rows(x_cl, channels_last=True)._base is x_cl
    with pytest.raises(ValueError, match="does not match H\\*W"):
        layout.from_sequence(seq, (4, 4))


def test_benchmark_tool_prints_a_table(tmp_path, capsys):
    import json
    tool = load_tool("benchmark_scan")
    tool.main(["--shapes", "2x16x4", "--fused-shapes", "2x16x3", "--repeats", "1", "--json", str(tmp_path / "scan.json")])
    out = capsys.readouterr().out
    assert "| 2×16×4 | fwd+bwd |" in out and "Command: `python tools/benchmark_scan.py" in out
    assert "| 2×16×3 | fwd+bwd |" in out and "speed-up" in out
    report = json.loads((tmp_path / "scan.json").read_text())
    times = report["results"][0]["times"]
    assert set(times) == {"floor", "torch", "chunked", "loop", "logspace"}
    assert all(t["fwd"] > 0 and t["fwd_bwd"] > 0 for t in times.values())
    fused = report["fused"][0]["times"]
    assert set(fused) == {"floor", "fused", "unfused"} and all(t["fwd_bwd"] > 0 for t in fused.values())
    assert "Targets at 2×16×3, fwd+bwd: " in out and "the copy floor (≤ 2×: " in out


def test_benchmark_tool_fused_table_alone(capsys):
    tool = load_tool("benchmark_scan")
    tool.main(["--shapes", "none", "--fused-shapes", "1x8x16", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "| 1×8×16 | fwd+bwd |" in out and "Command: `python tools/benchmark_scan.py --shapes none" in out
    assert "| B×L×D |" not in out


@pytest.mark.triton
def test_benchmark_tool_reports_kernel_resources(capsys):
    pytest.importorskip("triton")
    tool = load_tool("benchmark_scan")
    tool.main(["--shapes", "1x4x2", "--fused-shapes", "none", "--repeats", "1", "--skip", "loop,logspace", "--kernels",
               "main"])
    out = capsys.readouterr().out
    assert "| `_mingru_bwd_kernel` | bf16 | 64×32, 2 | 4 | aligned |" in out
    assert "| `_linear_scan_fwd_kernel` | fp32 | 64×32, 4 | 4 | aligned |" in out
