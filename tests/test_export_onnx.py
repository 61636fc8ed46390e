"""Export: the scan's composite lowering, tracing at one size and running at another, ONNX with both
exporters against onnxruntime (small sizes here; the 224^2 / 512^2 figures: tools/benchmark_onnx.py)."""
import warnings

import pytest
import torch
from torch import nn

from rv_plugins.ops import linear_scan, linear_scan_reference, mingru_scan, mingru_scan_reference
from rv_plugins.ops.parallel import levels_for, linear_scan_parallel, max_length, mingru_scan_parallel

pytestmark = pytest.mark.usefixtures("one_thread")

ort = pytest.importorskip("onnxruntime")
from rv_plugins.export import (AdaptiveAvgPool2dAsMatmul, compare_with_eager, export_onnx,  # noqa: E402
                               onnxruntime_session, relative_error, run_onnx)

TOL = 1e-4  # the bar: onnxruntime within 1e-4 relative of eager


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():  # the exporters' and the tracer's advice about Python values
        warnings.simplefilter("ignore")
        yield


def _scan_inputs(L, D=5, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = 0.5 + 0.6 * torch.rand(B, L, D, generator=g, dtype=torch.float64)
    a[..., ::3] *= -1   # negative decays
    a[:, ::7, 1] = 0    # and exact zeros: no log anywhere
    b = torch.randn(B, L, D, generator=g, dtype=torch.float64)
    return a, b, torch.randn(B, D, generator=g, dtype=torch.float64)


# ----------------------------------------------------------------------------- the lowering
@pytest.mark.parametrize("L", [1, 2, 15, 16, 17, 100, 257, 1000])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("chunk", [2, 3, 16])
def test_linear_scan_parallel_matches_reference(L, reverse, chunk):
    a, b, h0 = _scan_inputs(L)
    for init in (None, h0):
        torch.testing.assert_close(linear_scan_parallel(a, b, init, reverse, chunk),
                                   linear_scan_reference(a, b, init, reverse), rtol=1e-10, atol=1e-10)


def test_linear_scan_parallel_gradients_and_overflow():
    a, b, h0 = (t.requires_grad_() for t in _scan_inputs(40, D=3))
    got = torch.autograd.grad(linear_scan_parallel(a, b, h0, True, 4).sum(), (a, b, h0))
    expected = torch.autograd.grad(linear_scan_reference(a, b, h0, True).sum(), (a, b, h0))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)
    big = torch.full((1, 200, 2), 1e3)  # decay products overflow to inf; a zero state must stay 0, not NaN
    h = linear_scan_parallel(big, torch.zeros_like(big), None, False, 8)
    assert torch.equal(h, torch.zeros_like(h))


@pytest.mark.parametrize("bidirectional,reverse", [(False, False), (False, True), (True, False)])
@pytest.mark.parametrize("act", ["identity", "g"])
def test_mingru_scan_parallel_matches_reference(bidirectional, reverse, act):
    g = torch.Generator().manual_seed(1)
    proj = 3 * torch.randn(2, 300, 24 if bidirectional else 12, generator=g, dtype=torch.float64)
    h0 = torch.randn(2, 12 if bidirectional else 6, generator=g, dtype=torch.float64)
    for init in (None, h0):
        torch.testing.assert_close(mingru_scan_parallel(proj, init, reverse, bidirectional, act),
                                   mingru_scan_reference(proj, init, reverse, bidirectional, act))
    half = proj.float()[:, :40]
    torch.testing.assert_close(mingru_scan_parallel(half, None, reverse, bidirectional, act),
                               mingru_scan(half, None, reverse, bidirectional, act), rtol=1e-5, atol=1e-6)


def test_levels():
    assert [levels_for(n, 16) for n in (1, 16, 17, 256, 257, 65536)] == [1, 1, 2, 2, 3, 4]
    assert max_length(4) == 65536
    with pytest.raises(ValueError, match="at most 16 steps"):
        linear_scan_parallel(*_scan_inputs(17)[:2], levels=1)


