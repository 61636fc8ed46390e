"""``_base_ = ['rv_plugins::<name>.py']`` in any mmengine config, and the start-up hook that enables it.

The rule: ``rv_plugins::<path>`` is ``<rv_plugins>/.mim/configs/<path>`` when the package was installed
with its configs, else the repository's ``configs/<path>``, with or without a folder in ``<path>``.
mmengine 0.10.7 cannot express it itself: it resolves ``pkg::path`` bases only for the packages in its
hard-coded ``MODULE2PACKAGE`` map, only for paths that contain a folder, and looks for them in
``<pkg>/.mim/configs`` through ``pkg_resources`` (the wrong place for editable installs). So
:func:`patch` wraps ``mmengine.config.Config._get_cfg_path`` to answer ``rv_plugins::`` paths and
hands every other path to mmengine unchanged.

The start-up hook: the package's one global effect
--------------------------------------------------
The rule must be in place before a config is parsed, i.e. before its ``custom_imports`` (which import
``rv_plugins.mmseg`` / ``rv_plugins.mmpretrain``) run, so mmsegmentation's and mmpretrain's own
``tools/train.py`` need it from interpreter start-up. ``tools/setup_env.sh`` (or
``python -m rv_plugins.openmmlab.scope --install``; the old name ``rv_plugins._mmengine_scope`` works
too) writes the one-line file ``rv_plugins_mmengine_scope.pth`` into site-packages, which calls
:func:`install_import_hook` when Python starts. That call imports nothing heavy and patches nothing:
it puts a finder on ``sys.meta_path`` that finds no module itself and, when (and if) the process
first imports ``mmengine.config.config``, lets that module load normally and then applies
:func:`patch` to it. Processes that never import mmengine are untouched; the plain-PyTorch layers
(``rv_plugins.ops`` / ``layers`` / ``backbones`` / ``heads`` / ``solvers``) never need it.

Without the ``.pth`` file, our own entry points apply the same patch themselves: ``tools/train.py`` /
``tools/test.py`` (:func:`rv_plugins.openmmlab.runner.load_config`) and importing the adapters
``rv_plugins.mmseg`` / ``rv_plugins.mmpretrain`` call :func:`patch_now`. To remove the hook, delete
the ``.pth`` file (``python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])"`` names
the folder).
"""
import importlib.abc
import importlib.util
import os
import sys

__all__ = ["PREFIX", "PTH_NAME", "configs_dir", "resolve", "patch", "patch_now", "install_import_hook",
           "is_hook_installed", "write_pth", "main"]

PREFIX = "rv_plugins::"
PTH_NAME = "rv_plugins_mmengine_scope.pth"
_TARGET = "mmengine.config.config"


def configs_dir() -> str:
    """Where ``rv_plugins::`` configs live: the installed ``.mim/configs`` or the repo's ``configs/``."""
    spec = importlib.util.find_spec("rv_plugins")
    pkg_dir = list(spec.submodule_search_locations)[0]
    mim = os.path.join(pkg_dir, ".mim", "configs")
    return mim if os.path.isdir(mim) else os.path.join(os.path.dirname(pkg_dir), "configs")


def resolve(cfg_path: str) -> str:
    """``'rv_plugins::a/b.py'`` -> absolute path; clear error when it does not exist."""
    rel = cfg_path[len(PREFIX):]
    root = configs_dir()
    path = os.path.join(root, rel)
    if not os.path.isfile(path):
        names = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root)
                       for f in fs if f.endswith(".py"))
        raise FileNotFoundError(f"{cfg_path!r}: rv_plugins has no config {rel!r} in {root}. "
                                f"Available: {', '.join(names)}")
    return path


def patch(config_module) -> None:
    """Teach ``config_module.Config`` the ``rv_plugins::`` rule (idempotent)."""
    Config = config_module.Config
    original = Config._get_cfg_path
    if getattr(original, "_rv_plugins", False):
        return

    def _get_cfg_path(cfg_path, filename):
        if isinstance(cfg_path, str) and cfg_path.startswith(PREFIX):
            # Scope None: our configs name their own default_scope (mmseg / mmpretrain).
            return resolve(cfg_path), None
        return original(cfg_path, filename)

    _get_cfg_path._rv_plugins = True
    Config._get_cfg_path = staticmethod(_get_cfg_path)
    utils = sys.modules.get("mmengine.config.utils")
    if utils is not None:
        utils.MODULE2PACKAGE.setdefault("rv_plugins", "rv_plugins")


def patch_now() -> None:
    """Patch mmengine now (imports ``mmengine.config``); called by our adapters and tools."""
    import mmengine.config.config as config_module
    patch(config_module)


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the loader of ``mmengine.config.config`` to patch it once loaded."""

    def find_spec(self, name, path=None, target=None):
        if name != _TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                exec_module = spec.loader.exec_module

                def exec_and_patch(module, _exec=exec_module):
                    _exec(module)
                    patch(module)

                spec.loader.exec_module = exec_and_patch
                return spec
        return None


def install_import_hook() -> None:
    """Patch ``mmengine.config.config`` when it is first imported (now, if it already is); idempotent.
    What the ``.pth`` start-up hook calls."""
    if _TARGET in sys.modules:
        patch(sys.modules[_TARGET])
    elif not is_hook_installed():
        sys.meta_path.insert(0, _PatchOnImport())


def is_hook_installed() -> bool:
    """Whether :func:`install_import_hook` has put its finder on ``sys.meta_path`` in this process."""
    return any(isinstance(f, _PatchOnImport) for f in sys.meta_path)


def write_pth(site_dir: str) -> str:
    """Write the start-up hook (``PTH_NAME``) into ``site_dir``; returns its path.

    The line imports this module and calls :func:`install_import_hook`; a missing package
    (uninstalled) is skipped silently. Files written by earlier versions import the old name
    ``rv_plugins._mmengine_scope``, which re-exports this module and keeps working.
    """
    path = os.path.join(site_dir, PTH_NAME)
    with open(path, "w") as f:
        f.write("import sys; exec('try:\\n import rv_plugins.openmmlab.scope as m; m.install_import_hook()\\n"
                "except ImportError:\\n pass')\n")
    return path


def main(argv=None, prog: str = "rv_plugins.openmmlab.scope") -> int:
    """``python -m rv_plugins.openmmlab.scope --install``: write the ``.pth`` file into site-packages."""
    argv = sys.argv[1:] if argv is None else argv
    if "--install" in argv:
        import sysconfig
        print(f"wrote {write_pth(sysconfig.get_paths()['purelib'])}")
        return 0
    print(f"usage: python -m {prog} --install")
    return 0


if __name__ == "__main__":
    sys.exit(main())
