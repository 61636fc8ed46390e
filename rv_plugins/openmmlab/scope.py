"""``rv_plugins::<config>.py`` wherever mmengine takes a config path, and the start-up hook that enables it.

The rule: ``rv_plugins::<path>`` is ``<rv_plugins>/.mim/configs/<path>`` when the package was installed
with its configs, else the repository's ``configs/<path>``, with or without a folder in ``<path>``.
mmengine 0.10.7 cannot express it itself: it resolves ``pkg::path`` bases only for the packages in its
hard-coded ``MODULE2PACKAGE`` map, only for paths that contain a folder, only inside ``_base_`` (not as
``Config.fromfile``'s argument), and looks for them in ``<pkg>/.mim/configs`` through ``pkg_resources``
(the wrong place for editable installs). So :func:`patch` wraps three static methods of
``mmengine.config.Config``, each handing everything it does not handle to mmengine unchanged:

- ``_get_cfg_path`` (a ``_base_`` entry): ``rv_plugins::`` paths resolve by the rule above; a scope that
  is neither ours nor one of mmengine's (``rv_plugin::x.py``) is a ``ValueError`` naming the known
  scopes (mmengine's own message talks about ``_get_package_and_cfg_path``);
- ``fromfile`` (a config path, e.g. the toolkits' ``tools/train.py rv_plugins::x.py``): the same rule
  and the same error;
- ``_is_lazy_import`` (mmengine's first parse of every config file): a syntax error names the file
  (mmengine's says ``File "<unknown>"``).

The start-up hook: the package's one global effect
--------------------------------------------------
The rule must be in place before a config is parsed, i.e. before its ``custom_imports`` (which import
``rv_plugins.mmseg`` / ``rv_plugins.mmpretrain``) run, so mmsegmentation's and mmpretrain's own
``tools/train.py`` need it from interpreter start-up. ``tools/setup_env.sh`` (or
``python -m rv_plugins.openmmlab.scope --install``) writes the one-line file
``rv_plugins_mmengine_scope.pth`` (:data:`PTH_LINE`) into site-packages, which calls
:func:`install_import_hook` when Python starts. That call imports nothing heavy and patches nothing:
it puts a finder on ``sys.meta_path`` that finds no module itself and, when (and if) the process
first imports ``mmengine.config.config``, lets that module load normally and then applies
:func:`patch` to it. Processes that never import mmengine are untouched; the plain-PyTorch layers
(``rv_plugins.ops`` / ``layers`` / ``backbones`` / ``heads`` / ``solvers``) never need it. A file of that
name with other content (written by an earlier version) is rewritten by ``--install``;
``--check`` says whether the current line is installed.

Without the ``.pth`` file, our own entry points apply the same patch themselves: ``tools/train.py`` /
``tools/test.py`` (:func:`rv_plugins.openmmlab.runner.load_config`) and importing the adapters
``rv_plugins.mmseg`` / ``rv_plugins.mmpretrain`` call :func:`patch_now`; a toolkit's own script then
fails on ``rv_plugins::`` with mmengine's message, which rv_plugins cannot change (none of its code runs
there). To remove the hook, delete the ``.pth`` file (``python -c "import sysconfig;
print(sysconfig.get_paths()['purelib'])"`` names the folder).
"""
import argparse
import difflib
import importlib.abc
import importlib.util
import os
import sys
import sysconfig

__all__ = ["PREFIX", "PTH_NAME", "PTH_LINE", "configs_dir", "resolve", "known_scopes", "patch", "patch_now",
           "install_import_hook", "is_hook_installed", "pth_status", "write_pth", "main"]

PREFIX = "rv_plugins::"
PTH_NAME = "rv_plugins_mmengine_scope.pth"
# The start-up hook's one line. Python runs .pth lines that start with "import" at start-up.
PTH_LINE = ("import sys; exec('try:\\n import rv_plugins.openmmlab.scope as m; m.install_import_hook()\\n"
            "except ImportError:\\n pass')\n")
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


def known_scopes() -> list:
    """Scopes a config path may start with: ``rv_plugins`` and the packages of mmengine's scope map."""
    from mmengine.config.utils import MODULE2PACKAGE
    return sorted(set(MODULE2PACKAGE) | {PREFIX[:-2]})


