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


@pytest.mark.parametrize("case", CASES)
def test_torch_backend_matches_reference_fp64(case):
    B, L, H, reverse, bidi, act, use_h0 = case
    compare("torch", B, L, H, reverse, bidi, act, use_h0)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_torch_backend_non_contiguous_fp32(bidirectional):
    compare("torch", 2, 19, 6, False, bidirectional, "g", True, dtype=torch.float32, atol=1e-5, rtol=1e-5,
            non_contiguous=True)


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
