"""Which compiled CPU kernel ``cpu_kernel.load()`` takes, and why it skips the packaged one.

Order: (a) this checkout's cached JIT build, (b) the packaged build (``setup.py``'s, x86-64-v3) when its
build record fits this torch, CPU and source, (c) a JIT build. The builds are simulated: a fake packaged
extension file with a build record in a temporary folder, fake modules for the libraries, so nothing is
compiled here. The wheel that really carries the kernel: tests/test_package_install.py (slow).
"""
import json
import logging
import platform
import types
import warnings

import pytest
import torch

from rv_plugins.ops import cpu_kernel, registry
from rv_plugins.ops import cpu_kernel_build as build

LOGGER = "rv_plugins.ops.cpu_kernel"
ALL_FLAGS = set(build.PACKAGED_CPU_FLAGS) | {"sse", "sse2", "avx512f"}


@pytest.fixture
def fresh(monkeypatch):
    """A process that has loaded no kernel yet; every route fails loudly unless a test provides it."""
    monkeypatch.setattr(cpu_kernel, "_MODULE", None)
    monkeypatch.setattr(cpu_kernel, "_LOADED_FROM", None)
    monkeypatch.setattr(cpu_kernel, "_FAILED", False)
    monkeypatch.setattr(cpu_kernel, "_import_built", lambda name: None)
    monkeypatch.setattr(cpu_kernel, "_packaged_path", lambda: None)
    monkeypatch.setattr(build, "cpu_flags", lambda: set(ALL_FLAGS))

    def no_jit(name, cflags, verbose):
        raise AssertionError("the JIT build was not expected here")
    monkeypatch.setattr(cpu_kernel, "_jit_build", no_jit)
    return monkeypatch


def _fake(kind):
    return types.SimpleNamespace(kind=kind)


def _packaged(monkeypatch, tmp_path, **record):
    """A packaged extension file with a build record as setup.py writes it (``record`` overrides fields);
    returns the list of library loads it sees."""
    path = tmp_path / "_scan_cpu.cpython-311-x86_64-linux-gnu.so"
    path.write_bytes(b"not a library: loading it is simulated")
    info = dict(build.build_info(torch.__version__), **record)
    (tmp_path / "_scan_cpu.cpython-311-x86_64-linux-gnu.build.json").write_text(json.dumps(info))
    monkeypatch.setattr(cpu_kernel, "_packaged_path", lambda: str(path))
    loads = []

    def load_library(name, file):
        loads.append((name, file))
        return _fake("packaged")
    monkeypatch.setattr(cpu_kernel, "_exec_extension", load_library)
    return loads


def _jit(monkeypatch):
    built = []

    def jit_build(name, cflags, verbose):
        built.append((name, cflags))
        return _fake("jit")
    monkeypatch.setattr(cpu_kernel, "_jit_build", jit_build)
    return built


def _warnings_logged(caplog):
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]


def test_the_cached_jit_build_comes_first(fresh, tmp_path, caplog):
    loads = _packaged(fresh, tmp_path)
    fresh.setattr(cpu_kernel, "_import_built", lambda name: _fake("cached"))
    module = cpu_kernel.load()
    assert module.kind == "cached" and cpu_kernel.loaded_from() == "cached" and loads == []
    assert module.build_info["isa"] == "this CPU" and module.build_info["cflags"][:len(build.CFLAGS)] == build.CFLAGS
    assert cpu_kernel.load() is module and _warnings_logged(caplog) == []


def test_the_packaged_build_when_nothing_is_cached(fresh, tmp_path, caplog):
    loads = _packaged(fresh, tmp_path)
    module = cpu_kernel.load()
    assert module.kind == "packaged" and cpu_kernel.loaded_from() == "packaged"
    assert loads == [("rv_plugins.ops._scan_cpu", str(tmp_path / "_scan_cpu.cpython-311-x86_64-linux-gnu.so"))]
    assert module.build_info["torch"] == torch.__version__ and module.build_info["isa"] == "x86-64-v3"
    assert _warnings_logged(caplog) == []
    assert cpu_kernel.packaged_build_info()["isa"] == "x86-64-v3"