class _Scan(nn.Module):
    def __init__(self, reverse, chunk=4):
        super().__init__()
        self.reverse, self.chunk = reverse, chunk

    def forward(self, a, b, h0):
        return linear_scan_parallel(a, b, h0, self.reverse, self.chunk)


@pytest.mark.parametrize("reverse", [False, True])
def test_a_traced_scan_is_right_at_every_length_or_refuses(reverse):
    a, b, h0 = _scan_inputs(37, D=3)
    traced = torch.jit.trace(_Scan(reverse), (a, b, h0), check_trace=False)  # 4 levels of 4: up to 256 steps
    for L in (1, 3, 4, 5, 37, 100, 256):
        a, b, _ = _scan_inputs(L, D=3, seed=L)
        torch.testing.assert_close(traced(a, b, h0), linear_scan_reference(a, b, h0, reverse))
    a, b, _ = _scan_inputs(257, D=3)
    with pytest.raises(RuntimeError, match="negative dimension"):
        traced(a, b, h0)


def test_public_ops_take_the_composite_while_exporting_and_the_op_in_a_plain_trace():
    class Both(nn.Module):
        def forward(self, a, b, proj):
            return linear_scan(a, b), mingru_scan(proj, bidirectional=True, candidate_act="g")

    a, b, _ = _scan_inputs(20, D=4)
    proj = torch.randn(2, 20, 16, dtype=torch.float64)
    with torch.no_grad():
        exported = torch.export.export(Both(), (a, b, proj))
    targets = [str(n.target) for n in exported.graph.nodes]
    assert not [t for t in targets if "rv_plugins" in t] and any("mul" in t for t in targets)
    # a TorchScript trace keeps the ops (any size, the fast kernels; counters see them)
    traced = torch.jit.trace(Both(), (a, b, proj), check_trace=False)
    assert str(traced.graph).count("rv_plugins::") == 2
    a2, b2, _ = _scan_inputs(33, D=4)
    proj2 = torch.randn(2, 33, 16, dtype=torch.float64)
    for got, want in zip(traced(a2, b2, proj2), Both()(a2, b2, proj2)):
        torch.testing.assert_close(got, want)


# ----------------------------------------------------------------------------- ONNX helpers
def test_adaptive_pool_as_matmul_equals_adaptive_pool():
    x = torch.randn(2, 3, 7, 11)
    for size in (1, 2, 3, 6, (4, None), (None, 5), (7, 11), (9, 13)):
        torch.testing.assert_close(AdaptiveAvgPool2dAsMatmul(size)(x), nn.AdaptiveAvgPool2d(size)(x))


def test_relative_error_and_input_count():
    assert relative_error(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 4.0])) == 0.5
    with pytest.raises(ValueError, match="shapes differ"):
        relative_error(torch.zeros(2), torch.zeros(3))


def _check(model, x, tmp_path, legacy, sizes=(), dynamic=False):
    """Export ``model`` at ``x``; compare with eager at ``x`` and, for dynamic exports, at ``sizes``."""
    result = export_onnx(model, x, str(tmp_path / "m.onnx"), legacy=legacy, dynamic=dynamic)
    session = onnxruntime_session(result.path)
    errors = compare_with_eager(model, session, x)
    for size in sizes:
        errors += compare_with_eager(model, session, torch.randn(*size))
    assert max(errors) < TOL, errors
    return result, session


# ----------------------------------------------------------------------------- models
def _visiongru(preset):
    from rv_plugins.backbones.visiongru import VisionGRU
    torch.manual_seed(0)
    return VisionGRU(arch=dict(embed_dims=[8, 16, 32, 64], depths=[1, 1, 1, 1]), preset=preset, img_size=32,
                     out_indices=(0, 1, 2, 3))


def test_visiongru_legacy_dynamic_export_runs_at_other_sizes(tmp_path):
    result, _ = _check(_visiongru("paper"), torch.randn(1, 3, 32, 32), tmp_path, legacy=True, dynamic=True,
                       sizes=[(2, 3, 45, 61), (1, 3, 16, 96)])
    assert result.exporter == "legacy" and len(result.output_names) == 4


