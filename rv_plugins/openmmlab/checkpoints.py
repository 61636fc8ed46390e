"""Our checkpoints and mmengine's under torch >= 2.6's weights-only ``torch.load``.

mmengine 0.10.7 pickles its message hub into every checkpoint (``HistoryBuffer``, numpy arrays and
``getattr(HistoryBuffer, 'min')``-style references), which torch >= 2.6 refuses by default.
:func:`allow_mmengine_checkpoints` registers the narrowest allow-list that works with torch's
unpickler (the classes themselves and a ``getattr`` stand-in that only resolves ``HistoryBuffer``'s
statistics methods; see :mod:`rv_plugins.utils.checkpoint` for the list). It changes process-wide
state (``torch.serialization.add_safe_globals``), once per process, and is called explicitly by:

- the adapters ``rv_plugins.mmseg`` / ``rv_plugins.mmpretrain`` when imported (every config imports
  one through ``custom_imports``), so the toolkits' own ``tools/train.py --resume``,
  ``tools/test.py``, ``init_model`` and inferencers read our checkpoints;
- :class:`rv_plugins.openmmlab.prepared_runner.PreparedRunner` (resume in our ``tools/train.py`` and in the
  toolkits' own scripts for configs with ``runner_type='PreparedRunner'``);
- :func:`rv_plugins.utils.checkpoint.read_checkpoint`, when mmengine is loaded or an
  mmengine checkpoint is met.

It returns False (and does nothing) on torch < 2.4 or without mmengine.
"""
from rv_plugins.utils.checkpoint import allow_mmengine_checkpoints, mmengine_checkpoint_globals

__all__ = ["allow_mmengine_checkpoints", "mmengine_checkpoint_globals"]