@pytest.mark.parametrize("record, cpu, reason", [
    (dict(torch="1.13.0"), None, f"it was built against torch 1.13.0, this is torch {torch.__version__}"),
    ({}, ALL_FLAGS - {"avx2", "fma"}, "it needs x86-64-v3 and this CPU lacks avx2, fma"),
    ({}, "unreadable", "the CPU's flags could not be read"),
    (dict(machine="aarch64"), None, "it was built for aarch64"),
    (dict(source_sha256="0" * 64), None, "another csrc/scan_cpu.cpp than the one installed"),
])
def test_a_mismatched_packaged_build_is_not_loaded_and_one_line_says_why(fresh, tmp_path, caplog, record, cpu,
                                                                          reason):
    loads = _packaged(fresh, tmp_path, **record)
    if cpu is not None:
        fresh.setattr(build, "cpu_flags", lambda: None if cpu == "unreadable" else set(cpu))
    built = _jit(fresh)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        module = cpu_kernel.load()
        cpu_kernel.load()
    assert module.kind == "jit" and cpu_kernel.loaded_from() == "built" and len(built) == 1
    assert loads == []  # the record is checked before the library is loaded: a wrong one can crash the process
    (line,) = _warnings_logged(caplog)
    assert reason in line and "not using the packaged CPU scan kernel" in line and "compiling one" in line
    assert module.build_info["isa"] == "this CPU"


def test_a_packaged_library_that_does_not_load_falls_back_to_the_jit_build(fresh, tmp_path, caplog):
    _packaged(fresh, tmp_path)

    def broken(name, file):
        raise ImportError("GLIBCXX_3.4.32 not found")
    fresh.setattr(cpu_kernel, "_exec_extension", broken)
    _jit(fresh)
    assert cpu_kernel.load().kind == "jit"
    (line,) = _warnings_logged(caplog)
    assert "it does not load" in line and "GLIBCXX_3.4.32" in line


def test_tuned_skips_the_packaged_build_and_replaces_a_loaded_one(fresh, tmp_path):
    loads = _packaged(fresh, tmp_path)
    built = _jit(fresh)
    assert cpu_kernel.load().kind == "packaged" and len(loads) == 1 and built == []
    assert cpu_kernel.load(tuned=True).kind == "jit" and cpu_kernel.loaded_from() == "built" and len(built) == 1
    assert cpu_kernel.load().kind == "jit" and cpu_kernel.load(tuned=True).kind == "jit" and len(built) == 1
    fresh.setattr(cpu_kernel, "_MODULE", None)
    fresh.setattr(cpu_kernel, "_import_built", lambda name: _fake("cached"))
    assert cpu_kernel.load(tuned=True).kind == "cached" and len(built) == 1 and len(loads) == 1


def test_an_unreadable_build_record_falls_back_to_the_jit_build(fresh, tmp_path, caplog):
    _packaged(fresh, tmp_path)
    (tmp_path / "_scan_cpu.cpython-311-x86_64-linux-gnu.build.json").write_text("{ truncated")
    _jit(fresh)
    assert cpu_kernel.load().kind == "jit"
    (line,) = _warnings_logged(caplog)
    assert "build record does not read" in line


def test_without_a_packaged_build_the_jit_build_runs_silently(fresh, caplog):
    built = _jit(fresh)
    assert cpu_kernel.load().kind == "jit" and cpu_kernel.loaded_from() == "built"
    assert cpu_kernel.packaged_build_info() is None and _warnings_logged(caplog) == []
    (name, cflags), = built
    assert name == f"rv_plugins_scan_cpu_{cpu_kernel.build_key(cflags)}"
    assert cflags == build.CFLAGS + build.simd_flags(ALL_FLAGS)  # tuned to the CPU's flags


