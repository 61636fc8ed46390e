"""VisionGRU's GPU path, checked without a GPU: the meta device runs the code a GPU runs (the accelerator
chunk rule, no oneDNN, the output projection without concatenated weights) with no values at all, so a
forward there proves that nothing reads a tensor's value on the host; CPU autocast stands in for the
autocast dtype rules; the chunk decision is reported by ``describe_infer_chunking``.

Not verified here (needs a GPU): CUDA graph capture and ``torch.compile(mode="reduce-overhead")`` on
CUDA, the Triton scan under them, and the speed and memory of the accelerator chunk
(``tools/gpu_check.py``)."""
import copy
import io
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from rv_plugins.backbones.visiongru import GRU2DMixer, VisionGRU, set_infer_chunk
from rv_plugins.layers import row_chunked
from rv_plugins.layers.bidirectional_mingru import _summed_out_proj, packed_in_proj
from rv_plugins.layers.norm import LayerNorm

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(embed_dims=[8, 16, 32, 64], depths=[2, 1, 1, 1])
SCAN = "rv_plugins::mingru_scan"
HOST_SYNC = ("aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::nonzero")


class _OpLog(TorchDispatchMode):
    """Every op's name, and for tensor outputs ``(name, dtype, numel)``."""

    def __init__(self):
        super().__init__()
        self.names, self.outputs = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.name().split(".")[0]
        self.names.append(name)
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor):
                self.outputs.append((name, t.dtype, t.numel()))
        return out

    def count(self, name: str) -> int:
        return self.names.count(name)


def _meta_model(**kwargs):
    with torch.device("meta"):
        return VisionGRU(SMALL, **kwargs)


# ----------------------------------------------------------------------------- no host synchronisation
@pytest.mark.parametrize("mode", ["infer-chunked", "infer-one-call", "train"])
def test_the_gpu_code_path_runs_on_meta_tensors(mode, monkeypatch):
    """Meta tensors have no values: a forward (and backward) there cannot call .item(), .cpu() or branch on
    a value, and the op log shows no host-synchronising op."""
    model = _meta_model(num_classes=3, preset="paper", img_size=64)
    x = torch.empty(2, 3, 48, 40, device="meta")
    if mode == "infer-chunked":
        monkeypatch.setattr(row_chunked, "INFER_CHUNK_ELEMS_ACCELERATOR", 600)  # the stage-0 batch map: 1920
    if mode == "infer-one-call":
        set_infer_chunk(model, None)
    train = mode == "train"
    with torch.set_grad_enabled(train), _OpLog() as log:
        outs = model.train(train)(x)
        if train:
            model.forward_head(outs).sum().backward()
    assert not [n for n in log.names if n in HOST_SYNC]
    assert outs[-1].shape == (2, 64, 2, 2) and outs[-1].device.type == "meta"
    expected_scans = sum(SMALL["depths"])  # one bidirectional call per block, per direction and chunk when chunked
    assert (log.count(SCAN) > expected_scans) if mode == "infer-chunked" else (log.count(SCAN) == expected_scans)
    if train:
        assert all(p.grad is not None for p in model.parameters())


# ----------------------------------------------------------------------------- no weight concatenation
def _cat_count(model, x, grad):
    with torch.set_grad_enabled(grad), _OpLog() as log:
        model.train(grad)(x)
    return log.count("aten::cat")


def test_inference_concatenates_no_weight_off_the_cpu_and_only_the_output_weight_on_it():
    mixers = sum(SMALL["depths"])
    meta = _meta_model()
    set_infer_chunk(meta, None)
    assert _cat_count(meta, torch.empty(1, 3, 40, 24, device="meta"), grad=False) == 0
    assert _cat_count(meta, torch.empty(1, 3, 40, 24, device="meta"), grad=True) == 2 * mixers  # the graph's
    cpu = set_infer_chunk(VisionGRU(SMALL), None)
    assert _cat_count(cpu, torch.randn(1, 3, 40, 24), grad=False) == mixers  # oneDNN's fused output GEMM


def test_the_summed_output_projection_equals_the_concatenated_one():
    torch.manual_seed(0)
    mixer = GRU2DMixer(8)
    h = torch.randn(2, 7, 2 * mixer.gru_fwd.hidden_dim)
    _, _, w_out, b_out = mixer.fused_weights()
    torch.testing.assert_close(_summed_out_proj(mixer.gru_fwd, mixer.gru_bwd, h), F.linear(h, w_out, b_out))


