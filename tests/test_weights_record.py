"""Weights that do not belong are refused: the weights record our models write into their checkpoints
(preset, norms, input scale; the arch for show), checked by every loader, and the mostly-unmatched rule
of load_pretrained with its explicit opt-in (partial=True / init_cfg partial=True)."""
import copy
import io
import logging
import pickle
import sys

import pytest
import torch
from torch import nn

from rv_plugins.backbones.sequencer2d import Sequencer2D
from rv_plugins.backbones.visiongru import VisionGRU
from rv_plugins.heads import HGRUMaskPredictor
from rv_plugins.models.pathfinder_hgru import PathfinderHGRU
from rv_plugins.utils.checkpoint import load_pretrained
from rv_plugins.utils.weights_record import RECORD_KEY, records_in
from run_helpers import wait_for
from tool_loader import TOOLS

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(embed_dims=[8, 16, 32, 64], depths=[1, 1, 2, 1])
SEQ_SMALL = dict(depths=[1, 1], embed_dims=[16, 32], patch_sizes=[4, 2], hidden_dims=[4, 8], mlp_ratios=[2, 2])
MISMATCH = "the checkpoint's weights were written by"


def _vgru(**kw):
    kw.setdefault("drop_path_rate", 0.0)
    if kw.get("preset") == "paper":
        kw.setdefault("img_size", 32)
    return VisionGRU(SMALL, **kw).eval()


def _saved(state_dict):
    """``state_dict`` through torch.save / torch.load(weights_only=True), as a file would give it back."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


class _Segmentor(nn.Module):
    """An mm-style model: the backbone under ``backbone.``."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone, self.decode_head = backbone, nn.Conv2d(64, 3, 1)


# --------------------------------------------------------------------------- what is written
def test_every_model_records_what_its_keys_do_not_show_and_keys_are_unchanged():
    cases = [
        (_vgru(), dict(model="VisionGRU", preset="released", candidate_act="g", pos_embed=False)),
        (_vgru(preset="paper"), dict(preset="paper", candidate_act="identity", pos_embed=True)),
        (Sequencer2D(SEQ_SMALL, out_indices=(0, 1)), dict(model="Sequencer2D")),
        (PathfinderHGRU(channels=4, kernel_size=3, steps=2, input_scale=3.0), dict(norm="batch", input_scale=3.0)),
        (HGRUMaskPredictor(in_channels=16, channels=16, num_classes=2, norm_groups=4, cell="coco"),
         dict(cell="coco", norm="group")),
    ]
    for model, expected in cases:
        state = _saved(model.state_dict())
        record = state._metadata[""][RECORD_KEY]
        assert expected.items() <= record.items(), record
        keys = [n for n, _ in model.named_parameters()] + [n for n, b in model.named_buffers()
                                                            if n.split(".")[-1] not in model._non_persistent_buffers_set]
        assert sorted(state) == sorted(keys)  # the record is metadata: no key added or renamed
    assert _saved(_vgru().state_dict())._metadata[""][RECORD_KEY]["arch"] == SMALL
    twin = copy.deepcopy(_vgru())                       # hooks survive copies and pickling
    assert RECORD_KEY in twin.state_dict()._metadata[""]
    assert RECORD_KEY in pickle.loads(pickle.dumps(_vgru())).state_dict()._metadata[""]


def test_mmengine_checkpoints_keep_the_record(tmp_path):
    """mmengine 0.10.7: get_state_dict runs the hooks, weights_to_cpu keeps _metadata; save/load agree."""
    runner_checkpoint = pytest.importorskip("mmengine.runner.checkpoint")
    model = _Segmentor(_vgru(preset="paper"))
    state = runner_checkpoint.weights_to_cpu(runner_checkpoint.get_state_dict(model))
    assert state._metadata["backbone"][RECORD_KEY]["preset"] == "paper"
    path = str(tmp_path / "iter_10.pth")
    runner_checkpoint.save_checkpoint({"state_dict": state, "meta": {"iter": 10}}, path)
    runner_checkpoint.load_checkpoint(_Segmentor(_vgru(preset="paper")), path)   # same preset: loads
    with pytest.raises(ValueError, match=f"backbone: {MISMATCH}.*preset='paper'.*preset='released'"):
        runner_checkpoint.load_checkpoint(_Segmentor(_vgru()), path)
    report = _vgru(preset="paper").load_pretrained(path)
    assert report.prefix == "backbone." and "settings match" in report.record


