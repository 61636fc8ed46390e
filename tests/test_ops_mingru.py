"""rv_plugins.ops.mingru_scan: every backend against the plain-PyTorch reference and against MinGRU's maths."""
import pytest
import torch

from rv_plugins.ops import linear_scan_reference, mingru_scan, mingru_scan_reference
from rv_plugins.ops.mingru import g_activation

pytestmark = pytest.mark.usefixtures("one_thread")


def _proj(B, L, H, parts=2, dtype=torch.float64, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(B, L, parts * H, generator=g, dtype=torch.float64)).to(dtype)


def _unfused(proj, h0, reverse, act):
    """MinGRU's forward as written in rv_plugins.layers.mingru (gates as separate ops, then the scan)."""
    gate, cand = proj.chunk(2, -1)
    if act == "g":
        cand = g_activation(cand)
    return linear_scan_reference(torch.sigmoid(-gate), torch.sigmoid(gate) * cand, h0, reverse)


@pytest.mark.parametrize("act", ["identity", "g"])
@pytest.mark.parametrize("reverse", [False, True])
def test_reference_is_minGRU(act, reverse):
    proj = _proj(2, 9, 3)
    h0 = torch.randn(2, 3, dtype=torch.float64)
    torch.testing.assert_close(mingru_scan_reference(proj, h0, reverse, candidate_act=act),
                               _unfused(proj, h0, reverse, act))


def test_reference_bidirectional_is_two_directions():
    proj = _proj(2, 7, 3, parts=4)
    h0 = torch.randn(2, 6, dtype=torch.float64)
    out = mingru_scan_reference(proj, h0, bidirectional=True, candidate_act="g")
    assert out.shape == (2, 7, 6)
    torch.testing.assert_close(out[..., :3], _unfused(proj[..., :6], h0[:, :3], False, "g"))
    torch.testing.assert_close(out[..., 3:], _unfused(proj[..., 6:], h0[:, 3:], True, "g"))


