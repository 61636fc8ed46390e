"""VisionGRU on the fused minGRU scan: the one-call bidirectional mixer, memory-lean chunked inference
(equal to the one-call path, no full-size temporaries) and ``torch.compile`` without graph breaks."""
import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from rv_plugins.backbones.visiongru import (ConvLN, GRU2DBlock, GRU2DMixer, Stem, VisionGRU, set_infer_chunk)
from rv_plugins.layers.mingru import MinGRU
from rv_plugins.ops import registry

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(embed_dims=[8, 16, 32, 64], depths=[2, 1, 1, 1])


class _OpLog(TorchDispatchMode):
    """Records every ATen / custom op call: its name and the largest output it produced (elements)."""

    def __init__(self):
        super().__init__()
        self.names, self.max_numel = [], 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.names.append(func.name())
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor):
                self.max_numel = max(self.max_numel, t.numel())
        return out

    def count(self, name: str) -> int:
        return sum(n == name for n in self.names)


SCAN = "rv_plugins::mingru_scan"
GEMMS = ("aten::mm", "aten::addmm", "aten::bmm")


def _with_act(module, act):
    for m in module.modules():
        if isinstance(m, MinGRU):
            m.candidate_act = act
    return module


def _assert_same_values_and_grads(out, expected, x, x_ref, module, ref):
    """``out == expected``, then after one randomly weighted backward of each: ``x.grad == x_ref.grad`` and
    every parameter gradient of ``module`` equals ``ref``'s."""
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
    w = torch.randn_like(out)
    (out * w).sum().backward()
    (expected * w).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-6, rtol=1e-5)
    for (name, p), p_ref in zip(module.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, atol=1e-5, rtol=1e-5, msg=name)


