"""Weights that load and mean what they say (issue 13), without the OpenMMLab toolkits:
VisionGRU presets, the authors' checkpoint converter, the one loader and its errors, init_cfg."""
import logging
import os
import sys

import pytest
import torch

from rv_plugins.backbones.sequencer2d import Sequencer2D
from rv_plugins.backbones.visiongru import PRESETS, VisionGRU
from rv_plugins.utils.checkpoint import load_pretrained, read_checkpoint, resize_pos_embed
from rv_plugins.utils.visiongru_authors import convert_authors_state_dict
from tool_loader import load_tool
from visiongru_authors_ref import AuthorsVisionGRU, randomize_

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(embed_dims=[8, 16, 32, 64], depths=[1, 1, 2, 1])
SEQ_SMALL = dict(depths=[1, 1], embed_dims=[16, 32], patch_sizes=[4, 2], hidden_dims=[4, 8], mlp_ratios=[2, 2])


def _vgru(**kw):
    kw.setdefault("drop_path_rate", 0.0)
    return VisionGRU(SMALL, **kw).eval()


def _randomized(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    return model


# --------------------------------------------------------------------------- presets
def test_presets_released_is_default_and_paper_differs():
    released, paper = _vgru(), _vgru(preset="paper", img_size=64)
    assert released.preset == "released" and released.pos_embed is None
    assert paper.pos_embed is not None and tuple(paper.pos_embed.shape) == (1, 8, 16, 16)
    acts = {m.candidate_act for m in released.modules() if hasattr(m, "candidate_act") and m is not released}
    assert acts == {"g"}
    assert {m.candidate_act for m in paper.stages.modules() if hasattr(m, "candidate_act")} == {"identity"}
    assert PRESETS["released"] == dict(candidate_act="g", pos_embed=False)
    # overrides; img_size=None still means no embedding
    assert _vgru(preset="paper", img_size=None).pos_embed is None
    assert _vgru(pos_embed=True, img_size=32).pos_embed is not None
    with pytest.raises(ValueError, match="preset"):
        _vgru(preset="authors")
    with pytest.raises(ValueError, match="candidate_act"):
        _vgru(candidate_act="relu")
    with pytest.raises(ValueError, match="img_size"):
        _vgru(pos_embed=True, img_size=None)


def test_released_tiny_has_the_authors_parameter_count():
    # 30,216,952: the authors' released VisionGRU-Ti (NOTES.md)
    assert sum(p.numel() for p in VisionGRU("tiny", num_classes=1000).parameters()) == 30_216_952


# --------------------------------------------------------------------------- authors' checkpoints
def _authors_checkpoint(tmp_path, wrap, dim=8, depths=(1, 1, 2, 1), num_classes=10, name="authors.pth"):
    ref = randomize_(AuthorsVisionGRU(num_classes, dim=dim, depths=depths)).eval()
    state = {wrap + k: v for k, v in ref.state_dict().items()}
    path = str(tmp_path / name)
    torch.save(state, path)
    return ref, path


def _authors_module(tmp_path, dim, depths):
    """A folder with a ``visionGRU.py`` exposing ``VisionGRU(num_classes)`` as the authors' code does."""
    folder = tmp_path / "vig"
    folder.mkdir()
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    (folder / "visionGRU.py").write_text(
        f"import sys\nsys.path.insert(0, {tests_dir!r})\n"
        "from visiongru_authors_ref import AuthorsVisionGRU\n\n"
        "class VisionGRU(AuthorsVisionGRU):\n"
        f"    def __init__(self, num_classes):\n        super().__init__(num_classes, dim={dim}, depths={tuple(depths)})\n")
    return str(folder)


@pytest.fixture
def fresh_authors_import():
    sys.modules.pop("visionGRU", None)
    saved = list(sys.path)
    yield
    sys.modules.pop("visionGRU", None)
    sys.path[:] = saved


@pytest.mark.parametrize("wrap", ["", "_orig_mod.", "module._orig_mod."])
def test_converter_tool_loads_strict_and_matches_the_authors_logits(tmp_path, wrap, fresh_authors_import):
    ref, src = _authors_checkpoint(tmp_path, wrap)
    dst = str(tmp_path / "ours.pth")
    tool = load_tool("convert_visiongru_checkpoint")
    figures = tool.main([src, dst, "--verify", "--authors-code", _authors_module(tmp_path, 8, (1, 1, 2, 1))])
    assert figures["max_rel_diff"] <= 1e-5 and figures["top1_agreement"] == 1.0
    saved = torch.load(dst)
    assert saved["meta"]["preset"] == "released" and saved["meta"]["arch"] == SMALL
    model = _vgru(num_classes=10)
    model.load_state_dict(saved["state_dict"], strict=True)
    # any size (the authors' segmentation code ceil-halves), not only the 224 of --verify
    x = torch.randn(2, 3, 45, 70)
    with torch.no_grad():
        a, b = ref(x), model.forward_head(model(x))
    assert ((a - b).abs().max() / a.abs().max()).item() <= 1e-5


def test_without_g_the_converted_weights_give_other_logits(tmp_path):
    ref, _ = _authors_checkpoint(tmp_path, "")
    state, arch = convert_authors_state_dict(ref.state_dict())
    model = VisionGRU(arch, candidate_act="identity", img_size=None, num_classes=10, drop_path_rate=0).eval()
    model.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = ref(x), model.forward_head(model(x))
    assert ((a - b).abs().max() / a.abs().max()).item() > 0.05


def test_converter_swaps_candidate_and_gate_rows():
    ref = randomize_(AuthorsVisionGRU(10, dim=8, depths=(1, 1, 1, 1)))
    state, _ = convert_authors_state_dict(ref.state_dict())
    theirs = ref.snake_gru.layers[0][0].min_gru_2.to_hidden_and_gate.weight
    ours = state["stages.0.blocks.0.mixer.gru_bwd.in_proj.weight"]
    assert torch.equal(ours[:16], theirs[16:]) and torch.equal(ours[16:], theirs[:16])


def test_converter_mmpretrain_format_and_unknown_keys(tmp_path):
    ref, src = _authors_checkpoint(tmp_path, "_orig_mod.")
    dst = str(tmp_path / "mmpretrain.pth")
    load_tool("convert_visiongru_checkpoint").main([src, dst, "--format", "mmpretrain"])
    keys = set(torch.load(dst)["state_dict"])
    assert {"head.fc.weight", "head.fc.bias", "backbone.stem.conv1.conv.weight"} <= keys
    assert all(k.startswith(("backbone.", "head.fc.")) for k in keys)
    bad = dict(ref.state_dict(), **{"snake_gru.layers.0.0.attention.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="does not know"):
        convert_authors_state_dict(bad)
    with pytest.raises(ValueError, match="not a VisionGRU authors"):
        convert_authors_state_dict(_vgru().state_dict())


def test_verify_without_the_authors_code_says_how(tmp_path, fresh_authors_import):
    _, src = _authors_checkpoint(tmp_path, "")
    with pytest.raises(SystemExit, match="--authors-code"):
        load_tool("convert_visiongru_checkpoint").main([src, str(tmp_path / "o.pth"), "--verify",
                                                        "--authors-code", str(tmp_path / "nowhere")])


def test_visiongru_ti_matches_the_authors_definition_after_conversion(tmp_path, fresh_authors_import):
    """The full VisionGRU-Ti (released definition), random weights, 224x224, float32: <= 1e-5 relative
    (measured 2.2e-6; ~9 s on the 2-core CPU)."""
    torch.manual_seed(0)
    _, src = _authors_checkpoint(tmp_path, "_orig_mod.", dim=72, depths=(2, 2, 8, 2), num_classes=1000)
    figures = load_tool("convert_visiongru_checkpoint").main(
        [src, str(tmp_path / "ti.pth"), "--verify", "--batch", "2",
         "--authors-code", _authors_module(tmp_path, 72, (2, 2, 8, 2))])
    print(figures)
    assert figures["max_rel_diff"] <= 1e-5 and figures["top1_agreement"] == 1.0


# --------------------------------------------------------------------------- the loader
def test_pos_embed_is_resized_bicubically(tmp_path):
    src = _randomized(_vgru(preset="paper", img_size=56))
    path = str(tmp_path / "in1k_like.pth")
    torch.save({"state_dict": {"backbone." + k: v for k, v in src.state_dict().items()},
                "meta": {"note": "mmpretrain-style"}}, path)
    dst = _vgru(preset="paper", img_size=96)
    report = dst.load_pretrained(path)
    assert report.resized == ["pos_embed"] and not report.missing and not report.mismatched
    assert len(report.loaded) == report.total == len(dst.state_dict())
    expected = resize_pos_embed(src.pos_embed.detach(), (24, 24))
    assert torch.allclose(dst.pos_embed, expected)
    for k, v in src.state_dict().items():
        if k != "pos_embed":
            assert torch.equal(dst.state_dict()[k], v), k


@pytest.mark.parametrize("layout", ["plain", "module", "orig_mod", "backbone", "model", "state_dict", "detectron2"])
def test_prefixes_and_containers(tmp_path, layout):
    src = _randomized(_vgru())
    sd = src.state_dict()
    ckpt = {"plain": sd, "module": {"module." + k: v for k, v in sd.items()},
            "orig_mod": {"_orig_mod." + k: v for k, v in sd.items()},
            "backbone": {**{"backbone." + k: v for k, v in sd.items()}, "decode_head.conv.weight": torch.ones(3)},
            "model": {"model": sd, "optimizer": {}},
            "state_dict": {"state_dict": {"module.backbone." + k: v for k, v in sd.items()}, "meta": {}},
            "detectron2": {"model": {**{"backbone.bottom_up.body." + k: v for k, v in sd.items()},
                                     "backbone.fpn_lateral2.weight": torch.ones(2)}}}[layout]
    dst = _vgru()
    report = load_pretrained(dst, ckpt)
    assert len(report.loaded) == report.total
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in sd.items())


def test_one_line_report(tmp_path, caplog, monkeypatch):
    # the report goes to mmengine's current logger once mmengine is imported (by an earlier test,
    # say); hide it so that the line reaches the plain "rv_plugins" logger that caplog watches
    monkeypatch.delitem(sys.modules, "mmengine", raising=False)
    src = _vgru(num_classes=10)
    dst = _vgru(preset="paper", img_size=32)
    with caplog.at_level(logging.INFO, logger="rv_plugins"):
        report = dst.load_pretrained(src.state_dict(), partial=True)  # 'released' weights, 'paper' model: asked for
    assert report.missing == ["pos_embed"] and report.unexpected == ["head.weight", "head.bias"]
    line = [r.getMessage() for r in caplog.records if "loaded" in r.getMessage()]
    assert len(line) == 1 and "\n" not in line[0]
    assert f"loaded {report.total - 1}/{report.total} tensors" in line[0]
    assert "missing 1 (pos_embed)" in line[0] and "unexpected 2" in line[0]
    assert "loaded anyway (partial=True)" in line[0] and "preset='released'" in line[0] and "preset='paper'" in line[0]
    assert caplog.records[-1].levelname == "WARNING"


def test_raises_when_no_tensor_matched(tmp_path):
    other = VisionGRU(dict(embed_dims=[16, 32, 64, 128], depths=[1, 1, 2, 1]))
    with pytest.raises(ValueError, match="none of its .* tensors"):
        _vgru().load_pretrained(other.state_dict())
    with pytest.raises(ValueError, match="none of its"):
        _vgru().load_pretrained({"decode_head.conv_seg.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match="prefix 'backbone.'"):
        _vgru().load_pretrained({"teacher.stem.conv1.conv.weight": torch.zeros(4, 3, 3, 3)}, prefix="backbone")
    with pytest.raises(ValueError, match="strict"):
        _vgru(preset="paper", img_size=32).load_pretrained(_vgru().state_dict(), strict=True)


def test_clear_errors_for_bad_files(tmp_path):
    good = tmp_path / "good.pth"
    torch.save(_vgru().state_dict(), good)
    data = good.read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "text.pth").write_text("<html>404 Not Found</html>")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    torch.save(_vgru(), tmp_path / "whole_model.pth")
    cases = {"missing.pth": (FileNotFoundError, "does not exist"),
             "truncated.pth": (ValueError, "truncated"),
             "empty.pth": (ValueError, "empty"),
             "text.pth": (ValueError, "not a PyTorch checkpoint"),
             "tensor.pth": (ValueError, "single Tensor"),
             "whole_model.pth": (ValueError, "model.state_dict")}
    for name, (kind, text) in cases.items():
        with pytest.raises(kind, match=text):
            read_checkpoint(str(tmp_path / name))
        with pytest.raises(kind, match=text):  # the same through a model's init_cfg
            _vgru(init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / name)))
    with pytest.raises(ValueError, match="no tensors"):
        load_pretrained(_vgru(), {"meta": {"epoch": 3}})


def test_plain_classes_honour_init_cfg(tmp_path):
    src = _randomized(_vgru())
    path = str(tmp_path / "w.pth")
    torch.save({"state_dict": {"backbone." + k: v for k, v in src.state_dict().items()}}, path)
    dst = _vgru(init_cfg=dict(type="Pretrained", checkpoint=path, prefix="backbone."))
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in src.state_dict().items())
    frozen = VisionGRU(SMALL, frozen_stages=1, init_cfg=dict(type="Pretrained", checkpoint=path))
    assert torch.equal(frozen.stem.conv1.conv.weight, src.stem.conv1.conv.weight)
    assert not frozen.stem.conv1.conv.weight.requires_grad
    with pytest.raises(ValueError, match="honours only"):
        _vgru(init_cfg=dict(type="TruncNormal", layer="Linear", std=0.02))
    with pytest.raises(ValueError, match="unknown keys"):
        _vgru(init_cfg=dict(type="Pretrained", checkpoint=path, prefx="backbone."))

    seq_src = _randomized(Sequencer2D(SEQ_SMALL, out_indices=(0, 1)))
    seq_path = str(tmp_path / "seq.pth")
    torch.save(seq_src.state_dict(), seq_path)
    seq = Sequencer2D(SEQ_SMALL, out_indices=(0, 1), init_cfg=dict(type="Pretrained", checkpoint=seq_path))
    assert all(torch.equal(seq.state_dict()[k], v) for k, v in seq_src.state_dict().items())


