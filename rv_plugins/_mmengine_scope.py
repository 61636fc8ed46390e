"""Make ``_base_ = ['rv_plugins::<name>.py']`` work in any mmengine config.

mmengine 0.10.7 resolves ``pkg::path`` base configs only for packages in its hard-coded
``MODULE2PACKAGE`` map, only for paths that contain a folder, and looks for them in
``<pkg>/.mim/configs`` through ``pkg_resources`` (which points at the wrong place for editable
installs). We teach ``mmengine.config.Config`` one extra rule instead: ``rv_plugins::<path>`` is
``<rv_plugins>/.mim/configs/<path>`` (a link to the repository's ``configs/``), with or without a folder.

The rule must be in place before a config is parsed, i.e. before any ``custom_imports`` run. So
``tools/setup_env.sh`` (or ``python -m rv_plugins._mmengine_scope --install``) writes a one-line
``.pth`` file into site-packages that imports this module at interpreter start-up. This module does
not import mmengine: it registers an import hook that patches ``mmengine.config.config`` when (and
if) that module is first imported. Importing ``rv_plugins.mmseg`` / ``rv_plugins.mmpretrain`` also
patches it, for environments without the ``.pth`` file.
"""
import importlib.abc
import importlib.util
import os
import sys

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
    """Patch mmengine if it is importable (called by our toolkit adapters and tools)."""
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
    if _TARGET in sys.modules:
        patch(sys.modules[_TARGET])
    elif not any(isinstance(f, _PatchOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())


def write_pth(site_dir: str) -> str:
    """Write the start-up hook into ``site_dir``; returns its path."""
    path = os.path.join(site_dir, PTH_NAME)
    with open(path, "w") as f:
        f.write("import sys; exec('try:\\n import rv_plugins._mmengine_scope as m; m.install_import_hook()\\n"
                "except ImportError:\\n pass')\n")
    return path


if __name__ == "__main__":
    if "--install" in sys.argv:
        import sysconfig
        print(f"wrote {write_pth(sysconfig.get_paths()['purelib'])}")
    else:
        print("usage: python -m rv_plugins._mmengine_scope --install")
