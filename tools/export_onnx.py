"""Export a model to ONNX and check it in onnxruntime against PyTorch.

    python tools/export_onnx.py CONFIG_OR_MODEL_NAME [CHECKPOINT] --shape H W [--batch N] [--dynamic]
                                [--legacy] [--out FILE] [--num-classes K] [--model-kwargs k=v ...]
                                [--cfg-options k=v ...] [--opset N] [--no-optimize] [--no-check]
                                [--tolerance 1e-4]
    rv-export-onnx ...            (the same, as the package's console script)

What is exported, by the first argument:

* an mmsegmentation config (``.py``; ``rv_plugins::NAME.py`` works too; ``--cfg-options`` changes it): the segmentor's
  ``forward(inputs, mode='tensor')``: normalised images ``(N, 3, H, W)`` -> the decode head's logits;
* an mmpretrain config: the classifier's ``mode='tensor'`` output (class scores before softmax);
* a Detectron2 yaml whose ``MODEL.ROI_MASK_HEAD.NAME`` is ``HGRUMaskHead``: the mask head's predictor,
  ROI features ``(N, FPN.OUT_CHANNELS, S, S)`` -> mask logits ``(N, K, 2S, 2S)`` (``--shape S S``, default
  the config's pooler resolution; the rest of the detector goes through Detectron2's own export tools);
* a model name of the backbone registry (``visiongru-ti``, ``sequencer2d-s``, ...; or a family with
  ``--model-kwargs "arch={'embed_dims': [...], 'depths': [...]}"``): the backbone,
  images -> its feature maps (``--num-classes K``: with the classifier, -> logits); constructor arguments
  with ``--model-kwargs preset=paper rnn_type=gru out_indices=[0,1,2,3]``.

``CHECKPOINT`` loads weights (mm checkpoint, Detectron2 ``model_final.pth``, or a backbone checkpoint).
Inputs are random (seed 0) of ``--shape``; the ONNX file's outputs are compared with PyTorch's (max
relative error, one onnxruntime thread) and the tool fails above ``--tolerance``. ``--dynamic`` makes
batch, height and width dynamic; that needs the legacy TorchScript exporter (``--legacy``, chosen for you
with a note): the default ``torch.export`` exporter specialises the scan's padding to the example size.
"""
import argparse
import ast
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from rv_plugins.export import compare_with_eager, export_onnx, flatten_outputs, onnxruntime_session  # noqa: E402
from rv_plugins.utils.checkpoint import extract_state_dict, read_checkpoint  # noqa: E402


class TensorMode(nn.Module):
    """An OpenMMLab model's ``forward(inputs, mode='tensor')`` as a one-input module."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor):
        return self.model(inputs, mode="tensor")


class Classifier(nn.Module):
    """A registry backbone with its classifier: images -> logits."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_head(self.backbone(images))