def _packed(mixer):
    return packed_in_proj(mixer.gru_fwd, mixer.gru_bwd, mixer._in_proj_buffer) is not None


def test_the_input_weights_share_one_buffer_through_conversions_copies_and_loading():
    torch.manual_seed(0)
    mixer = GRU2DMixer(8).eval()
    y = torch.randn(1, 5, 6, 8)
    fused_in = mixer.fused_weights()[0]
    assert _packed(mixer) and torch.equal(mixer._in_proj_buffer, fused_in)
    assert set(mixer.state_dict()) == {"dwconv.weight", "dwconv.bias", "gru_fwd.in_proj.weight",
                                       "gru_fwd.out_proj.weight", "gru_bwd.in_proj.weight", "gru_bwd.out_proj.weight"}
    params = list(mixer.parameters())
    assert _packed(mixer.double()) and all(p is q for p, q in zip(params, mixer.parameters()))
    mixer.float()
    assert _packed(copy.deepcopy(mixer))
    buffer = io.BytesIO()
    torch.save(mixer, buffer)
    buffer.seek(0)
    assert _packed(torch.load(buffer, weights_only=False))
    with torch.no_grad():
        expected = mixer.mix(y)
        state = {k: v.clone() + 0.5 for k, v in mixer.state_dict().items()}
        mixer.load_state_dict(state)                       # copies into the parameters: still packed
        assert _packed(mixer)
        changed = mixer.mix(y)
        assert not torch.allclose(changed, expected)
        other = GRU2DMixer(8).eval()
        other.load_state_dict(state, assign=True)          # new tensors: the weights are concatenated again
        assert not _packed(other)
        torch.testing.assert_close(other.mix(y), changed)


def test_an_optimizer_step_reaches_the_packed_inference_weights():
    torch.manual_seed(0)
    mixer = GRU2DMixer(8)
    y = torch.randn(1, 4, 5, 8)
    opt = torch.optim.SGD(mixer.parameters(), lr=0.5)
    mixer.train()
    mixer(y).square().sum().backward()
    opt.step()
    assert _packed(mixer)
    reference = GRU2DMixer(8)
    reference.load_state_dict({k: v.clone() for k, v in mixer.state_dict().items()}, assign=True)  # unpacked
    with torch.no_grad():
        torch.testing.assert_close(mixer.eval()(y), reference.eval()(y))


