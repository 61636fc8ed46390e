"""Taking a model out of PyTorch: ONNX export and the onnxruntime check (plain PyTorch; no toolkit imports).

See :mod:`rv_plugins.export.onnx` and ``docs/deployment.md``; ``tools/export_onnx.py`` (``rv-export-onnx``)
builds the model from a config or a model name and calls these.
"""
from .onnx import (AdaptiveAvgPool2dAsMatmul, ExportResult, compare_with_eager, export_mode, export_onnx,
                   flatten_outputs, onnxruntime_session, relative_error, run_onnx)

__all__ = ["export_onnx", "export_mode", "onnxruntime_session", "run_onnx", "compare_with_eager", "relative_error",
           "flatten_outputs", "ExportResult", "AdaptiveAvgPool2dAsMatmul"]