class MaskPredictor(nn.Module):
    """The hGRU mask head's predictor: ROI features -> mask logits, at ``steps`` solver steps."""

    def __init__(self, predictor: nn.Module, steps=None):
        super().__init__()
        self.predictor, self.steps = predictor, steps

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.predictor(features, steps=self.steps)[0]


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_kwargs(pairs) -> dict:
    """``["preset=paper", "out_indices=[0,1]"]`` -> ``{"preset": "paper", "out_indices": [0, 1]}``."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise SystemExit(f"--model-kwargs: {pair!r} is not KEY=VALUE (e.g. preset=paper)")
        key, value = pair.split("=", 1)
        out[key] = _literal(value)
    return out


def build_mm(config: str, checkpoint, num_classes, kwargs, cfg_options=None):
    """(module, name) for an mmseg / mmpretrain config."""
    from mmengine.registry import init_default_scope

    from rv_plugins.openmmlab import runner as mr
    cfg = mr.load_config(config, cfg_options or None)
    scope = cfg.get("default_scope", "mmseg")
    init_default_scope(scope)
    if scope == "mmseg":
        from mmseg.registry import MODELS
    elif scope == "mmpretrain":
        from mmpretrain.registry import MODELS
    else:
        raise SystemExit(f"{config}: default_scope {scope!r}; export supports mmseg and mmpretrain configs")
    if num_classes or kwargs:
        raise SystemExit("--num-classes / --model-kwargs apply to model names; change an mm config with its "
                         "own settings instead")
    model = MODELS.build(cfg.model)
    if checkpoint:
        from mmengine.runner import load_checkpoint
        load_checkpoint(model, checkpoint, map_location="cpu")
    else:
        model.init_weights()
    return TensorMode(model), os.path.splitext(os.path.basename(config.split("::")[-1]))[0]


def build_detectron2_head(config: str, checkpoint, shape):
    """(module, ROI size, name) for a Detectron2 yaml with the hGRU mask head."""
    import rv_plugins.detectron2  # noqa: F401  (registers the head)
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.roi_heads.mask_head import build_mask_head

    from rv_plugins.detectron2.config import get_cfg
    cfg = get_cfg(config)
    if cfg.MODEL.ROI_MASK_HEAD.NAME != "HGRUMaskHead":
        raise SystemExit(f"{config}: MODEL.ROI_MASK_HEAD.NAME is {cfg.MODEL.ROI_MASK_HEAD.NAME!r}; this tool exports "
                         "the HGRUMaskHead (use Detectron2's export tools for its own heads)")
    size = cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION
    head = build_mask_head(cfg, ShapeSpec(channels=cfg.MODEL.FPN.OUT_CHANNELS, height=size, width=size))
    if checkpoint:
        prefix = "roi_heads.mask_head."
        weights = extract_state_dict(read_checkpoint(checkpoint), checkpoint)
        state = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        if not state:
            raise SystemExit(f"{checkpoint}: no 'roi_heads.mask_head.*' weights; pass a checkpoint of this model")
        head.load_state_dict(state)
    module = MaskPredictor(head.predictor, head.test_steps)
    return module, (cfg.MODEL.FPN.OUT_CHANNELS,), (shape or (size, size)), os.path.splitext(os.path.basename(config))[0]


def build_named(name: str, checkpoint, num_classes, kwargs):
    """(module, name) for a model name (``visiongru-ti``) or family (``visiongru``, ``arch`` in ``kwargs``) of the
    backbone registry."""
    from rv_plugins.backbones.registry import create_backbone, list_backbones, model_names
    if name not in model_names() and name not in list_backbones():
        raise SystemExit(f"{name!r} is neither a config file nor a model name; model names: {model_names()}, "
                         f"families (with --model-kwargs arch=...): {list_backbones()}")
    backbone = create_backbone(name, num_classes=num_classes or 0, **kwargs)
    if checkpoint:
        backbone.load_pretrained(checkpoint)
    return (Classifier(backbone) if num_classes else backbone), name


def build(args):
    """(module, input tensor, default file stem) from the command line."""
    target = args.target
    if target.endswith((".yaml", ".yml")):
        module, channels, (h, w), stem = build_detectron2_head(target, args.checkpoint, args.shape)
        return module, torch.randn(args.batch, *channels, h, w, generator=torch.Generator().manual_seed(0)), stem
    if args.shape is None:
        raise SystemExit("--shape H W is needed for this model (the image size to export at)")
    if target.endswith(".py") or "::" in target:
        module, stem = build_mm(target, args.checkpoint, args.num_classes, parse_kwargs(args.model_kwargs),
                                parse_kwargs(args.cfg_options))
    else:
        module, stem = build_named(target, args.checkpoint, args.num_classes, parse_kwargs(args.model_kwargs))
    h, w = args.shape
    return module, torch.randn(args.batch, 3, h, w, generator=torch.Generator().manual_seed(0)), stem


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", metavar="CONFIG_OR_MODEL_NAME")
    p.add_argument("checkpoint", nargs="?", default=None, metavar="CHECKPOINT")
    p.add_argument("--shape", nargs=2, type=int, metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dynamic", action="store_true", help="dynamic batch/height/width (legacy exporter)")
    p.add_argument("--legacy", action="store_true", help="the TorchScript exporter (dynamo=False)")
    p.add_argument("--out", help="ONNX file (default: NAME_HxW.onnx in the current folder)")
    p.add_argument("--num-classes", type=int, default=0, help="model names: export the classifier's logits")
    p.add_argument("--model-kwargs", nargs="+", metavar="KEY=VALUE", help="model names: constructor arguments")
    p.add_argument("--cfg-options", nargs="+", metavar="KEY=VALUE",
                   help="mm configs: overrides, e.g. model.decode_head.num_classes=19 (values as Python literals)")
    p.add_argument("--opset", type=int)
    p.add_argument("--no-optimize", action="store_true",
                   help="default exporter: skip onnxscript's optimizer (about half the export time, more nodes)")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest relative error accepted")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    """Export, check, print a summary; returns it (``path``, ``export_s``, ``nodes``, ``max_rel_error``)."""
    args = parse_args(argv)
    if args.checkpoint and not os.path.isfile(args.checkpoint):
        raise SystemExit(f"checkpoint {args.checkpoint!r} does not exist")
    legacy = args.legacy
    if args.dynamic and not legacy:
        print("--dynamic: using the legacy TorchScript exporter (torch.export specialises the scan's padding "
              "to the example size)")
        legacy = True
    module, x, stem = build(args)
    module.eval()
    out = args.out or f"{stem}_{x.shape[-2]}x{x.shape[-1]}.onnx"
    result = export_onnx(module, x, out, legacy=legacy, dynamic=args.dynamic, opset=args.opset,
                         optimize=not args.no_optimize)
    summary = dict(path=out, exporter=result.exporter, export_s=round(result.seconds, 2), nodes=result.nodes,
                   input_shape=list(x.shape), dynamic=args.dynamic)
    if not args.no_check:
        start = time.perf_counter()
        with torch.no_grad():
            expected = flatten_outputs(module(x))
        errors = compare_with_eager(module, onnxruntime_session(out), x, expected)
        summary.update(max_rel_error=max(errors), check_s=round(time.perf_counter() - start, 2))
        if any(t.numel() and not t.abs().max() for t in expected):
            print("note: an output is all zeros (an untrained zero-initialised head?): its comparison shows "
                  "nothing; pass a checkpoint to check it")
    print(" ".join(f"{k}={v}" for k, v in summary.items()))
    if not args.no_check and summary["max_rel_error"] > args.tolerance:
        raise SystemExit(f"onnxruntime differs from PyTorch by {summary['max_rel_error']:.3g} relative "
                         f"(> --tolerance {args.tolerance:g}); the ONNX file is at {out}")
    return summary


if __name__ == "__main__":
    main()