# --------------------------------------------------------------------------- refused, by every loader
@pytest.mark.parametrize("writer,reader", [("paper", "released"), ("released", "paper")])
def test_another_presets_weights_are_refused_by_every_loader(tmp_path, writer, reader):
    src = _vgru(preset=writer)
    path = str(tmp_path / "w.pth")
    torch.save(src.state_dict(), path)
    expected = rf"{MISMATCH} VisionGRU\(preset='{writer}'.*this model is VisionGRU\(preset='{reader}'.*candidate_act"
    with pytest.raises(ValueError, match=expected + ".*partial=True"):
        _vgru(preset=reader).load_pretrained(path)
    with pytest.raises(ValueError, match=expected):
        _vgru(preset=reader, init_cfg=dict(type="Pretrained", checkpoint=path))
    for strict in (True, False):
        with pytest.raises(ValueError, match=expected):
            _vgru(preset=reader).load_state_dict(_saved(src.state_dict()), strict=strict)
    # inside a bigger model, a DDP wrapper's prefix, a Detectron2-style path: the record follows its module
    with pytest.raises(ValueError, match="backbone: " + MISMATCH):
        _Segmentor(_vgru(preset=reader)).load_state_dict(_saved(_Segmentor(src).state_dict()))
    ddp_like = nn.Module()
    ddp_like.module = _Segmentor(src)
    with pytest.raises(ValueError, match=expected):
        _vgru(preset=reader).load_pretrained(_saved(ddp_like.state_dict()))
    d2_like = nn.Module()
    d2_like.backbone = nn.Module()
    d2_like.backbone.bottom_up = nn.Module()
    d2_like.backbone.bottom_up.body = src
    with pytest.raises(ValueError, match=expected):
        _vgru(preset=reader).load_pretrained({"model": _saved(d2_like.state_dict())})


def test_settings_that_compute_the_same_are_not_refused():
    """'paper' with the released candidate and no embedding computes as 'released': the settings are
    compared, the preset's name only shown."""
    same = _vgru(preset="paper", candidate_act="g", pos_embed=False)
    report = same.load_pretrained(_saved(_vgru().state_dict()))
    assert "settings match" in report.record and len(report.loaded) == report.total
    same.load_state_dict(_saved(_vgru().state_dict()))


def test_hgru_models_refuse_another_norm_or_input_scale():
    src = PathfinderHGRU(channels=4, kernel_size=3, steps=2, norm="batch")
    with pytest.raises(ValueError, match="norm 'batch' vs 'group'"):
        PathfinderHGRU(channels=4, kernel_size=3, steps=2, norm="group", norm_groups=2).load_state_dict(
            _saved(src.state_dict()))
    with pytest.raises(ValueError, match="input_scale 1.0 vs 3.0"):
        PathfinderHGRU(channels=4, kernel_size=3, steps=2, input_scale=3.0).load_state_dict(_saved(src.state_dict()))
    head = HGRUMaskPredictor(in_channels=16, channels=16, num_classes=2, norm="batch")
    with pytest.raises(ValueError, match="norm 'batch' vs 'group'"):
        HGRUMaskPredictor(in_channels=16, channels=16, num_classes=2, norm_groups=4).load_state_dict(
            _saved(head.state_dict()))


# --------------------------------------------------------------------------- the explicit opt-in, and no record
def test_partial_load_is_explicit_and_reported_as_a_warning(tmp_path, caplog, monkeypatch):
    monkeypatch.delitem(sys.modules, "mmengine", raising=False)  # the line goes to the plain logger
    path = str(tmp_path / "paper.pth")
    torch.save(_vgru(preset="paper").state_dict(), path)
    with caplog.at_level(logging.INFO, logger="rv_plugins"):
        report = _vgru().load_pretrained(path, partial=True)
        _vgru(init_cfg=dict(type="Pretrained", checkpoint=path, partial=True))
    assert report.unexpected == ["pos_embed"] and "loaded anyway (partial=True)" in report.record
    assert [r.levelname for r in caplog.records] == ["WARNING", "WARNING"]
    with pytest.raises(ValueError, match="partial='yes'"):
        _vgru(init_cfg=dict(type="Pretrained", checkpoint=path, partial="yes"))
    with pytest.raises(ValueError, match="strict=True .* partial=True"):
        _vgru().load_pretrained(path, strict=True, partial=True)