@pytest.mark.parametrize("call, message", [
    (lambda: mingru_scan(torch.rand(2, 3, 5)), r"shape \(B, L, 2H\)"),
    (lambda: mingru_scan(torch.rand(2, 3, 6), bidirectional=True), r"shape \(B, L, 4H\)"),
    (lambda: mingru_scan(torch.rand(2, 3, 4), reverse=1), "must be bools"),
    (lambda: mingru_scan(torch.rand(2, 3, 8), reverse=True, bidirectional=True), "cannot be combined"),
    (lambda: mingru_scan(torch.rand(2, 3, 4), candidate_act="tanh"), "candidate_act='tanh'"),
    (lambda: mingru_scan(torch.rand(2, 3, 4), h0=torch.rand(2, 4)), r"h0 must have shape \(B, H\)=\(2, 2\)"),
    (lambda: mingru_scan(torch.rand(2, 0, 4)), "empty sequence"),
    (lambda: mingru_scan(torch.ones(2, 3, 4, dtype=torch.long)), "must be floating"),
])
def test_bad_inputs_name_the_problem(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def _run(backend, proj, h0, reverse, bidirectional, act, grad_out):
    proj = proj.detach().clone().requires_grad_(True)
    h0 = None if h0 is None else h0.detach().clone().requires_grad_(True)
    h = mingru_scan(proj, h0, reverse, bidirectional, act, backend=backend)
    h.backward(grad_out)
    return [h.detach(), proj.grad] + ([] if h0 is None else [h0.grad])


def compare(backend, B, L, H, reverse=False, bidirectional=False, act="identity", use_h0=False,
            dtype=torch.float64, atol=1e-10, rtol=1e-7, non_contiguous=False):
    parts = 4 if bidirectional else 2
    proj = _proj(B, L, H, parts, dtype)
    if non_contiguous:  # same values, strided: a slice of a wider tensor, transposed batch
        wide = torch.zeros(L, B, parts * H + 5, dtype=dtype)
        wide[..., 2:2 + parts * H] = proj.transpose(0, 1)
        proj = wide[..., 2:2 + parts * H].transpose(0, 1)
        assert not proj.is_contiguous()
    width = (2 if bidirectional else 1) * H
    h0 = torch.randn(B, width, dtype=torch.float64).to(dtype) if use_h0 else None
    grad_out = torch.randn(B, L, width, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).to(dtype)
    expected = _run("reference", proj, h0, reverse, bidirectional, act, grad_out)
    got = _run(backend, proj, h0, reverse, bidirectional, act, grad_out)
    assert got[0].dtype == dtype and got[0].shape == (B, L, width) and got[1].shape == proj.shape
    for name, x, y in zip(["h", "grad_proj", "grad_h0"], got, expected):
        torch.testing.assert_close(x, y, atol=atol, rtol=rtol,
                                   msg=lambda m: f"{backend} {name} B,L,H={B},{L},{H} reverse={reverse} "
                                                 f"bidirectional={bidirectional} act={act}: {m}")


CASES = [  # (B, L, H, reverse, bidirectional, act, use_h0)
    (1, 1, 1, False, False, "identity", False),
    (2, 7, 5, True, False, "g", True),
    (3, 33, 12, False, False, "identity", True),
    (2, 13, 6, False, True, "g", True),
    (1, 130, 40, False, True, "identity", False),
    (2, 67, 3, True, False, "identity", False),
]




@pytest.fixture(params=["cpu-kernel", "chunked"])
def cpu_path(request, monkeypatch):
    """The two CPU paths of backend='torch': the compiled kernel and the no-compiler fallback."""
    if request.param == "chunked":
        monkeypatch.setenv("RV_SCAN_DISABLE_CPU_KERNEL", "1")
    from rv_plugins.ops import backend_name
    assert backend_name("cpu", "torch") == f"torch[{request.param}]"
    return request.param


@pytest.mark.parametrize("case", CASES)
def test_cpu_paths_match_reference_fp64(case, cpu_path):
    B, L, H, reverse, bidi, act, use_h0 = case
    compare("torch", B, L, H, reverse, bidi, act, use_h0)


@pytest.mark.parametrize("case", CASES[1:4])
def test_cpu_paths_match_reference_fp32(case, cpu_path):
    B, L, H, reverse, bidi, act, use_h0 = case
    compare("torch", B, L, H, reverse, bidi, act, use_h0, dtype=torch.float32, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_cpu_paths_non_contiguous_fp32(bidirectional, cpu_path):
    compare("torch", 2, 19, 6, False, bidirectional, "g", True, dtype=torch.float32, atol=1e-5, rtol=1e-5,
            non_contiguous=True)


@pytest.mark.triton
@pytest.mark.parametrize("case", CASES[:4] + CASES[5:])  # the interpreter takes ~1 min for CASES[4]
def test_triton_matches_reference(case):
    pytest.importorskip("triton")
    B, L, H, reverse, bidi, act, use_h0 = case
    compare("triton", B, L, H, reverse, bidi, act, use_h0)
    if case == CASES[3]:
        compare("triton", B, L, H, reverse, bidi, act, use_h0, dtype=torch.float32, atol=1e-5, rtol=1e-5)


@pytest.mark.triton
def test_triton_non_contiguous():
    pytest.importorskip("triton")
    compare("triton", 2, 19, 6, False, True, "g", True, dtype=torch.float32, atol=1e-5, rtol=1e-5, non_contiguous=True)


# ----------------------------------------------------------------------------- precision and length
@pytest.fixture(params=["cpu-kernel", "chunked", pytest.param("triton", marks=pytest.mark.triton)])
def any_path(request, monkeypatch):
    """Every implementation of mingru_scan besides the reference; returns the backend argument."""
    if request.param == "triton":
        pytest.importorskip("triton")
        from rv_plugins.ops.triton_kernels import configs
        with configs.forced(block_l=64, block_d=4, num_warps=1, steps=4):   # small tiles: the interpreter is
            yield "triton"                                                  # slow per element
        return
    if request.param == "chunked":
        monkeypatch.setenv("RV_SCAN_DISABLE_CPU_KERNEL", "1")
    yield "torch"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_in_float32_accumulation(dtype, any_path):
    """Half in, float32 gates and state, half out: error at the output's rounding (bf16 2^-8, fp16 2^-11)."""
    L = 301 if any_path != "triton" else 101   # the interpreter is slow per step; several chunks either way
    proj = _proj(2, L, 8, parts=4, dtype=torch.float32).to(dtype)
    grad_out = torch.randn(2, L, 16).to(dtype)
    exact = _run("reference", proj.double(), None, False, True, "g", grad_out.double())
    got = _run(any_path, proj, None, False, True, "g", grad_out)
    assert got[0].dtype == dtype and got[1].dtype == dtype
    tol = 2 ** -7 if dtype == torch.bfloat16 else 2 ** -9
    for x, y in zip(got, exact):
        torch.testing.assert_close(x.double(), y, rtol=tol, atol=tol * y.abs().max().item())


def test_bfloat16_keeps_long_memory(any_path):
    """Decay 0.999 over 4,096 tokens: bfloat16 would round the decay to 1.0 (no forgetting); gates in
    float32 inside the op keep the float32 memory curve."""
    L, H = 4096, 4
    gate = torch.full((1, L, H), -6.9068)         # sigmoid(-gate) = 0.999
    cand = torch.zeros(1, L, H)
    cand[:, 0] = 1.0                               # one input at t = 0, then only memory
    proj = torch.cat([gate, cand], -1).bfloat16()
    expected = mingru_scan(proj.float(), backend="reference")   # float32 from the same bf16 inputs
    got = mingru_scan(proj, backend=any_path).float()
    assert expected[0, -1, 0] < 0.05 * expected[0, 0, 0]          # it really forgets by the end
    torch.testing.assert_close(got, expected, rtol=2 ** -7, atol=1e-6)
    # what the unfused path did: the decay rounded to bf16 before the scan is 1.0, memory never fades
    a_rounded = torch.sigmoid(-gate.bfloat16())
    assert a_rounded.float().eq(1.0).all()


def _long_proj(L):
    proj = _proj(1, L, 2, dtype=torch.float32, scale=1.0)
    proj[..., :2] -= 4.0  # decays ~0.98: long memories
    return proj


@pytest.mark.slow
def test_very_long_sequence_reference():
    proj, grad_out = _long_proj(65537), torch.randn(1, 65537, 2)
    h, grad = _run("torch", proj.double(), None, True, False, "g", grad_out.double())
    h_ref, grad_ref = _run("reference", proj.double(), None, True, False, "g", grad_out.double())
    torch.testing.assert_close(h, h_ref)
    torch.testing.assert_close(grad, grad_ref)


@pytest.mark.parametrize("reverse", [False, True])
def test_very_long_odd_sequence(any_path, reverse):
    """L = 65,537 (odd, >= 65,536), a small B*H: values and gradients against the fp64 reference."""
    L = 65537 if any_path != "triton" else 513  # the interpreter walks tiles in Python (same code path)
    proj = _long_proj(L)  # decays ~0.02-0.3 and ~0.98: long and short memories
    grad_out = torch.randn(1, L, 2)
    h, grad = _run(any_path, proj, None, reverse, False, "identity", grad_out)
    # the truth: the compiled kernel in float64 (equal to the reference to 1e-10 in the tests above;
    # the step loop itself takes ~10 s here, see test_very_long_sequence_reference)
    h_ref, grad_ref = _run("torch", proj.double(), None, reverse, False, "identity", grad_out.double())
    torch.testing.assert_close(h.double(), h_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad.double(), grad_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("block", ["16", "40"])
def test_cpu_kernel_channel_blocks(block, monkeypatch):
    """The compiled kernel splits a row's channels into jobs of RV_MINGRU_CPU_BLOCK (partial last block)."""
    monkeypatch.setenv("RV_MINGRU_CPU_BLOCK", block)
    compare("torch", 3, 21, 40, False, True, "g", True)
    compare("torch", 2, 17, 40, True, False, "identity", True)


@pytest.mark.parametrize("stream", ["0", "1"])
@pytest.mark.parametrize("H", [20, 48])
def test_cpu_kernel_lane_blocks_fp32(H, stream, monkeypatch):
    """float32 rows of full 16-lane blocks plus a partial one (H=20), visited upwards or from the top
    (reverse scans, backward of forward scans), with ordinary or streaming stores (H=48 is 64-byte aligned)."""
    monkeypatch.setenv("RV_MINGRU_CPU_STREAM", stream)
    tol = dict(dtype=torch.float32, atol=1e-5, rtol=1e-5)
    compare("torch", 2, 23, H, False, False, "identity", True, **tol)
    compare("torch", 2, 23, H, True, False, "g", False, **tol)
    compare("torch", 1, 29, H, False, True, "g", True, **tol)
    compare("torch", 2, 19, H, False, True, "identity", False, non_contiguous=True, **tol)


def test_cpu_kernel_streaming_stores_change_nothing(monkeypatch):
    """Streaming stores (chosen for outputs of 8 MiB and more) give bit-identical outputs and gradients."""
    from rv_plugins.ops import cpu_kernel
    if not cpu_kernel.available():
        pytest.skip("no compiled CPU kernel")
    proj = _proj(3, 41, 32, 4, torch.float32)
    h0, grad_out = torch.randn(3, 64), torch.randn(3, 41, 64)
    results = {}
    for stream in ("0", "1"):
        monkeypatch.setenv("RV_MINGRU_CPU_STREAM", stream)
        assert cpu_kernel._stream(proj.numel(), proj.dtype) == (stream == "1")
        results[stream] = _run("torch", proj, h0, False, True, "g", grad_out)
    for x, y in zip(results["0"], results["1"]):
        assert torch.equal(x, y)
    monkeypatch.setenv("RV_MINGRU_CPU_STREAM", "yes")
    with pytest.raises(ValueError, match="RV_MINGRU_CPU_STREAM"):
        cpu_kernel._stream(proj.numel(), proj.dtype)
    monkeypatch.delenv("RV_MINGRU_CPU_STREAM")
    assert cpu_kernel._stream(2 << 20, torch.float32) and not cpu_kernel._stream(2 << 20, torch.bfloat16)
    assert not cpu_kernel._stream((2 << 20) - 1, torch.float32)


@pytest.mark.parametrize("reverse", [False, True])
def test_nan_and_inf_propagate_like_the_reference(cpu_path, reverse):
    """A NaN gate or candidate makes h NaN from that step on in its channel, as in the reference; +-inf
    gates saturate the gates (the kernel's exp works without libm and must not turn them into NaN)."""
    proj = _proj(1, 37, 20, 2, torch.float32)
    proj[0, 9, 3] = float("nan")        # gate of channel 3
    proj[0, 20, 20 + 7] = float("nan")  # candidate of channel 7
    proj[0, 5, 11] = float("inf")
    proj[0, 6, 12] = -float("inf")
    h = mingru_scan(proj, reverse=reverse, backend="torch")
    h_ref = mingru_scan_reference(proj, reverse=reverse)
    assert torch.equal(h.isnan(), h_ref.isnan()) and h.isnan().any()
    finite = ~h_ref.isnan()
    torch.testing.assert_close(h[finite], h_ref[finite], atol=1e-5, rtol=1e-5)
