"""Checks that the toolkits we plug into are usable, with errors that say how to fix them.

:func:`require_mmcv_with_ops` is what ``rv_plugins.mmseg`` calls first: mmsegmentation imports
``mmcv.ops`` at import time, and without a compiled ``mmcv._ext`` its own error does not say that
mmcv-lite (or an mmcv built without ``MMCV_WITH_OPS=1``) is the cause. Imports no toolkit itself
unless mmcv is installed (then only ``mmcv``).
"""
import importlib
import importlib.util

__all__ = ["SETUP_HINT", "require_mmcv_with_ops"]

SETUP_HINT = ("Run `bash tools/setup_env.sh` from the rv_plugins repository (it builds the verified "
              "stack into .venv/), or in your own environment: `pip uninstall -y mmcv-lite mmcv && "
              "MMCV_WITH_OPS=1 pip install --no-build-isolation 'mmcv==2.1.0'` (needs torch < 2.10).")


def require_mmcv_with_ops(who: str) -> None:
    """Raise ImportError unless mmcv (full, with compiled ``mmcv._ext``) is installed."""
    if importlib.util.find_spec("mmcv") is None:
        raise ImportError(f"{who} needs mmcv 2.1.0 with compiled ops, but mmcv is not installed. {SETUP_HINT}")
    mmcv = importlib.import_module("mmcv")
    if importlib.util.find_spec("mmcv._ext") is None:
        raise ImportError(f"{who} needs mmcv with compiled ops (mmcv.ops / mmcv._ext), but the installed "
                          f"mmcv {getattr(mmcv, '__version__', '?')} has none (mmcv-lite, or built without "
                          f"MMCV_WITH_OPS=1). mmsegmentation imports mmcv.ops at import time. {SETUP_HINT}")
