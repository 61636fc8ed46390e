"""Triton kernels of the scan ops (the ``"triton"`` backend of ``rv_plugins.ops``; CUDA, or any device under
``TRITON_INTERPRET=1``).

One module per algorithm over shared pieces:

* ``chunk_scan`` — ``@triton.jit`` helpers: one chunk of a scan, handed on by decoupled look-back
  (tickets, published summaries, the exact step-by-step path for special values);
* ``linear_scan`` — ``h_t = a_t h_{t-1} + b_t``, forward and backward;
* ``mingru`` — the fused minGRU scan (gates computed from the projection as it is loaded);
* ``configs`` — tile and warp configuration per ``(L, D, dtype)``; ``launch`` — host-side helpers.

The backend interface (``rv_plugins.ops.registry``): ``scan_forward``, ``scan_backward``,
``mingru_forward``, ``mingru_backward``, ``check_device``. Design and measurements: ``docs/gpu.md``.
"""
from .launch import check_device
from .linear_scan import scan_backward, scan_forward
from .mingru import mingru_backward, mingru_forward

__all__ = ["scan_forward", "scan_backward", "mingru_forward", "mingru_backward", "check_device"]
