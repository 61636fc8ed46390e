"""The import contract: the plain-PyTorch layers import no toolkit and do not need the start-up hook, and
no module of ``rv_plugins`` takes part in an import circle.

``rv_plugins.ops`` -> ``layers`` -> ``backbones`` / ``heads`` / ``solvers`` / ``models``, with ``utils`` and
``datasets``, are plain PyTorch: every module found in those packages (walked on disk, not listed here)
must import without loading a toolkit; only the adapters (``rv_plugins.mmseg``, ``rv_plugins.mmpretrain``,
``rv_plugins.detectron2``) and ``rv_plugins.engine``'s hook module may import one. The check runs in a fresh
interpreter started with ``-S -E`` (no ``site`` processing, so none of site-packages' ``.pth`` files run,
in particular ``rv_plugins_mmengine_scope.pth``; no ``PYTHON*`` variables), with the repository and this
environment's site-packages put on ``sys.path`` by hand. It imports the modules one after the other and
records, after each, which toolkit modules are loaded (all, and those that this import added) and whether
the ``rv_plugins::`` scope hook is in place; the last step imports mmengine itself, so a harness that
cannot see a toolkit import fails too.

The import graph is read from the source with ``ast`` (imports inside functions included): ``import a.b``
and ``from a import b`` (``a.b`` when it is a module, else the package ``a``) are edges, a package's
``__init__`` importing its submodules too.
"""
import ast
import json
import os
import site
import subprocess
import sys
import sysconfig
from typing import Dict, List

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_DIR = os.path.join(REPO, "rv_plugins")
TOOLKITS = ("mmengine", "mmcv", "mmseg", "mmpretrain", "mmdet", "detectron2", "fvcore", "iopath", "timm")
PLAIN_PACKAGES = ("ops", "layers", "backbones", "heads", "solvers", "models", "utils", "datasets")
CONTROL = "mmengine"


def modules_in(package: str) -> List[str]:
    """Every module of ``rv_plugins.<package>`` (the package itself for ``__init__.py``), found on disk."""
    names = []
    root = os.path.join(PACKAGE_DIR, *package.split("."))
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if os.path.isfile(os.path.join(folder, d, "__init__.py")))
        parts = ["rv_plugins"] + os.path.relpath(folder, PACKAGE_DIR).split(os.sep)
        for f in sorted(files):
            if f.endswith(".py"):
                names.append(".".join(parts if f == "__init__.py" else parts + [f[:-3]]))
    return sorted(names)


PLAIN = ["rv_plugins"] + [m for p in PLAIN_PACKAGES for m in modules_in(p)]
# Glue that promises lazy toolkit imports (see their docstrings; rv_plugins.openmmlab.backbones is the
# OpenMMLab adapter itself and imports mmengine).
LAZY = ["rv_plugins.engine", "rv_plugins.openmmlab", "rv_plugins.openmmlab.runner", "rv_plugins.openmmlab.checks",
        "rv_plugins.openmmlab.checkpoints", "rv_plugins.openmmlab.scope"]

CHILD = r"""
import importlib, json, sys, traceback
repo, site_dirs, toolkits, steps = json.loads(sys.argv[1])
sys.path[:0] = [repo]
sys.path.extend(site_dirs)

def loaded():
    return sorted(m for m in sys.modules if m.split(".")[0] in toolkits)

def state(name=None, before=()):
    mod = sys.modules.get(name)
    now = loaded()
    return dict(
        toolkits=now, added=[m for m in now if m not in before],
        matplotlib="matplotlib" in sys.modules,
        hook_modules=sorted(m for m in ("rv_plugins.openmmlab.scope",) if m in sys.modules),
        hook_finder=any(type(f).__name__ == "_PatchOnImport" for f in sys.meta_path),
        file=getattr(mod, "__file__", None))

report = dict(no_site=bool(sys.flags.no_site), start=state())
for name in steps:
    before, error = loaded(), None
    try:
        importlib.import_module(name)
    except BaseException:
        error = traceback.format_exc(limit=-6)
    report[name] = dict(state(name, before), error=error)
print("REPORT " + json.dumps(report))
"""