# ----------------------------------------------------------------------------- one bidirectional call
@pytest.mark.parametrize("act", ["identity", "g"])
def test_mixer_equals_two_mingrus_with_grads(act):
    """The fused mixer (one GEMM, one bidirectional scan, one GEMM) = the two minGRUs summed, values and
    gradients (input and every parameter), against the plain-PyTorch reference scan."""
    torch.manual_seed(0)
    fused = _with_act(GRU2DMixer(8), act)
    ref = copy.deepcopy(fused)
    for g in (ref.gru_fwd, ref.gru_bwd):
        g.backend = "reference"
    x = torch.randn(2, 5, 7, 8, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    out = fused(x)
    y = ref.dwconv(x_ref.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    expected = ref.scan_forward(y) + ref.scan_reverse(y)
    _assert_same_values_and_grads(out, expected, x, x_ref, fused, ref)


def test_mixer_runs_one_scan_and_two_gemms():
    torch.manual_seed(0)
    mixer = GRU2DMixer(8)
    y = torch.randn(1, 4, 6, 8)
    with _OpLog() as log:
        mixer.mix(y)
    assert log.count(SCAN) == 1
    assert sum(log.count(g) for g in GEMMS) == 2, log.names
    with _OpLog() as log:  # the per-direction path it replaces: two scans, four GEMMs
        mixer.scan_forward(y) + mixer.scan_reverse(y)
    assert log.count(SCAN) == 2 and sum(log.count(g) for g in GEMMS) == 4


def test_mixer_state_dict_keys_unchanged():
    """Checkpoints keep loading: the fused call concatenates the weights at run time."""
    keys = set(GRU2DMixer(8).state_dict())
    assert keys == {"dwconv.weight", "dwconv.bias", "gru_fwd.in_proj.weight", "gru_fwd.out_proj.weight",
                    "gru_bwd.in_proj.weight", "gru_bwd.out_proj.weight"}


def test_mixer_with_different_directions_falls_back():
    torch.manual_seed(0)
    mixer = GRU2DMixer(8)
    mixer.gru_bwd.candidate_act = "g"
    y = torch.randn(1, 3, 4, 8)
    with _OpLog() as log:
        out = mixer.mix(y)
    assert log.count(SCAN) == 2
    torch.testing.assert_close(out, mixer.scan_forward(y) + mixer.scan_reverse(y))


# ----------------------------------------------------------------------------- memory-lean inference
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_h0", [False, True])
def test_mingru_chunked_inference_equals_one_call(reverse, with_h0):
    torch.manual_seed(0)
    gru = MinGRU(6, reverse=reverse, candidate_act="g").eval()
    x = torch.randn(2, 37, 6)
    h0 = torch.randn(2, gru.hidden_dim) if with_h0 else None
    with torch.no_grad():
        expected = gru(x, h0)
        for chunk in (1, 5, 36):
            gru.infer_chunk_tokens = chunk
            with _OpLog() as log:
                out = gru(x, h0)
            assert log.count(SCAN) == -(-37 // chunk)
            torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
    with _OpLog() as log:  # autograd on: one call
        gru(x, h0)
    assert log.count(SCAN) == 1


@pytest.mark.parametrize("module,shape", [
    (lambda: GRU2DBlock(8), (2, 9, 13, 8)), (lambda: GRU2DMixer(8), (2, 9, 13, 8)),
    (lambda: Stem(3, 8), (2, 3, 37, 53)), (lambda: ConvLN(8, 16, channels_last_in=True), (2, 9, 13, 8)),
    (lambda: ConvLN(3, 16), (2, 3, 10, 13)),
])
def test_chunked_modules_equal_one_call(module, shape):
    torch.manual_seed(0)
    mod = module().eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        expected = set_infer_chunk(mod, None)(x)
        for elems in (1, 60, 300):  # one row per chunk, a few rows, most of the map
            out = set_infer_chunk(mod, elems)(x)
            torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("preset", ["paper", "released"])
@pytest.mark.parametrize("hw", [(61, 45), (130, 18)])
def test_lean_inference_equals_one_call(preset, hw):
    torch.manual_seed(0)
    model = VisionGRU(SMALL, out_indices=(0, 1, 2, 3), preset=preset, img_size=64).eval()
    x = torch.randn(2, 3, *hw)
    x_before = x.clone()
    with torch.no_grad():
        expected = set_infer_chunk(model, None)(x)
        with _OpLog() as log:
            out = set_infer_chunk(model, 200)(x)
    assert log.count(SCAN) > 2 * sum(SMALL["depths"])  # the chunked path ran
    for a, b in zip(out, expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert torch.equal(x, x_before)  # in-place work only on the model's own maps


def test_lean_inference_has_no_full_size_temporaries():
    """No op output is larger than the first stage's map (the one-call path makes an 8x projection)."""
    torch.manual_seed(0)
    arch = dict(embed_dims=[8, 8, 8, 8], depths=[2, 1, 1, 1])  # weights (and their concatenations) stay small
    model = VisionGRU(arch, img_size=None, num_classes=3).eval()
    x = torch.randn(1, 3, 128, 128)
    stage0 = 32 * 32 * 8
    with torch.no_grad():
        with _OpLog() as full:
            expected = model.forward_head(set_infer_chunk(model, None)(x))
        with _OpLog() as lean:
            out = model.forward_head(set_infer_chunk(model, 1024)(x))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert full.max_numel >= 8 * stage0
    assert lean.max_numel <= stage0, lean.max_numel


def test_lean_path_only_without_autograd_in_eval():
    torch.manual_seed(0)
    model = set_infer_chunk(VisionGRU(SMALL, drop_path_rate=0.0), 1)
    x = torch.randn(1, 3, 32, 32)
    one_call = sum(SMALL["depths"])  # one bidirectional scan per block
    for train, grad in ((True, False), (False, True), (True, True)):
        model.train(train)
        with torch.set_grad_enabled(grad), _OpLog() as log:
            model(x)
        assert log.count(SCAN) == one_call, (train, grad)
    model.eval()
    with torch.no_grad(), _OpLog() as log:
        model(x)
    assert log.count(SCAN) > one_call


# ----------------------------------------------------------------------------- torch.compile
def _graph_breaks(model, x, grad):
    torch._dynamo.reset()
    with torch.set_grad_enabled(grad):
        explanation = torch._dynamo.explain(model)(x)
    torch._dynamo.reset()
    return explanation


@pytest.mark.parametrize("train,chunk", [(True, None), (False, 100), (False, "auto")])
def test_compile_has_no_graph_breaks(train, chunk, monkeypatch):
    from rv_plugins.layers import row_chunked
    torch.manual_seed(0)
    model = VisionGRU(SMALL, out_indices=(0, 1, 2, 3), num_classes=5).train(train)
    if not train:  # the chunked inference path (Python loops over chunks) too, with an explicit or the auto chunk
        set_infer_chunk(model, chunk)
        monkeypatch.setattr(row_chunked, "INFER_CHUNK_ELEMS_SMALL_IMAGE", 64)  # auto: chunk this small image
    e = _graph_breaks(model, torch.randn(1, 3, 40, 24), grad=train)
    assert e.graph_break_count == 0, [b.reason for b in e.break_reasons]
    assert e.graph_count == 1


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["paper", "released"])
def test_compile_visiongru_ti_has_no_graph_breaks(preset):
    """The real VisionGRU-Ti (train step with autograd, and inference) traces as one graph."""
    model = VisionGRU("tiny", preset=preset, num_classes=10)
    for train in (True, False):
        e = _graph_breaks(model.train(train), torch.randn(1, 3, 64, 64), grad=train)
        assert e.graph_break_count == 0, [b.reason for b in e.break_reasons]
        assert e.graph_count == 1


# ----------------------------------------------------------------------------- memory-lean training
@pytest.mark.parametrize("act", ["identity", "g"])
@pytest.mark.parametrize("chunk_tokens", [None, 1, 7])
def test_recomputing_training_path_equals_plain_ops(act, chunk_tokens):
    """The training path that stores no projection (recomputed in the backward; in token chunks with the
    state and its gradient carried across chunks) and no GELU output gives the plain path's values and
    gradients."""
    torch.manual_seed(0)
    block = _with_act(GRU2DBlock(8), act).train()
    plain = copy.deepcopy(block)
    plain.recompute_gelu = plain.mixer.recompute_proj = False
    if chunk_tokens is not None:
        block.mixer.train_chunk_elems = chunk_tokens * 2 * block.mixer.gru_fwd.hidden_dim
    x = torch.randn(2, 5, 9, 8, requires_grad=True)
    x_plain = x.detach().clone().requires_grad_()
    _assert_same_values_and_grads(block(x), plain(x_plain), x, x_plain, block, plain)


def test_recomputing_training_path_refuses_double_backward():
    torch.manual_seed(0)
    block = GRU2DBlock(8).train()
    x = torch.randn(1, 3, 4, 8, requires_grad=True)
    with pytest.raises(RuntimeError, match="double backward.*recompute"):
        torch.autograd.grad(block(x).square().sum(), x, create_graph=True)
    block.recompute_gelu = block.mixer.recompute_proj = False  # the plain ops: twice differentiable
    (g,) = torch.autograd.grad(block(x).square().sum(), x, create_graph=True)
    g.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_compile_chunked_training_path_has_no_graph_breaks():
    torch.manual_seed(0)
    model = VisionGRU(SMALL, num_classes=5).train()
    for m in model.modules():
        if isinstance(m, GRU2DMixer):
            m.train_chunk_elems = 64
    e = _graph_breaks(model, torch.randn(1, 3, 40, 24), grad=True)
    assert e.graph_break_count == 0, [b.reason for b in e.break_reasons]


@pytest.mark.parametrize("chunk_tokens", [None, 7])
def test_recomputing_training_path_under_bf16_autocast(chunk_tokens):
    """Under autocast the recomputed projection has the forward's dtype: one call is exact against the
    plain ops; token chunks round the carried state to bfloat16 at chunk boundaries only."""
    torch.manual_seed(0)
    block = GRU2DBlock(8).train()
    plain = copy.deepcopy(block)
    plain.recompute_gelu = plain.mixer.recompute_proj = False
    if chunk_tokens is not None:
        block.mixer.train_chunk_elems = chunk_tokens * 2 * block.mixer.gru_fwd.hidden_dim
    x = torch.randn(2, 5, 9, 8)
    results = []
    for m in (block, plain):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(x)
        out.float().square().mean().backward()
        results.append((out.detach().float(), [p.grad for p in m.parameters()]))
    (o1, g1), (o2, g2) = results
    tol = dict(atol=0, rtol=0) if chunk_tokens is None else dict(atol=1e-2, rtol=2e-2)
    torch.testing.assert_close(o1, o2, **tol)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=tol["atol"] and 1e-2 * float(b.abs().max()), rtol=tol["rtol"])


def test_chunked_inference_default_depends_on_the_device_and_explicit_applies_everywhere():
    """'auto' (the default) chunks at 2**16 map elements per image on the CPU for large maps (whole batch more
    than 2**21 elements), at 2**18 for smaller ones, and elsewhere every map of the batch larger than 2**21
    elements in chunks of 2**21 elements of the batch; an explicit chunk applies on any device to every
    image's map larger than it."""
    from rv_plugins.backbones.visiongru import (INFER_CHUNK_ELEMS, INFER_CHUNK_ELEMS_ACCELERATOR,
                                                INFER_CHUNK_ELEMS_SMALL_IMAGE, INFER_LARGE_IMAGE_ELEMS, _lean)
    from rv_plugins.layers.row_chunked import chunk_rows
    assert (INFER_CHUNK_ELEMS, INFER_CHUNK_ELEMS_SMALL_IMAGE, INFER_LARGE_IMAGE_ELEMS,
            INFER_CHUNK_ELEMS_ACCELERATOR) == (2 ** 16, 2 ** 18, 2 ** 21, 2 ** 21)
    block = GRU2DBlock(8).eval()
    mid, mid2, large = 2 ** 14, 2 ** 16, 2 ** 18  # tokens; x 8 channels: 2**17, 2**19 and 2**21 elements
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    with torch.no_grad():
        assert not _lean(block, mid, 8, cpu)             # a small image's map below 2**18: one call
        assert _lean(block, mid2, 8, cpu)                # ... above: chunks of 2**18
        assert not _lean(block, mid, 8, cpu, batch=16)   # a batch of 16: 2**21 elements, chunks of 2**18
        assert _lean(block, mid, 8, cpu, batch=17)       # a batch of 17: more, chunks of 2**16
        assert _lean(block, large, 8, cpu)
        assert not _lean(block, mid2, 8, cuda)           # the GPU counts the batch's map: 2**19
        assert not _lean(block, large, 8, cuda)          # 2**21: not more than the chunk
        assert _lean(block, large + 1, 8, cuda)
        assert _lean(block, mid2, 8, cuda, batch=5)      # 5 x 2**19 > 2**21
        assert not _lean(block, mid2, 8, cuda, batch=4)
        assert chunk_rows(block, cuda, 4, 512, 512, 8) == 2 ** 21 // 4 // (512 * 8)  # 128 rows of 4 images
        assert chunk_rows(block, cpu, 4, 512, 512, 8) == 2 ** 16 // (512 * 8)        # per image on the CPU
        set_infer_chunk(block, 1024)
        assert _lean(block, mid, 8, cuda) and _lean(block, mid, 8, cpu)
        set_infer_chunk(block, "auto")
        assert not _lean(block, mid2, 8, cuda)
        set_infer_chunk(block, None)
        assert not _lean(block, large, 8, cpu)
    with pytest.raises(ValueError, match="'auto'"):
        set_infer_chunk(block, "sometimes")


def test_auto_chunking_is_decided_per_image_by_the_first_stage_map(monkeypatch):
    """Under 'auto' on the CPU VisionGRU chunks every map of a large image at the small chunk (the last
    stage's too, however small its map) and a small image's maps at the larger chunk; all give the
    one-call result."""
    from rv_plugins.layers import row_chunked
    torch.manual_seed(0)
    model = VisionGRU(SMALL, drop_path_rate=0.0, num_classes=3).eval()
    # each stage judges the image by its first-stage map: 4**i * C0 / Ci of its own map's elements
    assert [[m.first_stage_ratio for m in s.modules() if hasattr(m, "first_stage_ratio")] for s in model.stages] \
        == [[1.0] * 4, [2.0] * 3, [4.0] * 3, [8.0] * 3]  # (downsampling ConvLN,) block, mixer per block
    assert model.stem.first_stage_ratio == 1.0
    one_call = sum(SMALL["depths"])  # one bidirectional scan per block
    x = torch.randn(2, 3, 32, 32)    # first-stage map: 2 x 8 x 8 tokens x 8 channels = 1024 elements
    with torch.no_grad():
        expected = set_infer_chunk(model, None)(x)[-1]
        set_infer_chunk(model, "auto")
        with _OpLog() as log:
            model(x)
        assert log.count(SCAN) == one_call
        monkeypatch.setattr(row_chunked, "INFER_CHUNK_ELEMS", 8)              # chunks of one row or less
        monkeypatch.setattr(row_chunked, "INFER_CHUNK_ELEMS_SMALL_IMAGE", 256)
        monkeypatch.setattr(row_chunked, "INFER_LARGE_IMAGE_ELEMS", 1023)     # this image is large
        with _OpLog() as log:
            out = model(x)[-1]
        assert log.count(SCAN) >= 4 * one_call  # every stage chunked (the last map is 1 x 1 x 64: 2 directions)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        monkeypatch.setattr(row_chunked, "INFER_LARGE_IMAGE_ELEMS", 1024)     # small: only stage 0's map
        with _OpLog() as log:                                               # (512 per image > 256) chunked,
            out = model(x)[-1]                                              # in 2 chunks of 4 rows
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        stage0 = SMALL["depths"][0]
        assert log.count(SCAN) == stage0 * 2 * 2 + (one_call - stage0)     # x 2 directions x 2 chunks


# ----------------------------------------------------------------------------- tracing and exporting
@pytest.mark.parametrize("train", [False, True])
def test_tracing_takes_the_plain_one_call_path(train):
    """torch.jit.trace records one bidirectional scan per block and no Python autograd Function: no row
    chunks (eval, no autograd, a chunk of 1 element), no projection-recomputing or GELU-recomputing
    Function (train, autograd), the MinGRU token chunks neither; the traced model gives the eager result."""
    torch.manual_seed(0)
    model = set_infer_chunk(VisionGRU(SMALL, drop_path_rate=0.0, img_size=None).train(train), 1)
    for m in model.modules():
        if isinstance(m, MinGRU):
            m.infer_chunk_tokens = 1
    x = torch.randn(1, 3, 40, 24)
    with torch.set_grad_enabled(train):
        traced = torch.jit.trace(model, x, check_trace=False)
        graph = str(traced.inlined_graph)
        assert graph.count("rv_plugins::mingru_scan") == sum(SMALL["depths"])   # one bidirectional scan per block
        assert "prim::PythonOp" not in graph
        torch.testing.assert_close(traced(x)[-1], model(x)[-1], atol=1e-5, rtol=1e-5)
    model.eval()
    with torch.no_grad(), _OpLog() as log:  # the same model in eager mode does chunk
        model(x)
    assert log.count(SCAN) > sum(SMALL["depths"])


def test_torch_export_takes_the_plain_one_call_path(monkeypatch):
    torch.manual_seed(0)
    model = set_infer_chunk(VisionGRU(SMALL, drop_path_rate=0.0, img_size=None).eval(), 1)
    x = torch.randn(1, 3, 40, 24)
    export_kernels = registry.export_backend().load()   # what the ops run while torch.export records them
    calls = []
    scan = export_kernels.mingru_scan
    monkeypatch.setattr(export_kernels, "mingru_scan", lambda *args: calls.append(args[3]) or scan(*args))
    with torch.no_grad():
        exported = torch.export.export(model, (x,))
    assert calls == [True] * sum(SMALL["depths"])          # one bidirectional scan per block, no row chunks
    assert not [n for n in exported.graph.nodes if "rv_plugins" in str(n.target)]   # plain ATen ops
