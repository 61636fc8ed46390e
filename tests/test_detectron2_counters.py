"""Detectron2's FLOP tool (``detectron2.utils.analysis.FlopCountAnalysis``, fvcore's counter) on our models.

Importing ``rv_plugins.detectron2`` makes it import on Detectron2 v0.6 without Caffe2 and registers our ops with
fvcore; it then gives ``rv_plugins.utils.flops.count_flops``'s numbers within 1% (fvcore adds its own estimates
for upsampling and norms, Detectron2's wrapper ignores batch norm).
"""
import os

import pytest
import torch
from torch import nn

pytestmark = [pytest.mark.detectron2, pytest.mark.usefixtures("one_thread")]
pytest.importorskip("detectron2")

import rv_plugins.detectron2  # noqa: E402,F401
from rv_plugins.utils.flops import count_flops  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs", "detectron2")
# Panoptic FPN shrunk as tests/test_detectron2_head.py does: R-18, 64-channel FPN, few proposals, 64-px images
TINY = ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
        "MODEL.FPN.OUT_CHANNELS", "64", "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
        "MODEL.RPN.POST_NMS_TOPK_TEST", "16", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64"]


def _analysis(model, inputs):
    from detectron2.utils.analysis import FlopCountAnalysis
    analysis = FlopCountAnalysis(model, inputs)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return analysis


class _Images(nn.Module):
    """A Detectron2 model called on one image tensor (the input our count_flops takes)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        return self.model([{"image": image}])


def test_flop_count_analysis_imports_without_caffe2():
    import detectron2.export
    from detectron2.export.flatten import TracingAdapter
    from detectron2.utils.analysis import FlopCountAnalysis  # "No module named 'caffe2'" on v0.6 before
    assert detectron2.export.TracingAdapter is TracingAdapter and FlopCountAnalysis is not None
    from rv_plugins.detectron2.analysis import ensure_detectron2_export
    assert ensure_detectron2_export() in (True, False)  # a second call leaves the installed package as it is
    assert detectron2.export.TracingAdapter is TracingAdapter


def test_fvcore_counts_our_ops_like_count_flops():
    from fvcore.nn import FlopCountAnalysis

    from rv_plugins.utils.jit_flops import flop_handles
    lstm, x = nn.LSTM(6, 4, bidirectional=True), torch.randn(5, 3, 6)
    assert FlopCountAnalysis(lstm, x).total() == count_flops(lstm, x)["total"] == 5 * 3 * 2 * 4 * 4 * (6 + 4)
    import importlib
    table = importlib.import_module("fvcore.nn.flop_count")._DEFAULT_SUPPORTED_OPS
    assert set(flop_handles()) <= set(table)


@pytest.mark.parametrize("name", ["build_sequencer2d_fpn_backbone", "build_visiongru_fpn_backbone"])
def test_flop_count_analysis_counts_our_detectron2_backbones(name):
    from detectron2.modeling import build_backbone

    from rv_plugins.detectron2.config import get_cfg
    cfg = get_cfg(os.path.join(CONFIGS, "panoptic_fpn_R_50_synthetic_hgru_crbp.yaml"),
                  ["MODEL.DEVICE", "cpu", "MODEL.BACKBONE.NAME", name, "MODEL.FPN.NORM", ""])
    backbone = build_backbone(cfg).eval()
    x = torch.randn(1, 3, 64, 96)
    ours, theirs = count_flops(backbone, x)["total"], _analysis(backbone, x).total()
    assert abs(theirs / ours - 1) < 0.01, (name, theirs, ours)


@pytest.mark.parametrize("config", ["panoptic_fpn_R_50_1x_feedforward.yaml", "panoptic_fpn_R_50_1x_hgru_crbp.yaml"])
def test_flop_count_analysis_counts_the_panoptic_model(config):
    from detectron2.modeling import build_model

    from rv_plugins.detectron2.config import get_cfg
    # the authors' COCO cell takes the ROI features as they are: its width follows the FPN's
    extra = ["MODEL.ROI_MASK_HEAD.HGRU.STEPS", "4", "MODEL.ROI_MASK_HEAD.HGRU.CHANNELS", "64",
             "MODEL.ROI_MASK_HEAD.HGRU.NORM_GROUPS", "8"] if "hgru" in config else []
    cfg = get_cfg(os.path.join(CONFIGS, config), TINY + extra)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    image = torch.rand(3, 64, 64) * 255
    theirs = _analysis(model, [{"image": image}]).total()
    ours = count_flops(_Images(model).eval(), image)["total"]
    assert abs(theirs / ours - 1) < 0.01, (config, theirs, ours)
