"""Console scripts: each runs one of the repository's ``tools/*.py`` scripts, the one implementation.

An installed wheel carries the tools under ``rv_plugins/.mim/tools`` (as OpenMMLab packages carry theirs;
in a checkout that folder links to the repository's ``tools/``). A console script named in
``setup.cfg`` as ``rv-<name> = rv_plugins.cli:<tool file stem>`` runs ``<tool file stem>.py`` from there
with the script's command-line arguments, exactly as ``python tools/<stem>.py ARGS`` would (as
``__main__``, so multi-process launchers that re-run the main module keep working). Adding a console
script for a tool is that one line in ``setup.cfg``: every attribute of this module names the tool of
that stem (``rv_plugins.cli.train_net`` runs ``train_net.py``).

Importing this module imports nothing but the standard library.
"""
import os
import runpy
import sys
from typing import Callable, List

__all__ = ["tools_dir", "tool_path", "available_tools", "run_tool"]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def tools_dir() -> str:
    """``rv_plugins/.mim/tools`` when present (a wheel; a checkout's link), else the checkout's ``tools/``."""
    mim = os.path.join(_PACKAGE_DIR, ".mim", "tools")
    return mim if os.path.isdir(mim) else os.path.join(os.path.dirname(_PACKAGE_DIR), "tools")


def available_tools() -> List[str]:
    """The stems of the tool scripts in :func:`tools_dir`."""
    folder = tools_dir()
    return sorted(n[:-3] for n in os.listdir(folder) if n.endswith(".py")) if os.path.isdir(folder) else []


def tool_path(stem: str) -> str:
    """The file of tool ``stem``; a clear error naming the folder and the tools it holds when missing."""
    path = os.path.join(tools_dir(), f"{stem}.py")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"rv_plugins tool {stem}.py not found in {tools_dir()} (this installation has: "
                                f"{', '.join(available_tools()) or 'no tools'}). Reinstall rv_plugins from a "
                                f"wheel built with its tools, or run the script from a checkout.")
    return path


def run_tool(stem: str, argv=None) -> int:
    """Run ``<stem>.py`` as ``__main__`` with ``argv`` (default: this process's arguments); returns 0 when
    the tool returns (a tool that stops with ``sys.exit`` ends the process as it would from a shell)."""
    path = tool_path(stem)
    saved = sys.argv[:]
    sys.argv = [path] + list(sys.argv[1:] if argv is None else argv)
    try:
        runpy.run_path(path, run_name="__main__")
    finally:
        sys.argv = saved
    return 0


def __getattr__(stem: str) -> Callable[[], int]:
    """``rv_plugins.cli.<stem>``: the console-script entry point of tool ``<stem>.py`` (see the module
    docstring); attributes that are not tool-like names raise AttributeError as usual."""
    if stem.startswith("_") or not stem.isidentifier():
        raise AttributeError(f"module 'rv_plugins.cli' has no attribute {stem!r}")

    def entry_point() -> int:
        return run_tool(stem)

    entry_point.__name__ = entry_point.__qualname__ = stem
    entry_point.__doc__ = f"Run tools/{stem}.py with this process's command-line arguments."
    return entry_point
