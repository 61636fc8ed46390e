"""Detectron2 without its compiled ops.

Detectron2 is not on PyPI; our CPU environment installs its v0.6 Python package without the C++/CUDA
extension ``detectron2._C``, which v0.6 imports at import time (``layers/deform_conv.py``). When, and
only when, ``detectron2._C`` cannot be found, :func:`ensure_detectron2_ops` installs a stand-in
module whose functions raise a clear error if called, and logs one warning. A real ``_C`` (a normal
build from source, with or without CUDA) is never touched, and no code path of ours depends on the
stand-in. Without ``_C``: deformable convolution, rotated boxes/NMS and the fast COCO evaluator
(``COCOEvaluator(use_fast_impl=True)``) are unavailable; everything Panoptic FPN needs works.
"""
import importlib.util
import logging
import sys
import types

logger = logging.getLogger(__name__)
STAND_IN_FLAG = "__rv_plugins_stand_in__"
MESSAGE = ("detectron2._C (Detectron2's compiled C++/CUDA ops) is not installed: deformable convolution, "
           "rotated boxes/NMS and the fast COCO evaluator are unavailable. Build Detectron2 from source "
           "with its ops (see Detectron2's INSTALL.md) to get them, or pass use_fast_impl=False to COCOEvaluator.")


class _MissingOp:
    def __init__(self, name: str):
        self.__name__ = name

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"detectron2._C.{self.__name__} was called, but {MESSAGE}")


# Informational queries (``detectron2.utils.collect_env``, called by ``default_setup``) answer
# truthfully instead of raising; every other attribute is a missing op.
_INFO = {
    "get_compiler_version": lambda: "none (detectron2._C missing; rv_plugins stand-in)",
    "get_cuda_version": lambda: "none (detectron2._C missing; rv_plugins stand-in)",
    "has_cuda": lambda: False,
}


class _StandInModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        if name in _INFO:
            return _INFO[name]
        return _MissingOp(name)


def has_compiled_ops() -> bool:
    """Whether a real ``detectron2._C`` is importable (False when only our stand-in is present)."""
    module = sys.modules.get("detectron2._C")
    if module is not None:
        return not getattr(module, STAND_IN_FLAG, False)
    return importlib.util.find_spec("detectron2._C") is not None


def ensure_detectron2_ops() -> bool:
    """Install the stand-in if ``detectron2._C`` is missing. Returns True if the real ops are present."""
    if importlib.util.find_spec("detectron2") is None:
        raise ImportError("rv_plugins.detectron2 needs Detectron2. Run `bash tools/setup_env.sh` (installs "
                          "Detectron2 v0.6's Python package) or build Detectron2 from source.")
    if has_compiled_ops():
        return True
    stand_in = _StandInModule("detectron2._C", "stand-in for Detectron2's missing compiled ops (rv_plugins)")
    setattr(stand_in, STAND_IN_FLAG, True)
    sys.modules["detectron2._C"] = stand_in
    import detectron2
    detectron2._C = stand_in
    logger.warning("rv_plugins: %s Using a stand-in module.", MESSAGE)
    return False
