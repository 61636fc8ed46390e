"""Builds the compiled CPU scan kernel into the package (metadata: setup.cfg).

With torch importable at build time (``pip wheel --no-build-isolation .``, ``pip install --no-build-isolation
-e .``) on x86-64, ``rv_plugins.ops._scan_cpu`` is compiled for x86-64-v3 (AVX2 + FMA) with a build record;
otherwise, or with ``RV_PLUGINS_BUILD_CPU_KERNEL=0``, the package is pure Python and the kernel is compiled
at its first use. The wheel also carries the ``rv_plugins::`` config-scope start-up hook (see
``build_py_with_scope_hook``). What decides this: ``rv_plugins/ops/cpu_kernel_build.py`` (loaded by its path: the
package itself need not be importable here).
"""
import importlib.util
import os
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

_HERE = os.path.dirname(os.path.abspath(__file__))


def _load_by_path(name: str, *parts: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(_HERE, *parts))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class build_py_with_scope_hook(build_py):
    """Also puts the ``rv_plugins::`` start-up hook (``rv_plugins_mmengine_scope.pth``, the line
    ``python -m rv_plugins.openmmlab.scope --install`` writes) at the top of the wheel, so that an installed
    wheel resolves ``rv_plugins::`` configs in the toolkits' own scripts without a further step (pip removes
    it with the package). Editable installs are left to that command (``tools/setup_env.sh`` runs it)."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        scope = _load_by_path("rv_plugins_scope_for_setup", "rv_plugins", "openmmlab", "scope.py")
        with open(os.path.join(self.build_lib, scope.PTH_NAME), "w") as f:
            f.write(scope.PTH_LINE)


cpu_kernel_build = _load_by_path("rv_plugins_cpu_kernel_build", "rv_plugins", "ops", "cpu_kernel_build.py")
ext_modules, cmdclass, message = cpu_kernel_build.packaged_build_plan()
print(message, file=sys.stderr)
setup(ext_modules=ext_modules, cmdclass=dict(cmdclass, build_py=build_py_with_scope_hook))