# --------------------------------------------------------------------------- Sequencer2D vs timm
SEQ_TIMM_TINY = dict(depths=[1, 1, 1, 1], embed_dims=[16, 32, 32, 32], patch_sizes=[7, 2, 1, 1])


def _timm_pair(arch):
    timm = pytest.importorskip("timm")
    from rv_plugins.backbones.sequencer2d import convert_timm_state_dict
    if arch == "s":
        ref = timm.create_model("sequencer2d_s", pretrained=False)
        kw = dict(arch="s", num_classes=1000)
    else:
        from timm.models.sequencer import Sequencer2d
        ref = Sequencer2d(num_classes=10, layers=arch["depths"], patch_sizes=arch["patch_sizes"],
                          embed_dims=arch["embed_dims"], hidden_sizes=[c // 4 for c in arch["embed_dims"]],
                          mlp_ratios=[3.0] * 4)
        kw = dict(arch=arch, num_classes=10)
    torch.nn.init.normal_(ref.head.fc.weight, std=0.02)  # timm's head starts at zero
    state = convert_timm_state_dict(ref.state_dict())
    floor, ceil = Sequencer2D(**kw, grid_rounding="floor"), Sequencer2D(**kw)
    floor.load_state_dict(state)
    ceil.load_state_dict(state)
    return ref.eval(), floor.eval(), ceil.eval()


@pytest.mark.parametrize("arch", [SEQ_TIMM_TINY, pytest.param("s", marks=pytest.mark.slow)], ids=["tiny", "s"])
@pytest.mark.parametrize("hw", [(160, 224), (256, 256)])
def test_sequencer_floor_gives_timm_logits_at_any_size(arch, hw):
    ref, floor, ceil = _timm_pair(arch)
    x = torch.randn(1, 3, *hw)
    with torch.no_grad():
        expected = ref(x)
        torch.testing.assert_close(floor.forward_head(floor(x)), expected, atol=1e-5, rtol=1e-4)
        # the default (pad up) sees the border timm drops: other logits at these sizes
        assert not torch.allclose(ceil.forward_head(ceil(x)), expected, atol=1e-3)
    assert tuple(floor(x)[0].shape[2:]) == (hw[0] // 14, hw[1] // 14)


def test_sequencer_grid_rounding_errors():
    with pytest.raises(ValueError, match="grid_rounding"):
        Sequencer2D(SEQ_SMALL, out_indices=(1,), grid_rounding="round")
    model = Sequencer2D(SEQ_SMALL, out_indices=(1,), grid_rounding="floor")
    with pytest.raises(ValueError, match="smaller than the 4x4 patch"):
        model(torch.randn(1, 3, 3, 8))
    with pytest.raises(ValueError, match="smaller than the 2x2 downsampling"):
        model(torch.randn(1, 3, 4, 8))


def test_our_mmengine_checkpoints_load_in_a_fresh_process_without_any_adapter(tmp_path):
    """A checkpoint with mmengine's message hub (as our training writes) loads through init_cfg in a
    process that never imported mmengine or an adapter (the loader registers the allow-list on demand)."""
    pytest.importorskip("mmengine")
    import subprocess
    import textwrap
    from mmengine.logging import MessageHub
    hub = MessageHub.get_instance("fresh_process_test")
    hub.update_scalar("train/loss", 2.0)
    src = _randomized(_vgru())
    torch.save(dict(state_dict={"backbone." + k: v for k, v in src.state_dict().items()},
                    meta=dict(message_hub=hub.state_dict())), tmp_path / "ours.pth")
    torch.save(src.state_dict(), tmp_path / "expected.pth")
    script = textwrap.dedent(f"""
        import sys, torch
        from rv_plugins.backbones.visiongru import VisionGRU
        print('MMENGINE BEFORE', 'mmengine' in sys.modules)
        model = VisionGRU({SMALL!r}, init_cfg=dict(type='Pretrained', checkpoint='ours.pth'))
        expected = torch.load('expected.pth')
        print('LOADED', all(torch.equal(model.state_dict()[k], v) for k, v in expected.items()))
    """)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", script], cwd=str(tmp_path), env=env, capture_output=True, text=True)
    assert "MMENGINE BEFORE False" in proc.stdout and "LOADED True" in proc.stdout, proc.stderr[-3000:]