def _site_dirs():
    """This environment's site-packages (a venv's, not the base interpreter's, which ``-S`` would give)."""
    dirs = list(site.getsitepackages()) + [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    return [d for i, d in enumerate(dirs) if d not in dirs[:i] and os.path.isdir(d)]


@pytest.fixture(scope="module")
def report():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.setdefault("OMP_NUM_THREADS", "1")
    args = json.dumps([REPO, _site_dirs(), TOOLKITS, PLAIN + LAZY + [CONTROL]])
    proc = subprocess.run([sys.executable, "-S", "-E", "-c", CHILD, args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, f"the import-contract child failed:\n{proc.stderr[-4000:]}"
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")][-1]
    return json.loads(line[len("REPORT "):])


def test_the_walk_finds_the_plain_modules():
    for name in ("rv_plugins.ops.scan", "rv_plugins.layers.mingru", "rv_plugins.backbones.visiongru",
                 "rv_plugins.utils.flops", "rv_plugins.models.pathfinder_hgru", "rv_plugins.datasets.pathfinder"):
        assert name in PLAIN, name
    assert not any(m.startswith(("rv_plugins.mmseg", "rv_plugins.detectron2", "rv_plugins.engine.")) for m in PLAIN)


def test_child_runs_without_site_and_without_the_start_up_hook(report):
    assert report["no_site"], "the child must run with -S so that no .pth start-up hook runs"
    start = report["start"]
    assert not start["hook_modules"] and not start["hook_finder"], f"the start-up hook ran in the child: {start}"
    assert not start["toolkits"], f"toolkits loaded before any import: {start['toolkits']}"
    path = report["rv_plugins"]["file"]
    assert os.path.realpath(path).startswith(os.path.realpath(REPO) + os.sep), \
        f"the child imported rv_plugins from {path}, not from this checkout {REPO}"


@pytest.mark.parametrize("name", PLAIN)
def test_plain_pytorch_modules_import_no_toolkit_and_need_no_hook(report, name):
    state = report[name]
    assert state["error"] is None, f"importing {name} failed without the start-up hook:\n{state['error']}"
    assert not state["added"], (
        f"importing {name} loaded toolkit modules {state['added'][:8]}; plain-PyTorch layers must not import "
        "a toolkit: move the import into the adapter package (rv_plugins.mmseg / mmpretrain / detectron2) or "
        "inside the function that needs it")
    assert not state["hook_modules"] and not state["hook_finder"], (
        f"importing {name} imported or installed the rv_plugins:: scope hook ({state['hook_modules']}); "
        "only the OpenMMLab glue may use rv_plugins.openmmlab.scope")
    assert not state["matplotlib"], f"importing {name} imported matplotlib; import it inside the plotting function"


def test_no_toolkit_after_every_plain_module(report):
    """Cumulative: a toolkit that one module pulled in hides nobody else's (the per-module test names the first)."""
    state = report[PLAIN[-1]]
    assert not state["toolkits"], f"after importing all of {PLAIN_PACKAGES}: toolkit modules {state['toolkits'][:8]}"


@pytest.mark.parametrize("name", LAZY)
def test_data_and_glue_modules_import_toolkits_lazily(report, name):
    state = report[name]
    assert state["error"] is None, f"importing {name} failed without the start-up hook:\n{state['error']}"
    assert not state["added"], (
        f"importing {name} loaded toolkit modules {state['added'][:8]}; its toolkit imports belong inside "
        "the functions that use them")
    assert not state["matplotlib"], f"importing {name} imported matplotlib; import it inside the plotting function"
    assert not state["hook_finder"], f"importing {name} installed the start-up import hook; only the .pth file does"


def test_the_harness_sees_a_toolkit_import(report):
    state = report[CONTROL]
    assert "mmengine" in state["toolkits"], f"importing mmengine was not detected: {state}"
    assert not state["hook_finder"]


# --------------------------------------------------------------------------- import circles
def _module_names() -> Dict[str, str]:
    """Every module of the package -> its file."""
    names = {}
    for folder, dirs, files in os.walk(PACKAGE_DIR):
        dirs[:] = [d for d in dirs if os.path.isfile(os.path.join(folder, d, "__init__.py"))]
        parts = ["rv_plugins"] + [p for p in os.path.relpath(folder, PACKAGE_DIR).split(os.sep) if p != "."]
        for f in files:
            if f.endswith(".py"):
                names[".".join(parts if f == "__init__.py" else parts + [f[:-3]])] = os.path.join(folder, f)
    return names


def import_graph() -> Dict[str, Dict[str, int]]:
    """module -> {imported rv_plugins module: line of the first such import}, every import statement
    (function-level ones too); ``from pkg import name`` points at ``pkg.name`` when that is a module."""
    files = _module_names()
    graph = {}
    for module, path in files.items():
        is_package = path.endswith("__init__.py")
        package = module if is_package else module.rpartition(".")[0]
        edges = graph.setdefault(module, {})
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    targets.append(sub if sub in files else source)
            for target in targets:
                if target in files and target != module:
                    edges.setdefault(target, node.lineno)
    return graph


def import_circles(graph: Dict[str, Dict[str, int]]) -> List[List[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def describe_circle(graph: Dict[str, Dict[str, int]], component: List[str]) -> str:
    """One closed path through ``component``, with the line of each import: ``a (l. 3) -> b (l. 9) -> a``."""
    members = set(component)
    start = component[0]
    path, seen = [start], {start}
    while True:
        here = path[-1]
        nxt = sorted(w for w in graph[here] if w in members)
        back = [w for w in nxt if w == start]
        step = back[0] if back and len(path) > 1 else next((w for w in nxt if w not in seen), None)
        if step is None:  # dead end inside the component: fall back to any member edge
            step = nxt[0]
        path.append(step)
        if step == start or step in seen:
            break
        seen.add(step)
    hops = [f"{a} (line {graph[a][b]})" for a, b in zip(path, path[1:])]
    return " -> ".join(hops + [path[-1]])


def test_the_circle_finder_finds_a_circle():
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}
    assert import_circles(graph) == [["a", "b", "c"]]
    assert describe_circle(graph, ["a", "b", "c"]) == "a (line 1) -> b (line 2) -> c (line 3) -> a"
    real = import_graph()
    assert "rv_plugins.ops" in real["rv_plugins.layers.mingru"]                # from rv_plugins.ops import name
    assert "rv_plugins.ops.linear" in real["rv_plugins.layers.mingru"]         # from rv_plugins.ops.linear import
    assert "rv_plugins.ops.mingru" in real["rv_plugins.ops"]                   # package __init__ -> submodule
    assert "rv_plugins.utils.checkpoint" in real["rv_plugins.backbones.base"]  # a function-level import


def test_no_import_circle_in_rv_plugins():
    graph = import_graph()
    circles = import_circles(graph)
    assert not circles, "import circles in rv_plugins:\n" + "\n".join(describe_circle(graph, c) for c in circles)



# --------------------------------------------------------------------------- the start-up hook itself
LEGACY_PTH = ("import sys; exec('try:\\n import rv_plugins._mmengine_scope as m; m.install_import_hook()\\n"
              "except ImportError:\\n pass')\n")  # what earlier versions of tools/setup_env.sh wrote

HOOK_CHILD = r"""
import json, site, sys
repo, site_dirs, pth_dir = json.loads(sys.argv[1])
sys.path[:0] = [repo]
sys.path.extend(site_dirs)
site.addsitedir(pth_dir)  # runs the .pth file as interpreter start-up would
finder = any(type(f).__name__ == "_PatchOnImport" for f in sys.meta_path)
early = sorted(m for m in sys.modules if m.split(".")[0] == "mmengine")
from mmengine.config import Config
print("HOOK " + json.dumps(dict(finder=finder, early=early,
                                path=Config._get_cfg_path("rv_plugins::upernet_visiongru_ti_synthetic.py", "x")[0])))
"""


def _start_up(pth_dir):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    args = json.dumps([REPO, _site_dirs(), str(pth_dir)])
    return subprocess.run([sys.executable, "-S", "-E", "-c", HOOK_CHILD, args],
                          capture_output=True, text=True, env=env, cwd=str(pth_dir), timeout=300)


@pytest.mark.parametrize("which", ["written now", "written by earlier versions"])
def test_the_start_up_hook_is_lazy_and_resolves_rv_plugins_scopes(tmp_path, which):
    """The .pth line installs only a finder at start-up, and mmengine's Config resolves 'rv_plugins::' once
    mmengine is imported. The old line (it imports the removed rv_plugins._mmengine_scope) starts Python
    without an error and without the hook; the set-up's --install rewrites it."""
    from rv_plugins.openmmlab import scope

    if which == "written now":
        path = scope.write_pth(str(tmp_path))
    else:
        path = tmp_path / scope.PTH_NAME
        path.write_text(LEGACY_PTH)
        old = _start_up(tmp_path)
        assert "Error processing line" not in old.stderr  # start-up itself is fine; the hook is not there:
        assert old.returncode != 0 and "_get_package_and_cfg_path" in old.stderr, old.stderr[-2000:]
        assert scope.pth_status(str(tmp_path)) == "outdated" and scope.main(["--check", "--site-dir", str(tmp_path)])
        assert scope.main(["--install", "--site-dir", str(tmp_path)]) == 0  # what tools/setup_env.sh runs
        assert scope.pth_status(str(tmp_path)) == "current" and path.read_text() == scope.PTH_LINE
    assert os.path.basename(str(path)) == "rv_plugins_mmengine_scope.pth"  # the name tools/setup_env.sh tests for
    proc = _start_up(tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("HOOK ")][-1][len("HOOK "):])
    assert got["finder"], "the .pth line did not install the import hook"
    assert got["early"] == [], f"the start-up hook imported mmengine eagerly: {got['early']}"
    assert got["path"].replace(os.sep, "/").endswith("configs/upernet_visiongru_ti_synthetic.py"), got
    assert os.path.isfile(got["path"])
