"""Mixed precision on a CPU: ``BF16AutocastOptimWrapper`` and what ``tools/train.py --amp`` turns on.

mmengine 0.10.7's ``AmpOptimWrapper`` refuses to run without a GPU/NPU/MLU/MUSA ("AmpOptimizerWrapper is
only available training on gpu, npu, mlu or musa") although its ``autocast`` supports the CPU in
bfloat16. ``BF16AutocastOptimWrapper`` is mmengine's ``OptimWrapper`` with the forward (model, data
preprocessor and loss, i.e. ``optim_context``) under ``torch.autocast('cpu', torch.bfloat16)``: the
matrix products and convolutions run in bfloat16, the weights, gradients and optimizer stay float32.
bfloat16 has float32's exponent range, so no loss scaling is needed (and none is done).

Importing this module registers the wrapper in mmengine's root ``OPTIM_WRAPPERS`` registry.
"""
from contextlib import contextmanager

import torch
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS

from rv_plugins.openmmlab.preparation import RunPreparationError

__all__ = ["BF16AutocastOptimWrapper", "use_amp"]


@OPTIM_WRAPPERS.register_module()
class BF16AutocastOptimWrapper(OptimWrapper):
    """``OptimWrapper`` whose forward runs under CPU bfloat16 autocast (see the module docstring)."""

    @contextmanager
    def optim_context(self, model):
        with super().optim_context(model), torch.autocast("cpu", dtype=torch.bfloat16):
            yield


def use_amp(optim_wrapper: dict, log=print) -> None:
    """``--amp``: mmengine's ``AmpOptimWrapper`` (float16 with dynamic loss scaling) where it runs (a
    GPU), ``BF16AutocastOptimWrapper`` on a CPU-only machine. Changes ``optim_wrapper`` in place."""
    kind = optim_wrapper.get("type", "OptimWrapper")
    if torch.cuda.is_available():
        if kind == "AmpOptimWrapper":
            log("--amp: AMP is already enabled in the config")
        else:
            optim_wrapper["type"] = "AmpOptimWrapper"
            optim_wrapper.setdefault("loss_scale", "dynamic")
        return
    if kind not in ("OptimWrapper", "AmpOptimWrapper", "BF16AutocastOptimWrapper"):
        raise RunPreparationError(f"--amp on a CPU: the config's optim_wrapper type {kind!r} is not mmengine's "
                         f"OptimWrapper, so rv_plugins cannot add bfloat16 autocast to it. Drop --amp, or use "
                         f"optim_wrapper.type='BF16AutocastOptimWrapper' in the config.")
    optim_wrapper["type"] = "BF16AutocastOptimWrapper"
    for key in ("loss_scale", "dtype"):  # AmpOptimWrapper's float16 settings do not apply
        optim_wrapper.pop(key, None)
    log("--amp without a GPU: training in bfloat16 autocast on the CPU (BF16AutocastOptimWrapper; mmengine's "
        "AmpOptimWrapper needs a GPU)")