def test_visiongru_legacy_static_export(tmp_path):
    _check(_visiongru("released"), torch.randn(1, 3, 40, 24), tmp_path, legacy=True)


@pytest.mark.parametrize("dynamo", [True, False])
def test_visiongru_plain_torch_onnx_export(dynamo, tmp_path):
    """As a new user does it: ``torch.onnx.export(model, x)`` with autograd on (the default exporter failed
    on the scan op, the legacy one on the memory-saving autograd Functions), then onnxruntime."""
    model, x = _visiongru("released").eval(), torch.randn(1, 3, 32, 32)
    path = str(tmp_path / "plain.onnx")
    torch.onnx.export(model, (x,), path, dynamo=dynamo, **({"external_data": False} if dynamo else {}))
    session = onnxruntime_session(path)
    assert max(compare_with_eager(model, session, x)) < TOL
    if dynamo:
        with pytest.raises(Exception, match="dimension"):  # a static graph: other sizes are refused
            run_onnx(session, torch.randn(1, 3, 48, 32))


def test_dynamic_needs_the_legacy_exporter(tmp_path):
    with pytest.raises(ValueError, match="legacy"):
        export_onnx(_visiongru("released"), torch.randn(1, 3, 32, 32), str(tmp_path / "m.onnx"), dynamic=True)


def _sequencer(rnn_type, depths=(1, 1, 1, 1)):
    from rv_plugins.backbones.sequencer2d import Sequencer2D
    torch.manual_seed(0)
    return Sequencer2D(arch=dict(depths=list(depths), embed_dims=[16, 32, 32, 32], patch_sizes=[7, 2, 1, 1]),
                       rnn_type=rnn_type).eval()


@pytest.mark.parametrize("rnn_type", ["lstm", "gru", "rnn", "mingru"])
def test_sequencer2d_exports(rnn_type, tmp_path):
    _check(_sequencer(rnn_type), torch.randn(1, 3, 56, 42), tmp_path, legacy=True)
    # dynamic axes: a graph for every size (for minGRU 4 scan levels per direction: two blocks keep it small)
    _check(_sequencer(rnn_type, depths=(1, 0, 0, 1)), torch.randn(1, 3, 56, 42), tmp_path, legacy=True,
           dynamic=True, sizes=[(2, 3, 40, 70)])


@pytest.mark.parametrize("rnn_type", ["lstm", "mingru"])
def test_sequencer2d_default_exporter(rnn_type, tmp_path):
    _check(_sequencer(rnn_type), torch.randn(1, 3, 42, 56), tmp_path, legacy=False)


class _Head(nn.Module):
    def __init__(self, cell):
        super().__init__()
        from rv_plugins.heads.hgru_mask_head import HGRUMaskPredictor
        torch.manual_seed(0)
        self.head = HGRUMaskPredictor(in_channels=32, channels=32, num_classes=3, steps=4, cell=cell, norm_groups=8)

    def forward(self, x):
        return self.head(x)[0]


@pytest.mark.parametrize("cell", ["pathfinder", "coco"])
def test_hgru_mask_head_traces_exports_and_matches(cell, tmp_path):
    head = _Head(cell).eval()
    x = torch.randn(3, 32, 14, 14)
    with torch.no_grad():
        traced = torch.jit.trace(head, x, check_trace=False)
        other = torch.randn(5, 32, 7, 7)
        torch.testing.assert_close(traced(other), head(other))
        exported = torch.export.export(head, (x,))
        torch.testing.assert_close(exported.module()(x), head(x))
    traced = torch.jit.trace(head, x, check_trace=False)  # as fvcore traces: autograd on (the solver's LCP off)
    with torch.no_grad():
        torch.testing.assert_close(traced(other), head(other))
    fvcore = pytest.importorskip("fvcore.nn")
    assert fvcore.FlopCountAnalysis(head, x).total() > 0
    _check(head, x, tmp_path, legacy=True, dynamic=True, sizes=[(5, 32, 14, 14)])
    _check(head, x, tmp_path, legacy=False)


