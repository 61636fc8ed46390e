"""How the compiled CPU scan kernel is built: the JIT build tuned to the running CPU, and the packaged build
that ``setup.py`` compiles into a wheel (or an editable install) for a stated instruction-set level.

Standard library only at import time: ``setup.py`` loads this file by its path, before the package (or
even torch) may be importable. The packaged build sits next to this file as the extension module
``_scan_cpu`` with a build record (``<extension file stem>.build.json``: torch version, ISA level, the CPU
flags it needs, the source's digest) that :mod:`cpu_kernel` reads *before* importing the library, since
loading a library built for another torch, or running it on a CPU without its instructions, can crash the
process instead of raising.
"""
import hashlib
import json
import os
import platform
import sys
from typing import Dict, Iterable, List, Optional, Set

_OPS = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(_OPS, "csrc", "scan_cpu.cpp")
CFLAGS = ["-O3", "-fopenmp", "-fno-trapping-math"]
LDFLAGS = ["-fopenmp"]

PACKAGED_NAME = "_scan_cpu"  # the extension module rv_plugins.ops._scan_cpu
PACKAGED_ISA = "x86-64-v3"   # AVX2 + FMA (+ BMI1/2, F16C, LZCNT, MOVBE): x86-64 CPUs since about 2013-2015
PACKAGED_ISA_CFLAGS = ["-march=x86-64-v3"]
# /proc/cpuinfo's names for what x86-64-v2 and -v3 add to the x86-64 baseline ("pni" is SSE3, "abm" LZCNT).
PACKAGED_CPU_FLAGS = ("cx16", "lahf_lm", "popcnt", "pni", "ssse3", "sse4_1", "sse4_2",
                      "avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave")
PACKAGED_MACHINES = ("x86_64", "amd64")
BUILD_SWITCH = "RV_PLUGINS_BUILD_CPU_KERNEL"


def cpu_flags() -> Optional[Set[str]]:
    """The running CPU's feature flags from ``/proc/cpuinfo``, or ``None`` when it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            return set(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        return None


def simd_flags(flags: Optional[Set[str]] = None) -> List[str]:
    """The JIT build's vector flags for this CPU: AVX-512 (16 floats wide) or AVX2/FMA (8 wide) where the
    CPU has them, else none (4 wide). The fused minGRU loops (gates with a polynomial ``exp``) need
    ``-fno-trapping-math`` to vectorise at all: it lets GCC if-convert the float->int step of ``exp``;
    results are unchanged, FP exceptions are not used."""
    flags = cpu_flags() if flags is None else flags
    if not flags:
        return []
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"} <= flags:
        return ["-mavx2", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mprefer-vector-width=512"]
    return ["-mavx2", "-mfma"] if {"avx2", "fma"} <= flags else []


def source_digest(path: str = SOURCE) -> Optional[str]:
    """sha256 of the kernel source at ``path``, or ``None`` when the file is absent."""
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def build_info_path(extension_path: str) -> str:
    """The build record next to an extension file: ``_scan_cpu.cpython-311-x86_64-linux-gnu.so`` ->
    ``_scan_cpu.cpython-311-x86_64-linux-gnu.build.json``."""
    return os.path.splitext(extension_path)[0] + ".build.json"


def build_info(torch_version: str) -> Dict:
    """What the packaged build records about itself."""
    return {"module": f"rv_plugins.ops.{PACKAGED_NAME}", "torch": torch_version, "isa": PACKAGED_ISA,
            "machine": platform.machine().lower(), "cpu_flags": list(PACKAGED_CPU_FLAGS),
            "cflags": CFLAGS + PACKAGED_ISA_CFLAGS, "source_sha256": source_digest()}


def packaged_mismatch(info: Dict, torch_version: str, flags: Optional[Iterable[str]], machine: str,
                      digest: Optional[str]) -> Optional[str]:
    """Why the packaged build ``info`` cannot run here (``None``: it can). ``flags`` are the CPU's (``None``:
    unknown, which refuses), ``digest`` the installed source's (``None``: absent, not compared)."""
    if info.get("torch") != torch_version:
        return f"it was built against torch {info.get('torch')}, this is torch {torch_version}"
    if machine.lower() != info.get("machine"):
        return f"it was built for {info.get('machine')}, this machine is {machine}"
    if flags is None:
        return f"the CPU's flags could not be read (/proc/cpuinfo) to check for {info.get('isa')}"
    missing = sorted(set(info.get("cpu_flags", ())) - set(flags))
    if missing:
        return f"it needs {info.get('isa')} and this CPU lacks {', '.join(missing)}"
    if digest is not None and digest != info.get("source_sha256"):
        return "it was built from another csrc/scan_cpu.cpp than the one installed (an edited checkout)"
    return None


