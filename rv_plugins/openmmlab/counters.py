"""Our ops in mmengine's complexity counters (``rv_plugins.mmseg`` and ``rv_plugins.mmpretrain`` call this).

mmengine's ``FlopAnalyzer`` / ``ActivationAnalyzer`` (behind ``mmengine.analysis.get_model_complexity_info``
and the ``get_flops`` tools of mmseg and mmpretrain) take their handles from two module-level tables when
they are built. :func:`register_mmengine_counters` adds the handles of :mod:`rv_plugins.utils.jit_flops`
(our scan ops, the LSTM/GRU/RNN kernels, ``baddbmm``) to those tables, so every analyzer built afterwards
counts them, with :func:`rv_plugins.utils.flops.count_flops`'s formulas. Existing handles are kept.
"""
import warnings

from rv_plugins.utils.jit_flops import register_handles

__all__ = ["register_mmengine_counters"]


def register_mmengine_counters() -> bool:
    """Add our handles to mmengine's default FLOP and activation handles; returns whether it could.

    An mmengine without those tables (other than the 0.10 series) gets a warning saying that its
    counters will report our ops as unsupported (zero), instead of an import error in the adapter.
    """
    try:
        from mmengine.analysis import complexity_analysis as analysis
        flops, acts = analysis._DEFAULT_SUPPORTED_FLOP_OPS, analysis._DEFAULT_SUPPORTED_ACT_OPS
    except (ImportError, AttributeError) as err:
        warnings.warn(f"rv_plugins: mmengine's FLOP counter tables were not found ({err}); "
                      "get_model_complexity_info will count our scan and RNN ops as zero. "
                      "Count with rv_plugins.utils.flops.count_flops instead.")
        return False
    register_handles(flops, acts)
    return True
