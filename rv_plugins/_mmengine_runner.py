"""Old name of :mod:`rv_plugins.openmmlab.runner` (what ``tools/train.py`` / ``tools/test.py`` share).

New code: ``from rv_plugins.openmmlab import runner``.
"""
from rv_plugins.openmmlab.runner import (DATA_HINTS, _data_folders, _datasets, _has_file,  # noqa: F401
                                         build_runner, check_datasets, default_work_dir,
                                         init_cpu_process_group, is_main_rank, load_config,
                                         setup_launcher_env, use_atomic_checkpoints)

__all__ = ["DATA_HINTS", "load_config", "check_datasets", "init_cpu_process_group", "build_runner",
           "use_atomic_checkpoints", "is_main_rank", "default_work_dir", "setup_launcher_env"]