def test_a_checkpoint_without_a_record_loads_as_before_and_says_so():
    plain = {k: v for k, v in _vgru(preset="paper").state_dict().items() if k != "pos_embed"}  # no metadata
    report = _vgru().load_pretrained(plain)
    assert len(report.loaded) == report.total and "could not be checked" in report.record
    assert "could not be checked" in str(report)
    _vgru().load_state_dict(plain)
    assert records_in(plain) == {}


# --------------------------------------------------------------------------- mostly unmatched
@pytest.mark.parametrize("keep", ["norms", "one", "blocks_of_another_depth"])
def test_mostly_unmatched_checkpoint_is_an_error_unless_partial(keep):
    model = _vgru()
    state = dict(model.state_dict())
    if keep == "norms":        # only the LayerNorms: a third of the tensors, under 1% of the values
        state = {k: v for k, v in state.items() if "norm" in k}
    elif keep == "one":
        state = {"stem.conv1.conv.weight": state["stem.conv1.conv.weight"]}
    else:                      # another width: the names match, the shapes do not
        state = dict(VisionGRU(dict(embed_dims=[8, 16, 48, 96], depths=[1, 1, 2, 1])).state_dict())
    with pytest.raises(ValueError, match=r"only \d+ of its \d+ tensors .*% of its values.*partial=True"):
        _vgru().load_pretrained(state)
    report = _vgru().load_pretrained(state, partial=True)
    assert 0 < len(report.loaded) < report.total / 2 or keep == "blocks_of_another_depth"


def test_most_of_the_model_loading_is_not_partial():
    """A classifier's weights in a backbone (head unexpected), a new classifier (head mismatched), a
    positional embedding added: most of the model loads, no opt-in needed."""
    src = _vgru(num_classes=10)
    assert len(_vgru().load_pretrained(src.state_dict()).loaded) == len(_vgru().state_dict())
    report = _vgru(num_classes=3).load_pretrained(src.state_dict())
    assert len(report.mismatched) == 2
    seq = Sequencer2D(SEQ_SMALL, out_indices=(0, 1))
    seq_other = Sequencer2D(dict(SEQ_SMALL, patch_sizes=[2, 2]), out_indices=(0, 1))
    report = seq_other.load_pretrained(seq.state_dict())  # another patch size: the stem does not fit, the rest does
    assert report.mismatched and len(report.loaded) > report.total / 2


# --------------------------------------------------------------------------- the authors' checkpoint converter
def _converter():
    from tool_loader import load_tool
    return load_tool("convert_visiongru_checkpoint")


def _authors_file(tmp_path, drop=(), name="authors.pth"):
    from test_weights import _authors_checkpoint
    _, path = _authors_checkpoint(tmp_path, "_orig_mod.", name=name)
    if drop:
        state = torch.load(path)
        torch.save({k: v for k, v in state.items() if k[len("_orig_mod."):] not in drop}, path)
    return path


@pytest.mark.parametrize("drop", [("snake_gru.layers.2.1.min_gru_1.to_out.weight", "fc.bias"),
                                  ("tokenizer.conv2.weight", "tokenizer.norm2.weight", "tokenizer.conv2.bias"),
                                  ("snake_gru.conv3.weight",)])
def test_converter_names_the_tensors_the_authors_checkpoint_lacks(tmp_path, drop):
    src = _authors_file(tmp_path, drop)
    with pytest.raises(SystemExit) as caught:
        _converter().main([src, str(tmp_path / "out.pth")])
    message = str(caught.value)
    assert src in message and "incomplete" in message
    assert all(key in message for key in drop if not key.startswith("tokenizer")) or "tokenizer.conv2" in message
    assert not (tmp_path / "out.pth").exists()