def test_when_nothing_builds_available_warns_once_and_the_chunked_scan_runs(fresh):
    def no_compiler(name, cflags, verbose):
        raise RuntimeError("Error building extension: c++: not found")
    fresh.setattr(cpu_kernel, "_jit_build", no_compiler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cpu_kernel.available() is False
        assert cpu_kernel.available() is False
    assert len(caught) == 1 and "falling back to the slower chunked PyTorch scan" in str(caught[0].message)
    assert registry.resolve("torch", torch.device("cpu")).name == "chunked"


def test_the_record_setup_writes_fits_this_machine():
    flags = build.cpu_flags()
    if platform.machine().lower() not in build.PACKAGED_MACHINES or not flags or \
            not set(build.PACKAGED_CPU_FLAGS) <= flags:
        pytest.skip("this CPU cannot run the x86-64-v3 build")
    info = build.build_info(torch.__version__)
    assert build.packaged_mismatch(info, torch.__version__, flags, platform.machine(),
                                   build.source_digest()) is None
    assert build.build_info_path("/x/_scan_cpu.cpython-311-x86_64-linux-gnu.so") == \
        "/x/_scan_cpu.cpython-311-x86_64-linux-gnu.build.json"


def test_simd_flags_follow_the_cpu():
    assert build.simd_flags(set()) == [] and build.simd_flags({"avx", "sse2"}) == []
    assert build.simd_flags({"avx2", "fma"}) == ["-mavx2", "-mfma"]
    assert "-mavx512f" in build.simd_flags({"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq"})


def test_the_build_plan_of_setup_py(monkeypatch):
    from torch.utils.cpp_extension import BuildExtension
    (ext,), cmdclass, message = build.packaged_build_plan({}, machine="x86_64")
    assert ext.name == "rv_plugins.ops._scan_cpu" and ext.sources == ["rv_plugins/ops/csrc/scan_cpu.cpp"]
    assert "-march=x86-64-v3" in ext.extra_compile_args and ext.optional
    assert issubclass(cmdclass["build_ext"], BuildExtension) and "x86-64-v3" in message
    (ext,), _, _ = build.packaged_build_plan({"RV_PLUGINS_BUILD_CPU_KERNEL": "1"}, machine="x86_64")
    assert not ext.optional  # =1: a failing compile fails the build

    assert build.packaged_build_plan({"RV_PLUGINS_BUILD_CPU_KERNEL": "0"})[:2] == ([], {})
    exts, cmdclass, message = build.packaged_build_plan({}, machine="aarch64")
    assert exts == [] and "only for x86-64" in message
    with pytest.raises(ValueError, match="RV_PLUGINS_BUILD_CPU_KERNEL='yes': use 1"):
        build.packaged_build_plan({"RV_PLUGINS_BUILD_CPU_KERNEL": "yes"})

    monkeypatch.setitem(__import__("sys").modules, "torch.utils.cpp_extension", None)  # as under build isolation
    exts, _, message = build.packaged_build_plan({}, machine="x86_64")
    assert exts == [] and "torch is not importable at build time" in message and "--no-build-isolation" in message
    with pytest.raises(RuntimeError, match="RV_PLUGINS_BUILD_CPU_KERNEL=1 but torch is not importable"):
        build.packaged_build_plan({"RV_PLUGINS_BUILD_CPU_KERNEL": "1"}, machine="x86_64")


def test_the_cache_folder_rule_matches_torch(monkeypatch, tmp_path):
    key = cpu_kernel.build_key()
    for root in (None, str(tmp_path)):
        if root is None:
            monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
        else:
            monkeypatch.setenv("TORCH_EXTENSIONS_DIR", root)
        assert cpu_kernel._cached_build_directory(f"rv_plugins_scan_cpu_{key}") == cpu_kernel.build_directory(key)
