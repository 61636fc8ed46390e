"""The wheel installs like a package: console scripts, the tools under ``rv_plugins/.mim/tools``, the configs.

Builds a wheel from a copy of this checkout (``pip wheel --no-deps --no-build-isolation``: the compiled CPU
kernel goes into it), installs it with ``pip install --no-deps --target`` into a throw-away folder (this
environment provides torch and the toolkits), and runs the console scripts and a forward from a folder
outside the repository with that folder first on ``PYTHONPATH``.
"""
import json
import os
import platform
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {"rv-train": "train.py", "rv-test": "test.py", "rv-train-net": "train_net.py",
           "rv-convert-visiongru": "convert_visiongru_checkpoint.py", "rv-export-onnx": "export_onnx.py"}
_SKIP = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "build", "dist", "work_dirs", "output",
                               ".pytest_cache", "data", "bench_results", "*.pth", "_scan_cpu.*")


def _run(cmd, cwd, env=None, timeout=600):
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=_SKIP)  # the .mim links stay links, as in a checkout
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src),
                  "-w", str(tmp / "wheels")], cwd=str(tmp))
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp / "wheels").glob("rv_plugins-*.whl")
    site = tmp / "site"
    done = _run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                cwd=str(tmp))
    assert done.returncode == 0, done.stderr[-3000:]
    outside = tmp / "elsewhere"
    outside.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site), OMP_NUM_THREADS="1")
    env.pop("RV_SCAN_DISABLE_CPU_KERNEL", None)
    return dict(site=site, wheel=wheel, cwd=str(outside), env=env, src=src, tmp=tmp)


def _packaged_kernel_expected():
    from rv_plugins.ops import cpu_kernel_build as build
    flags = build.cpu_flags() or set()
    return platform.machine().lower() in build.PACKAGED_MACHINES and set(build.PACKAGED_CPU_FLAGS) <= flags


