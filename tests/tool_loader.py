"""Import a script from ``tools/`` as a module (the scripts are not a package)."""
import importlib.util
import os

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")


def load_tool(name: str):
    """``load_tool("benchmark_scan")`` -> the module ``tools/benchmark_scan.py``."""
    spec = importlib.util.spec_from_file_location(f"rv_tool_{name}", os.path.join(TOOLS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
