"""Builds the compiled CPU scan kernel into the package (metadata: setup.cfg).

With torch importable at build time (``pip wheel --no-build-isolation .``, ``pip install --no-build-isolation
-e .``) on x86-64, ``rv_plugins.ops._scan_cpu`` is compiled for x86-64-v3 (AVX2 + FMA) with a build record;
otherwise, or with ``RV_PLUGINS_BUILD_CPU_KERNEL=0``, the package is pure Python and the kernel is compiled
at its first use. What decides this: ``rv_plugins/ops/cpu_kernel_build.py`` (loaded by its path: the
package itself need not be importable here).
"""
import importlib.util
import os
import sys

from setuptools import setup

_HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location(
    "rv_plugins_cpu_kernel_build", os.path.join(_HERE, "rv_plugins", "ops", "cpu_kernel_build.py"))
cpu_kernel_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cpu_kernel_build)

ext_modules, cmdclass, message = cpu_kernel_build.packaged_build_plan()
print(message, file=sys.stderr)
setup(ext_modules=ext_modules, cmdclass=cmdclass)
