"""Procedural datasets in plain numpy / Pillow / PyTorch (no toolkit, no matplotlib at import time).

- :mod:`rv_plugins.datasets.pathfinder`: the Pathfinder contour-tracing task (``PathfinderConfig``,
  ``pathfinder_sample``, the torch ``PathfinderDataset``, ``save_sample_grid``).
- :mod:`rv_plugins.datasets.synthetic_scenes`: textured-shape segmentation scenes (``render_scene``).

The mmseg versions (``PathfinderSegDataset``, ``SyntheticScenesDataset`` and their ``Load*``
transforms) live in ``rv_plugins.mmseg`` on one procedural-dataset base.
"""