def _check_scope(cfg_path: str, where: str) -> None:
    """Raise ValueError for ``<scope>::...`` with a scope neither we nor mmengine know (a typo)."""
    scope = cfg_path.partition("::")[0]
    known = known_scopes()
    if scope in known:
        return
    guess = difflib.get_close_matches(scope, known, n=1)
    hint = f"did you mean {guess[0] + '::'!r}? " if guess else ""
    raise ValueError(f"{where}: unknown config scope {scope + '::'!r} in {cfg_path!r}; {hint}The known scopes "
                     f"are {', '.join(s + '::' for s in known)} (rv_plugins:: names a config shipped with "
                     f"rv_plugins, the others a config of that OpenMMLab package, which must be installed).")


def _name_the_file(error: SyntaxError, filename: str) -> SyntaxError:
    """``error`` with ``filename`` as its file (mmengine parses config sources without naming them)."""
    return SyntaxError(f"{error.msg} (in the config file {filename})",
                       (filename, error.lineno, error.offset, error.text))


def patch(config_module) -> None:
    """Teach ``config_module.Config`` the ``rv_plugins::`` rule and the clearer errors (idempotent)."""
    Config = config_module.Config
    original = Config._get_cfg_path
    if getattr(original, "_rv_plugins", False):
        return
    original_fromfile, original_is_lazy = Config.fromfile, Config._is_lazy_import

    def _get_cfg_path(cfg_path, filename):
        if isinstance(cfg_path, str) and cfg_path.startswith(PREFIX):
            # Scope None: our configs name their own default_scope (mmseg / mmpretrain).
            return resolve(cfg_path), None
        if isinstance(cfg_path, str) and "::" in cfg_path:
            _check_scope(cfg_path, f"_base_ of {filename}")
        return original(cfg_path, filename)

    def fromfile(filename, *args, **kwargs):
        if isinstance(filename, str) and filename.startswith(PREFIX):
            filename = resolve(filename)
        elif isinstance(filename, str) and "::" in filename and not os.path.exists(filename):
            _check_scope(filename, "config path")
        return original_fromfile(filename, *args, **kwargs)

    def _is_lazy_import(filename):
        try:
            return original_is_lazy(filename)
        except SyntaxError as e:
            if e.filename not in (None, "<unknown>", "<string>"):
                raise
            raise _name_the_file(e, filename) from None

    for fn in (_get_cfg_path, fromfile, _is_lazy_import):
        fn._rv_plugins = True
        setattr(Config, fn.__name__, staticmethod(fn))
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


def pth_status(site_dir: str) -> str:
    """``"current"`` (the file holds :data:`PTH_LINE`), ``"outdated"`` (a file of that name with other
    content, e.g. written by an earlier version) or ``"missing"``."""
    path = os.path.join(site_dir, PTH_NAME)
    if not os.path.isfile(path):
        return "missing"
    with open(path) as f:
        return "current" if f.read() == PTH_LINE else "outdated"


def write_pth(site_dir: str) -> str:
    """Write the start-up hook (:data:`PTH_LINE`, as ``PTH_NAME``) into ``site_dir``, replacing a file of
    that name whatever it holds; returns its path. The line imports this module and calls
    :func:`install_import_hook`; a missing package (uninstalled) is skipped silently."""
    path = os.path.join(site_dir, PTH_NAME)
    with open(path, "w") as f:
        f.write(PTH_LINE)
    return path


def main(argv=None) -> int:
    """``python -m rv_plugins.openmmlab.scope --install | --check [--site-dir DIR]`` (default DIR:
    this interpreter's site-packages). ``--check`` exits 0 only when the current line is installed."""
    parser = argparse.ArgumentParser(prog="python -m rv_plugins.openmmlab.scope", description=main.__doc__)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--install", action="store_true", help="write (or rewrite) the .pth start-up hook")
    action.add_argument("--check", action="store_true", help="exit 0 if the current .pth hook is installed")
    parser.add_argument("--site-dir", default=None, help="the site-packages folder (default: this Python's)")
    args = parser.parse_args(argv)
    site_dir = args.site_dir or sysconfig.get_paths()["purelib"]
    if args.install:
        before = pth_status(site_dir)
        print(f"wrote {write_pth(site_dir)}" + (" (replacing an outdated file)" if before == "outdated" else ""))
        return 0
    status = pth_status(site_dir)
    print(f"{os.path.join(site_dir, PTH_NAME)}: {status}")
    return 0 if status == "current" else 1


if __name__ == "__main__":
    sys.exit(main())