# ----------------------------------------------------------------------------- tools/export_onnx.py
def _tool():
    from tool_loader import load_tool
    return load_tool("export_onnx")


def test_tool_exports_a_registry_model(tmp_path):
    out = tmp_path / "v.onnx"
    summary = _tool().main(["visiongru", "--shape", "32", "24", "--legacy", "--out", str(out), "--model-kwargs",
                            "arch={'embed_dims': [8, 16, 32, 64], 'depths': [1, 1, 0, 1]}", "preset=paper",
                            "img_size=32", "out_indices=[0, 3]"])
    assert summary["exporter"] == "legacy" and summary["max_rel_error"] < TOL and out.is_file()
    assert len(onnxruntime_session(str(out)).get_outputs()) == 2


def test_tool_refuses_unknown_names():
    with pytest.raises(SystemExit, match="neither a config file nor a model name"):
        _tool().main(["resnet50", "--shape", "32", "32"])


def test_tool_exports_the_detectron2_mask_head(tmp_path):
    pytest.importorskip("rv_plugins.detectron2")
    import os
    config = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "detectron2",
                          "panoptic_fpn_R_50_synthetic_hgru_crbp.yaml")
    summary = _tool().main([config, "--legacy", "--batch", "3", "--out", str(tmp_path / "head.onnx")])
    assert summary["input_shape"] == [3, 256, 14, 14] and summary["max_rel_error"] < TOL


TINY_MM = {  # small backbones in the shipped segmentor configs (the recipe's heads narrowed to match)
    "upernet_visiongru_ti_synthetic.py": [
        "model.backbone.arch={'_delete_': True, 'embed_dims': [8, 16, 32, 64], 'depths': [1, 1, 1, 1]}",
        "model.decode_head.in_channels=[8, 16, 32, 64]", "model.auxiliary_head.in_channels=32"],
    "fpn_sequencer2d_s_synthetic.py": [
        "model.backbone.arch={'_delete_': True, 'depths': [1, 1, 1, 1], 'embed_dims': [16, 32, 32, 32],"
        "'patch_sizes': [7, 2, 1, 1]}",
        "model.neck.in_channels=[16, 32, 32, 32]"],
}


@pytest.mark.parametrize("config, legacy", [
    ("upernet_visiongru_ti_synthetic.py", True), ("fpn_sequencer2d_s_synthetic.py", True),
    pytest.param("upernet_visiongru_ti_synthetic.py", False, marks=pytest.mark.slow),  # ~1 min of torch.export
    pytest.param("fpn_sequencer2d_s_synthetic.py", False, marks=pytest.mark.slow)])
def test_tool_exports_the_mmseg_segmentors(config, legacy, tmp_path):
    pytest.importorskip("mmseg")
    import os
    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", config)
    args = [path, "--shape", "64", "48", "--out", str(tmp_path / "seg.onnx"), "--cfg-options", *TINY_MM[config]]
    summary = _tool().main(args + (["--legacy"] if legacy else []))
    assert summary["max_rel_error"] < TOL and summary["exporter"] == ("legacy" if legacy else "dynamo")


@pytest.mark.slow
@pytest.mark.parametrize("name, kwargs", [
    ("visiongru-ti", dict(preset="paper")), ("sequencer2d-s", dict(rnn_type="gru")),
    ("sequencer2d-s", dict(rnn_type="rnn")), ("sequencer2d-s", dict(rnn_type="mingru"))])
def test_full_models_at_224(name, kwargs, tmp_path):
    """Full-size models at 224^2 (the legacy exporter; both exporters for VisionGRU-Ti 'released' and
    Sequencer2D-S LSTM at 224^2 and 512^2: tools/benchmark_onnx.py, docs/benchmarks/onnx.md)."""
    from rv_plugins.backbones.registry import create_backbone
    torch.manual_seed(0)
    _check(create_backbone(name, out_indices=(0, 1, 2, 3), **kwargs), torch.randn(1, 3, 224, 224), tmp_path,
           legacy=True)
