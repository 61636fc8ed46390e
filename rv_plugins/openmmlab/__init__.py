"""rv_plugins.openmmlab: the public glue between rv_plugins and the OpenMMLab toolkits.

Nothing here does model math; the modules are what ``tools/train.py``, ``tools/test.py``, the
``rv_plugins.mmseg`` / ``rv_plugins.mmpretrain`` adapters and the configs share:

- :mod:`rv_plugins.openmmlab.scope`: ``rv_plugins::<config>.py`` wherever mmengine takes a config path,
  and its start-up hook (the package's one global effect, see that module's docstring).
- :mod:`rv_plugins.openmmlab.preparation`: the one run preparation (work dir, atomic checkpoints, the
  checkpoint to resume from); :mod:`rv_plugins.openmmlab.prepared_runner`: ``PreparedRunner``, the
  mmengine Runner that applies it, for our tools and the toolkits' own (``runner_type='PreparedRunner'``).
- :mod:`rv_plugins.openmmlab.runner`: config loading, dataset checks, building the runner.
- :mod:`rv_plugins.openmmlab.amp`: ``--amp`` on a CPU (bfloat16 autocast).
- :mod:`rv_plugins.openmmlab.checks`: "is this toolkit usable?" checks with errors that name the fix.
- :mod:`rv_plugins.openmmlab.checkpoints`: registers mmengine's checkpoint classes with torch's
  weights-only unpickler (torch >= 2.6).
- :mod:`rv_plugins.openmmlab.backbones`: the one adapter that turns a plain-PyTorch backbone into an
  OpenMMLab backbone (``init_cfg`` semantics).

Importing this package imports nothing else (no mmengine, mmcv, mmseg or mmpretrain); import the
submodule you need (``prepared_runner`` and ``amp`` import mmengine).
"""
