"""Old name of :mod:`rv_plugins.openmmlab.scope` (the ``rv_plugins::`` config rule and its start-up hook).

Kept because ``.pth`` files written by earlier versions of ``tools/setup_env.sh`` import
``rv_plugins._mmengine_scope`` at interpreter start-up, and ``python -m rv_plugins._mmengine_scope
--install`` still writes the hook. New code: ``from rv_plugins.openmmlab import scope``.
"""
import sys

from rv_plugins.openmmlab.scope import (PREFIX, PTH_NAME, _TARGET, _PatchOnImport, configs_dir,  # noqa: F401
                                        install_import_hook, is_hook_installed, main, patch, patch_now,
                                        resolve, write_pth)

__all__ = ["PREFIX", "PTH_NAME", "configs_dir", "resolve", "patch", "patch_now", "install_import_hook",
           "is_hook_installed", "write_pth", "main"]

if __name__ == "__main__":
    sys.exit(main(prog="rv_plugins._mmengine_scope"))