def test_converter_names_whole_missing_blocks_of_a_published_width():
    arch = dict(embed_dims=[72, 144, 288, 576], depths=[2, 2, 7, 2])
    with pytest.raises(ValueError, match=r"VisionGRU-tiny but depths \[2, 2, 7, 2\].*missing: snake_gru.layers.2.7"):
        _converter()._check_depths(arch, "their.pth")


def test_converter_output_records_the_released_preset(tmp_path):
    src = _authors_file(tmp_path)
    plain, mm = str(tmp_path / "plain.pth"), str(tmp_path / "mm.pth")
    _converter().main([src, plain])
    _converter().main([src, mm, "--format", "mmpretrain"])
    for path in (plain, mm):
        with pytest.raises(ValueError, match="preset='released'.*preset='paper'"):
            _vgru(preset="paper", num_classes=10).load_pretrained(path)
        report = _vgru(num_classes=10).load_pretrained(path)
        assert "settings match" in report.record and len(report.loaded) == report.total - 2 * (path == mm)
    assert torch.load(mm)["state_dict"]._metadata["backbone"][RECORD_KEY]["preset"] == "released"
    with pytest.raises(ValueError, match="preset='released'.*preset='paper'"):
        _vgru(preset="paper", num_classes=10).load_state_dict(torch.load(plain)["state_dict"])


def test_converter_output_survives_a_full_disk(tmp_path, monkeypatch):
    """The save fails half-way (ENOSPC): the earlier conversion is intact and no temporary file stays."""
    import errno
    src = _authors_file(tmp_path)
    dst = tmp_path / "ours.pth"
    tool = _converter()
    tool.main([src, str(dst)])
    before = dst.read_bytes()
    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tool.torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        tool.main([src, str(dst)])
    monkeypatch.setattr(tool.torch, "save", real_save)
    assert dst.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["authors.pth", "ours.pth"]


def test_converter_killed_while_saving_leaves_the_earlier_output(tmp_path):
    """SIGKILL while the new file exists only as its temporary file: the destination keeps the old one."""
    import os
    import signal
    import subprocess
    import time

    from rv_plugins.engine.atomic import SAVE_DELAY_ENV, TMP_SUFFIX
    src = _authors_file(tmp_path)
    dst = tmp_path / "ours.pth"
    dst.write_bytes(b"an earlier conversion")
    tool = os.path.join(TOOLS, "convert_visiongru_checkpoint.py")
    proc = subprocess.Popen([sys.executable, tool, src, str(dst)], env=dict(os.environ, **{SAVE_DELAY_ENV: "30"}),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: any(p.name.endswith(TMP_SUFFIX) for p in tmp_path.iterdir()), proc, 120), \
            "the tool ended before saving"
        time.sleep(0.2)  # the temporary file is complete and fsynced: the tool sleeps before the rename
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert dst.read_bytes() == b"an earlier conversion"


def test_detectron2_checkpointer_keeps_and_checks_the_record(tmp_path):
    """Detectron2's Checkpointer saves model.state_dict() (record included) and loads through
    load_state_dict: the preset is checked there too (MODEL.WEIGHTS, --resume, --eval-only)."""
    pytest.importorskip("detectron2")
    import rv_plugins.detectron2  # noqa: F401  (our adapter: its import errors must fail, not skip)
    from detectron2.checkpoint import DetectionCheckpointer

    body = nn.Module()
    body.bottom_up = nn.Module()
    body.bottom_up.body = _vgru(preset="paper")
    d2_model = nn.Module()
    d2_model.backbone = body
    DetectionCheckpointer(d2_model, save_dir=str(tmp_path)).save("model_final")
    path = str(tmp_path / "model_final.pth")
    assert torch.load(path, weights_only=False)["model"]._metadata["backbone.bottom_up.body"][RECORD_KEY]["preset"] == "paper"
    DetectionCheckpointer(copy.deepcopy(d2_model)).load(path)            # same preset: loads
    d2_model.backbone.bottom_up.body = _vgru()
    with pytest.raises(ValueError, match=f"backbone.bottom_up.body: {MISMATCH}"):
        DetectionCheckpointer(d2_model).load(path)