def packaged_build_plan(environ=os.environ, machine: Optional[str] = None):
    """``(ext_modules, cmdclass, message)`` for ``setup.py``: the packaged kernel when torch is importable at
    build time (``--no-build-isolation``), the machine is x86-64 and ``RV_PLUGINS_BUILD_CPU_KERNEL`` is not
    ``0``; otherwise no extension (a pure-Python package that builds the kernel at its first use).
    ``RV_PLUGINS_BUILD_CPU_KERNEL=1`` makes a missing torch or a failing compile an error."""
    switch = environ.get(BUILD_SWITCH, "").strip()
    if switch not in ("", "0", "1"):
        raise ValueError(f"{BUILD_SWITCH}={switch!r}: use 1 (build the CPU kernel into the package, or fail), "
                         "0 (do not build it), or unset it (build it when torch is importable)")
    machine = (machine or platform.machine()).lower()
    skip = " (it is compiled at its first use instead)"
    if switch == "0":
        return [], {}, f"rv_plugins: not building the CPU scan kernel into the package: {BUILD_SWITCH}=0" + skip
    if machine not in PACKAGED_MACHINES:
        return [], {}, f"rv_plugins: no packaged CPU scan kernel for {machine}, only for x86-64" + skip
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError as err:
        if switch == "1":
            raise RuntimeError(f"{BUILD_SWITCH}=1 but torch is not importable at build time ({err}): build with "
                               "pip's --no-build-isolation in an environment that has torch") from err
        return [], {}, (f"rv_plugins: not building the CPU scan kernel into the package: torch is not importable "
                        f"at build time ({err}; build with --no-build-isolation)" + skip)
    source = os.path.relpath(SOURCE, os.path.dirname(os.path.dirname(_OPS)))  # setuptools: relative to setup.py
    extension = CppExtension(f"rv_plugins.ops.{PACKAGED_NAME}", [source],
                             extra_compile_args=CFLAGS + PACKAGED_ISA_CFLAGS + ["-g0"], extra_link_args=LDFLAGS,
                             optional=switch != "1")
    info = build_info(torch.__version__)
    message = f"rv_plugins: building the CPU scan kernel into the package (torch {info['torch']}, {PACKAGED_ISA})"
    return [extension], {"build_ext": _recording_build_ext(BuildExtension, info)}, message


def _recording_build_ext(base, info: Dict):
    """``base`` (torch's BuildExtension) that writes the build record next to each extension it builds (and
    copies it into the source tree with the extension for in-place and editable builds); an optional
    extension whose compile fails is left out with a message instead of failing the whole build."""
    class RecordingBuildExt(base):
        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as err:
                if not ext.optional:
                    raise
                print(f"rv_plugins: the CPU scan kernel did not compile ({err!r:.300}); the package is built "
                      "without it (it is compiled at its first use instead)", file=sys.stderr)
                return
            with open(build_info_path(self.get_ext_fullpath(ext.name)), "w") as f:
                json.dump(info, f, indent=1)

        def copy_extensions_to_source(self):
            super().copy_extensions_to_source()
            build_py = self.get_finalized_command("build_py")
            for ext in self.extensions:
                inplace_file, regular_file = self._get_inplace_equivalent(build_py, ext)
                if os.path.exists(build_info_path(regular_file)):
                    self.copy_file(build_info_path(regular_file), build_info_path(inplace_file), level=self.verbose)

    return RecordingBuildExt