@pytest.mark.slow
def test_wheel_carries_the_tools_the_configs_and_the_kernel_sources(installed):
    import zipfile
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    for tool in SCRIPTS.values():
        assert f"rv_plugins/.mim/tools/{tool}" in names, tool
    assert "rv_plugins/.mim/tools/analysis/erf.py" in names
    assert "rv_plugins/.mim/configs/upernet_visiongru_ti_synthetic.py" in names
    assert any(n.startswith("rv_plugins/ops/csrc/") and n.endswith(".cpp") for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(installed["wheel"]).read(entry_points).decode()
    for script, tool in SCRIPTS.items():
        assert f"{script} = rv_plugins.cli:{tool[:-3]}" in text


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_console_scripts_run_outside_the_repository(installed, script):
    if script == "rv-train-net":
        pytest.importorskip("detectron2")
    exe = installed["site"] / "bin" / script
    res = _run([str(exe), "--help"], cwd=installed["cwd"], env=installed["env"])
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "usage:" in res.stdout and SCRIPTS[script] in res.stdout.split("\n")[0], res.stdout[:500]


@pytest.mark.slow
def test_installed_package_resolves_its_own_configs_and_tools(installed):
    res = _run([sys.executable, "-c", (
        "import rv_plugins, rv_plugins.cli as cli\n"
        "from rv_plugins.openmmlab import scope\n"
        "scope.patch_now()\n"
        "from mmengine.config import Config\n"
        "cfg = Config.fromfile('rv_plugins::pathfinder/hgru_crbp_pathfinder32.py', import_custom_modules=False)\n"
        "print(rv_plugins.__file__); print(cli.tool_path('train')); print(cfg.filename)\n")],
        cwd=installed["cwd"], env=installed["env"])
    assert res.returncode == 0, res.stderr[-3000:]
    site = str(installed["site"])
    package, tool, config = res.stdout.split()
    assert package.startswith(site) and tool.startswith(site) and config.startswith(site), res.stdout
    assert tool.endswith("rv_plugins/.mim/tools/train.py") and os.path.isfile(tool) and not os.path.islink(tool)


@pytest.mark.slow
def test_wheel_carries_the_compiled_kernel_and_its_build_record(installed):
    import zipfile

    import torch
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the kernel is packaged for x86-64 only")
    wheel = zipfile.ZipFile(installed["wheel"])
    (library,) = [n for n in wheel.namelist() if n.startswith("rv_plugins/ops/_scan_cpu.") and n.endswith(".so")]
    record = json.loads(wheel.read(library[:-len(".so")] + ".build.json"))
    assert record["torch"] == torch.__version__ and record["isa"] == "x86-64-v3"
    assert "-march=x86-64-v3" in record["cflags"] and {"avx2", "fma"} <= set(record["cpu_flags"])
    assert not installed["wheel"].name.endswith("-none-any.whl")  # a platform wheel


FORWARD = r"""
import sys, torch
from rv_plugins.backbones import create_test_backbone
from rv_plugins.ops import cpu_kernel
model = create_test_backbone("visiongru").eval()
with torch.no_grad():
    out = model(torch.randn(1, 3, 32, 32))
print("LOADED", cpu_kernel.loaded_from(), cpu_kernel.load().__file__)
print("EXTENSION_BUILDER_IMPORTED", "torch.utils.cpp_extension" in sys.modules)
"""


@pytest.mark.slow
def test_a_forward_from_the_installed_wheel_compiles_nothing(installed, tmp_path):
    if not _packaged_kernel_expected():
        pytest.skip("this machine gets no packaged kernel (not x86-64-v3)")
    extensions = tmp_path / "torch_extensions"
    extensions.mkdir()
    env = dict(installed["env"], TORCH_EXTENSIONS_DIR=str(extensions))
    res = _run([sys.executable, "-c", FORWARD], cwd=installed["cwd"], env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in res.stdout.splitlines() if line.startswith(("LOADED", "EXTENSION")))
    origin, library = lines["LOADED"].split()
    assert origin == "packaged" and library.startswith(str(installed["site"])), res.stdout
    assert lines["EXTENSION_BUILDER_IMPORTED"] == "False"
    assert list(extensions.iterdir()) == []
    assert "not using the packaged CPU scan kernel" not in res.stderr


@pytest.mark.slow
def test_without_torch_or_when_told_not_to_the_wheel_is_pure_python(installed):
    env = dict(os.environ, RV_PLUGINS_BUILD_CPU_KERNEL="0")
    out = installed["tmp"] / "pure"
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v",
                  str(installed["src"]), "-w", str(out)], cwd=str(installed["tmp"]), env=env)
    assert built.returncode == 0, built.stderr[-3000:]
    assert "not building the CPU scan kernel into the package: RV_PLUGINS_BUILD_CPU_KERNEL=0" in \
        built.stdout + built.stderr
    (wheel,) = out.glob("rv_plugins-*.whl")
    assert wheel.name.endswith("-py3-none-any.whl")


SCOPE_CHILD = r"""
import json, site, sys
target, config, packages = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.append(packages)                           # the venv's packages, without running its .pth files
site.addsitedir(target)                             # the installed wheel's folder, .pth files included
from mmengine.config import Config
cfg = Config.fromfile(config, import_custom_modules=False)   # no rv_plugins import by the caller
import rv_plugins
print("SCOPE " + json.dumps(dict(crop=list(cfg.crop_size), package=rv_plugins.__file__)))
"""


@pytest.mark.slow
def test_the_installed_wheel_brings_the_config_scope_hook(installed, tmp_path):
    """pip installs the start-up hook with the wheel: a user's config that names ``rv_plugins::`` bases loads
    in a fresh interpreter (as in the toolkits' own scripts) without any set-up step."""
    import zipfile
    from rv_plugins.openmmlab import scope
    wheel = zipfile.ZipFile(installed["wheel"])
    assert wheel.read(scope.PTH_NAME).decode() == scope.PTH_LINE
    config = tmp_path / "my_upernet.py"
    config.write_text("_base_ = ['rv_plugins::upernet_visiongru_ti_synthetic.py']\ncrop_size = (48, 48)\n")
    env = {k: v for k, v in installed["env"].items() if k != "PYTHONPATH"}
    import sysconfig
    res = _run([sys.executable, "-S", "-c", SCOPE_CHILD, str(installed["site"]), str(config),
                sysconfig.get_paths()["purelib"]],
               cwd=installed["cwd"], env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    line = next(l for l in res.stdout.splitlines() if l.startswith("SCOPE "))
    out = json.loads(line[len("SCOPE "):])
    assert out["crop"] == [48, 48] and out["package"].startswith(str(installed["site"])), out
