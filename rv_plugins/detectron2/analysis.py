"""Detectron2's FLOP tools on our models: fvcore counts our ops, and ``detectron2.utils.analysis`` imports.

* :func:`register_fvcore_counters`: fvcore's ``FlopCountAnalysis`` / ``ActivationCountAnalysis`` (Detectron2's
  ``detectron2.utils.analysis.FlopCountAnalysis`` is a subclass) take their handles from module-level tables
  when built; this adds :mod:`rv_plugins.utils.jit_flops`'s (our scan ops, ``nn.LSTM/GRU/RNN``, ``baddbmm``),
  keeping fvcore's own.
* :func:`ensure_detectron2_export`: Detectron2 v0.6's ``detectron2/export/__init__.py`` imports its Caffe2
  exporter, which needs ``caffe2`` (gone from torch 2.x), so ``detectron2.export`` and with it
  ``detectron2.utils.analysis`` (``FlopCountAnalysis``, which uses ``export.TracingAdapter``) fail with
  "No module named 'caffe2'". When, and only when, that is why ``detectron2.export`` does not import, this
  installs the package the way Detectron2 main's ``__init__`` does without Caffe2: ``TracingAdapter``,
  ``scripting_with_instances`` and ``dump_torchscript_IR``, no Caffe2 API (logged once). A Detectron2 whose
  ``detectron2.export`` imports is left alone.
"""
import importlib
import importlib.util
import logging
import sys

from rv_plugins.utils.jit_flops import register_handles

__all__ = ["register_fvcore_counters", "ensure_detectron2_export"]

logger = logging.getLogger(__name__)
_EXPORT = "detectron2.export"


def register_fvcore_counters() -> None:
    """Add our handles to fvcore's default FLOP and activation handles (see the module docstring)."""
    # the modules (``fvcore.nn.flop_count`` is also the name of a function that fvcore.nn exports)
    flops = importlib.import_module("fvcore.nn.flop_count")
    acts = importlib.import_module("fvcore.nn.activation_count")
    register_handles(flops._DEFAULT_SUPPORTED_OPS, acts._DEFAULT_SUPPORTED_OPS)


def _is_missing_caffe2(err: ImportError) -> bool:
    return (getattr(err, "name", None) or "").split(".")[0] == "caffe2"


def ensure_detectron2_export() -> bool:
    """Make ``import detectron2.export`` work without Caffe2; True if Detectron2's own ``__init__`` imported."""
    if _EXPORT in sys.modules:
        return True
    try:
        importlib.import_module(_EXPORT)
        return True
    except ImportError as err:
        if not _is_missing_caffe2(err):
            raise
    for name in [m for m in sys.modules if m == _EXPORT or m.startswith(_EXPORT + ".")]:
        del sys.modules[name]  # what the failed __init__ left half-imported
    spec = importlib.util.find_spec(_EXPORT)
    package = importlib.util.module_from_spec(spec)  # the package without running its __init__
    sys.modules[_EXPORT] = package
    try:
        from detectron2.export.flatten import TracingAdapter
        from detectron2.export.torchscript import dump_torchscript_IR, scripting_with_instances
    except BaseException:
        del sys.modules[_EXPORT]
        raise
    package.TracingAdapter, package.dump_torchscript_IR = TracingAdapter, dump_torchscript_IR
    package.scripting_with_instances = scripting_with_instances
    package.__all__ = ["TracingAdapter", "dump_torchscript_IR", "scripting_with_instances"]
    import detectron2
    detectron2.export = package
    logger.warning("rv_plugins: detectron2.export needs caffe2 (not in torch 2.x) for its Caffe2 exporter; "
                   "installed it without that exporter, as Detectron2 main does (TracingAdapter, TorchScript "
                   "helpers), so detectron2.utils.analysis (FlopCountAnalysis) imports.")
    return False
