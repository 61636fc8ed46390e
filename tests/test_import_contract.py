"""The import contract: the plain-PyTorch layers import no toolkit and do not need the start-up hook.

``rv_plugins.ops`` -> ``layers`` -> ``backbones`` / ``heads`` / ``solvers`` are plain PyTorch; only the
adapters (``rv_plugins.mmseg``, ``rv_plugins.mmpretrain``, ``rv_plugins.detectron2``) may import a
toolkit. The check runs in a fresh interpreter started with ``-S -E`` (no ``site`` processing, so
none of site-packages' ``.pth`` files run, in particular ``rv_plugins_mmengine_scope.pth``; no
``PYTHON*`` variables), with the repository and this environment's site-packages put on ``sys.path``
by hand. It imports the packages one after the other and records, after each, which toolkit
modules are loaded and whether the ``rv_plugins::`` scope hook is in place; the last step imports
mmengine itself, so a harness that cannot see a toolkit import fails too.
"""
import json
import os
import site
import subprocess
import sys
import sysconfig

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLKITS = ("mmengine", "mmcv", "mmseg", "mmpretrain", "detectron2")
CORE = ("rv_plugins", "rv_plugins.ops", "rv_plugins.layers", "rv_plugins.backbones", "rv_plugins.heads",
        "rv_plugins.solvers")
# Glue that promises lazy toolkit imports (see their docstrings), and plain data code.
LAZY = ("rv_plugins.datasets.pathfinder", "rv_plugins.datasets.synthetic_scenes", "rv_plugins.engine",
        "rv_plugins.openmmlab", "rv_plugins.openmmlab.runner", "rv_plugins.openmmlab.checks",
        "rv_plugins.openmmlab.checkpoints", "rv_plugins.openmmlab.scope")
CONTROL = "mmengine"

CHILD = r"""
import importlib, json, sys
repo, site_dirs, toolkits, steps = json.loads(sys.argv[1])
sys.path[:0] = [repo]
sys.path.extend(site_dirs)

def state(name=None):
    mod = sys.modules.get(name)
    return dict(
        toolkits=sorted(m for m in sys.modules if m.split(".")[0] in toolkits),
        matplotlib="matplotlib" in sys.modules,
        hook_modules=sorted(m for m in ("rv_plugins.openmmlab.scope",) if m in sys.modules),
        hook_finder=any(type(f).__name__ == "_PatchOnImport" for f in sys.meta_path),
        file=getattr(mod, "__file__", None))

report = dict(no_site=bool(sys.flags.no_site), start=state())
for name in steps:
    importlib.import_module(name)
    report[name] = state(name)
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
    args = json.dumps([REPO, _site_dirs(), TOOLKITS, list(CORE + LAZY + (CONTROL,))])
    proc = subprocess.run([sys.executable, "-S", "-E", "-c", CHILD, args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, f"the import-contract child failed:\n{proc.stderr[-4000:]}"
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")][-1]
    return json.loads(line[len("REPORT "):])


def test_child_runs_without_site_and_without_the_start_up_hook(report):
    assert report["no_site"], "the child must run with -S so that no .pth start-up hook runs"
    start = report["start"]
    assert not start["hook_modules"] and not start["hook_finder"], f"the start-up hook ran in the child: {start}"
    assert not start["toolkits"], f"toolkits loaded before any import: {start['toolkits']}"
    path = report["rv_plugins"]["file"]
    assert os.path.realpath(path).startswith(os.path.realpath(REPO) + os.sep), \
        f"the child imported rv_plugins from {path}, not from this checkout {REPO}"


@pytest.mark.parametrize("name", CORE)
def test_plain_pytorch_layers_import_no_toolkit_and_need_no_hook(report, name):
    state = report[name]
    assert not state["toolkits"], (
        f"importing {name} (after {CORE[:CORE.index(name)]}) loaded toolkit modules {state['toolkits'][:8]}; "
        "plain-PyTorch layers must not import a toolkit: move the import into the adapter package "
        "(rv_plugins.mmseg / mmpretrain / detectron2) or inside the function that needs it")
    assert not state["hook_modules"] and not state["hook_finder"], (
        f"importing {name} imported or installed the rv_plugins:: scope hook ({state['hook_modules']}); "
        "only the OpenMMLab glue may use rv_plugins.openmmlab.scope")
    assert not state["matplotlib"], f"importing {name} imported matplotlib; import it inside the plotting function"


@pytest.mark.parametrize("name", LAZY)
def test_data_and_glue_modules_import_toolkits_lazily(report, name):
    state = report[name]
    assert not state["toolkits"], (
        f"importing {name} loaded toolkit modules {state['toolkits'][:8]}; its toolkit imports belong inside "
        "the functions that use them")
    assert not state["matplotlib"], f"importing {name} imported matplotlib; import it inside the plotting function"
    assert not state["hook_finder"], f"importing {name} installed the start-up import hook; only the .pth file does"


def test_the_harness_sees_a_toolkit_import(report):
    state = report[CONTROL]
    assert "mmengine" in state["toolkits"], f"importing mmengine was not detected: {state}"
    assert not state["hook_finder"]


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