# ----------------------------------------------------------------------------- bf16 end to end
def test_layer_norm_keeps_the_autocast_dtype_with_float32_statistics():
    torch.manual_seed(0)
    norm = LayerNorm(16, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = 3 + torch.randn(4, 16).bfloat16().float()  # bf16-representable input, far from zero mean
    torch.testing.assert_close(norm(x), F.layer_norm(x, (16,), norm.weight, norm.bias, 1e-6), atol=0, rtol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(x)
        plain = nn.LayerNorm(16, eps=1e-6).to(x.dtype)(x)
    assert out.dtype == torch.bfloat16 and plain.dtype == torch.float32  # nn.LayerNorm keeps float32 here
    torch.testing.assert_close(out.float(), F.layer_norm(x, (16,), norm.weight, norm.bias, 1e-6), atol=2e-2, rtol=1e-2)
    norm.weight.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        norm(x).float().sum().backward()
    assert norm.weight.grad.dtype == torch.float32


@pytest.mark.parametrize("chunk", [None, 256])
@pytest.mark.parametrize("train", [False, True])
def test_the_residual_stream_stays_in_the_autocast_dtype(chunk, train):
    """Under bf16 autocast (float32 weights) every LayerNorm output, every residual add and the outputs
    are bf16: no float32 map appears outside the scan op (whose gates are float32 inside)."""
    torch.manual_seed(0)
    model = set_infer_chunk(VisionGRU(SMALL, preset="paper", img_size=64, num_classes=3, drop_path_rate=0.0), chunk)
    x = torch.randn(2, 3, 48, 40)
    with torch.set_grad_enabled(train), torch.autocast("cpu", dtype=torch.bfloat16), _OpLog() as log:
        outs = model.train(train)(x)
        if train:
            model.forward_head(outs).float().sum().backward()
    assert all(o.dtype == torch.bfloat16 for o in outs)
    norms = [d for n, d, _ in log.outputs if n == "aten::native_layer_norm"]
    assert norms and set(norms[::3]) == {torch.bfloat16}  # (out, mean, rstd): the output
    map_size = 2 * 12 * 10 * 8  # the stage-0 map
    adds = [(n, d) for n, d, k in log.outputs if n in ("aten::add", "aten::add_") and k >= map_size // 4]
    assert adds and all(d == torch.bfloat16 for _, d in adds), sorted(set(adds))
    if train:
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


def test_a_bf16_model_runs_in_bf16_and_matches_float32():
    torch.manual_seed(0)
    model = VisionGRU(SMALL, preset="paper", img_size=64, num_classes=3).eval()
    x = torch.randn(1, 3, 40, 32)
    with torch.no_grad():
        expected = model.forward_head(model(x))
        low = copy.deepcopy(model).bfloat16()
        assert _packed(low.stages[0].blocks[0].mixer)
        out = low.forward_head(low(x.bfloat16()))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=5e-2, rtol=5e-2)


# ----------------------------------------------------------------------------- the accelerator chunk rule
def test_describe_infer_chunking_reports_what_the_forward_does():
    torch.manual_seed(0)
    model = set_infer_chunk(VisionGRU(SMALL).eval(), 200)
    report = row_chunked.describe_infer_chunking(model, 2, 40, 24)
    blocks = [e for e in report if re.fullmatch(r"stages\.\d\.blocks\.\d", e["module"])]
    assert [e["module"] for e in blocks] == ["stages.0.blocks.0", "stages.0.blocks.1", "stages.1.blocks.0",
                                             "stages.2.blocks.0", "stages.3.blocks.0"]
    assert blocks[0]["map"] == [2, 10 * 6, 8] and blocks[0]["lean"] and blocks[0]["rows"] == 200 // (6 * 8)
    expected_scans = sum(2 * e["chunks"] if e["lean"] else 1 for e in blocks)  # per direction and chunk
    with torch.no_grad(), _OpLog() as log:
        model(torch.randn(2, 3, 40, 24))
    assert log.count(SCAN) == expected_scans


def test_the_accelerator_rule_at_1024_for_a_batch_of_3():
    """What the default 'auto' decides on a GPU at 1024^2, batch 3 (the figure tools/gpu_check.py measures):
    the maps of stages 0-2 in chunks of at most 2**21 elements of the batch, stage 3 in one call."""
    with torch.device("meta"):  # meta weights: the report needs no values
        ti = VisionGRU("tiny").eval()
    report = row_chunked.describe_infer_chunking(ti, 3, 1024, 1024)
    lean = {e["module"]: e for e in report if e["lean"]}
    assert "stem" in lean and "stages.0.blocks.0" in lean and "stages.2.blocks.7" in lean
    assert not any(m.startswith("stages.3.blocks") for m in lean)
    assert all(e["chunk_elems"] <= 2 ** 21 for e in lean.values())
    assert lean["stages.0.blocks.0"]["chunks"] == 7  # 3 x 256 x 256 x 72 elements in chunks of 37 rows


def test_compile_traces_the_accelerator_chunked_path_without_graph_breaks(monkeypatch):
    model = _meta_model(num_classes=5).eval()
    monkeypatch.setattr(row_chunked, "INFER_CHUNK_ELEMS_ACCELERATOR", 200)
    torch._dynamo.reset()
    with torch.no_grad():
        explanation = torch._dynamo.explain(model)(torch.empty(1, 3, 40, 24, device="meta"))
    torch._dynamo.reset()
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
    assert explanation.graph_count == 1


def test_the_op_counting_tool_counts_one_scan_per_block_and_no_weight_concatenation():
    from tool_loader import load_tool
    rows = load_tool("count_visiongru_ops").main(["--res", "64", "--batch", "2", "--chunks", "none", "auto"])["rows"]
    one_call, auto = rows
    assert (one_call["scans"], one_call["cat"]) == (sum(VisionGRU.arch_zoo["tiny"]["depths"]), 0)
    assert one_call["ops"] > 4 * one_call["scans"] and auto["ops"] == one_call["ops"]  # 64^2 needs no chunks


@pytest.mark.parametrize("train", [True, False])
def test_compile_traces_the_autocast_path_without_graph_breaks(train):
    torch.manual_seed(0)
    model = VisionGRU(SMALL, num_classes=5, preset="paper", img_size=64).train(train)
    torch._dynamo.reset()
    with torch.set_grad_enabled(train), torch.autocast("cpu", dtype=torch.bfloat16):
        explanation = torch._dynamo.explain(model)(torch.randn(1, 3, 40, 24))
    torch._dynamo.reset()
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
