"""Detectron2 without its compiled ops.

Detectron2 is not on PyPI; our CPU environment installs its v0.6 Python package without the C++/CUDA
extension ``detectron2._C``, which v0.6 imports at import time (``layers/deform_conv.py``). When, and
only when, ``import detectron2.layers`` fails for lack of ``detectron2._C``, :func:`ensure_detectron2_ops`
installs a stand-in module whose functions raise a clear error if called, and logs one warning. A real ``_C`` (a normal
build from source, with or without CUDA) is never touched, and no code path of ours depends on the
stand-in. Without ``_C``: deformable convolution, rotated boxes/NMS and the fast COCO evaluator
(``COCOEvaluator(use_fast_impl=True)``) are unavailable; everything Panoptic FPN needs works.
"""
import importlib
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


def _is_missing_c(err: BaseException) -> bool:
    """Whether an ImportError is Detectron2 failing for lack of (or a broken) ``detectron2._C``."""
    return isinstance(err, ImportError) and (getattr(err, "name", None) == "detectron2._C" or "_C" in str(err))


_REAL_C = None


def has_compiled_ops() -> bool:
    """Whether a real ``detectron2._C`` imports (False for our stand-in, a missing ``_C``, or a file named
    ``_C`` that does not load, e.g. one built for another torch). The result is cached."""
    global _REAL_C
    module = sys.modules.get("detectron2._C")
    if module is not None:
        return not getattr(module, STAND_IN_FLAG, False)
    if _REAL_C is None:
        if importlib.util.find_spec("detectron2") is None:
            return False
        try:
            importlib.import_module("detectron2._C")
            _REAL_C = True
        except Exception as err:  # ImportError, OSError (bad ELF), undefined symbols ...
            _REAL_C = False
            if importlib.util.find_spec("detectron2._C") is not None:
                logger.warning("rv_plugins: detectron2._C exists but does not import (%s: %s); treating "
                               "Detectron2's compiled ops as missing. Rebuild Detectron2 against this torch.",
                               type(err).__name__, err)
    return _REAL_C


def ensure_detectron2_ops() -> bool:
    """Make ``import detectron2.layers`` (and so the modeling code) work; True if the real ops are present.

    Detectron2 v0.6 imports ``_C`` at import time (``layers/deform_conv.py``), so without it nothing
    of ``detectron2.modeling`` imports: only then is the stand-in installed. Newer Detectron2 (main)
    imports without ``_C`` and has its own fallbacks (e.g. ``COCOEvaluator`` falls back to pycocotools
    when ``fast_eval_api`` cannot import ``_C``), which a stand-in would break: it is left alone.
    """
    if importlib.util.find_spec("detectron2") is None:
        raise ImportError("rv_plugins.detectron2 needs Detectron2. Run `bash tools/setup_env.sh` (installs "
                          "Detectron2 v0.6's Python package) or build Detectron2 from source.")
    if has_compiled_ops():
        return True
    try:
        importlib.import_module("detectron2.layers")
        logger.warning("rv_plugins: detectron2._C is missing; this Detectron2 imports without it and uses "
                       "its own fallbacks (no stand-in installed). Deformable and rotated ops need a build "
                       "with its compiled ops.")
        return False
    except ImportError as err:
        if not _is_missing_c(err):
            raise
    for name in [m for m in sys.modules if m == "detectron2.layers" or m.startswith("detectron2.layers.")]:
        if sys.modules[name] is None:
            del sys.modules[name]
    stand_in = _StandInModule("detectron2._C", "stand-in for Detectron2's missing compiled ops (rv_plugins)")
    setattr(stand_in, STAND_IN_FLAG, True)
    sys.modules["detectron2._C"] = stand_in
    import detectron2
    detectron2._C = stand_in
    logger.warning("rv_plugins: %s Using a stand-in module.", MESSAGE)
    return False
