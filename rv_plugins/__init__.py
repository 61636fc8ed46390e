"""rv_plugins: recurrent vision models on one shared scan op library.

Layers: ``rv_plugins.ops`` (scan kernels) -> ``rv_plugins.layers`` -> ``rv_plugins.backbones`` /
``rv_plugins.solvers`` (plain PyTorch) -> one thin adapter package per toolkit
(``rv_plugins.mmseg``, ``rv_plugins.mmpretrain``, ``rv_plugins.detectron2``).
Importing this package imports no toolkit.
"""
__version__ = "0.1.0"
