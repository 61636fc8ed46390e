"""Install Detectron2 v0.6's Python package without compiling its C++/CUDA ops.

Detectron2 is not published on PyPI. The sdist ``pb1-detectron2==0.6`` carries FAIR's v0.6 Python
code unchanged but no C++ sources, so its own ``setup.py`` cannot build. This script downloads that
sdist, repackages its ``detectron2/`` package (plus the model-zoo configs, as Detectron2's setup.py
does) as a pure-Python distribution named ``detectron2`` and installs it with its runtime
dependencies into the running interpreter. ``detectron2._C`` is then absent; ``rv_plugins.detectron2``
supplies a logged stand-in (see ``rv_plugins/detectron2/compat.py``).

Usage: python tools/install_detectron2.py   (run by tools/setup_env.sh)
"""
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request

SDIST_NAME, SDIST_VERSION = "pb1-detectron2", "0.6"
# Detectron2 v0.6's install_requires, minus black (only used to pretty-print saved lazy configs)
# and with Pillow < 10 (v0.6 uses Image.LINEAR, removed in Pillow 10).
REQUIRES = [
    "termcolor>=1.1", "Pillow>=7.1,<10", "yacs>=0.1.8", "tabulate", "cloudpickle", "matplotlib",
    "tqdm>4.29.0", "tensorboard", "fvcore>=0.1.5,<0.1.6", "iopath>=0.1.7,<0.1.10",
    "pycocotools>=2.0.2", "future", "pydot", "omegaconf>=2.1", "hydra-core>=1.1", "scipy",
]
SETUP_PY = """from setuptools import setup, find_packages
setup(name="detectron2", version="0.6", packages=find_packages(include=["detectron2", "detectron2.*"]),
      package_data={{"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]}},
      include_package_data=False, install_requires={requires!r}, python_requires=">=3.6")
"""


def run(cmd):
    print("+", " ".join(cmd), flush=True)
    subprocess.check_call(cmd)


def download_sdist(dest: str) -> str:
    """Fetch the sdist file itself from the package index's simple (PEP 503) page and check its sha256.

    ``pip download`` would try to build the sdist's metadata, which imports torch in an isolated
    build environment and fails."""
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    with urllib.request.urlopen(f"{index}/{SDIST_NAME}/", timeout=60) as r:
        page = r.read().decode()
    filename = f"{SDIST_NAME}-{SDIST_VERSION}.tar.gz"
    match = re.search(r'href="([^"#]*' + re.escape(filename) + r')#sha256=([0-9a-f]{64})"', page)
    if match is None:
        sys.exit(f"{index}/{SDIST_NAME}/ lists no {filename}")
    url, sha256 = urllib.parse.urljoin(f"{index}/{SDIST_NAME}/", match.group(1)), match.group(2)
    path = os.path.join(dest, filename)
    print(f"+ download {url}", flush=True)
    with urllib.request.urlopen(url, timeout=300) as r, open(path, "wb") as f:
        shutil.copyfileobj(r, f)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != sha256:
        sys.exit(f"sha256 mismatch for {filename}: got {digest}, the index says {sha256}")
    return path


def main():
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    with tempfile.TemporaryDirectory() as tmp:
        archives = [download_sdist(tmp)]
        with tarfile.open(archives[0]) as tar:
            tar.extractall(tmp, filter="data")
        pkg = glob.glob(os.path.join(tmp, "*", "detectron2", "__init__.py"))
        if not pkg:
            sys.exit(f"{archives[0]} holds no detectron2/ package")
        src_root = os.path.dirname(os.path.dirname(pkg[0]))
        build = os.path.join(tmp, "build")
        shutil.copytree(os.path.join(src_root, "detectron2"), os.path.join(build, "detectron2"))
        configs = os.path.join(src_root, "configs")
        if os.path.isdir(configs):  # Detectron2's setup.py links these into model_zoo/configs.
            dst = os.path.join(build, "detectron2", "model_zoo", "configs")
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(configs, dst)
        with open(os.path.join(build, "setup.py"), "w") as f:
            f.write(SETUP_PY.format(requires=REQUIRES))
        run(pip + ["install", "--progress-bar", "off", "--no-build-isolation", build])


if __name__ == "__main__":
    main()
