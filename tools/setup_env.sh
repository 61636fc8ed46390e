#!/usr/bin/env bash
# Creates .venv/ at the repository root and installs the verified stack (see README).
# Idempotent: a step whose result is already present is skipped, so a second run takes seconds.
# Usage: bash tools/setup_env.sh            (PYTHON=python3.11 by default)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3.11}"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check --progress-bar off)
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
T0=$(date +%s)

step() {  # step NAME CHECK_CMD INSTALL_CMD...
  local name="$1" check="$2"; shift 2
  local t=$(date +%s)
  if [ -x "$PY" ] && bash -c "$check" >/dev/null 2>&1; then
    echo "[setup] $name: already present"
    return 0
  fi
  echo "[setup] $name: installing ..."
  if ! "$@"; then
    echo "[setup] FAILED at step '$name' (after $(( $(date +%s) - t ))s). Fix the error above and re-run: bash tools/setup_env.sh" >&2
    exit 1
  fi
  echo "[setup] $name: done in $(( $(date +%s) - t ))s (total $(( $(date +%s) - T0 ))s)"
}

have() { echo "\"$PY\" -c \"$1\""; }

step "virtualenv .venv ($PYTHON)" "test -x '$PY'" "$PYTHON" -m venv "$VENV"
step "pip tooling (setuptools<70 for mmcv, pkg_resources for mmengine)" \
  "$(have "import setuptools, wheel, ninja; assert int(setuptools.__version__.split('.')[0]) < 70")" \
  "${PIP[@]}" "pip>=24" "setuptools>=64,<70" wheel ninja psutil
step "torch 2.9.1 + torchvision 0.24.1 (+ triton)" \
  "$(have "import torch, torchvision, triton; import numpy; assert numpy.__version__ < '2.4', 'numpy 2.4 breaks the Triton interpreter'; assert torch.__version__.startswith('2.9.1') and torchvision.__version__.startswith('0.24.1')")" \
  "${PIP[@]}" "torch==2.9.1" "torchvision==0.24.1" "numpy>=2,<2.4"
step "mmengine 0.10.7 and mmcv's build dependencies" \
  "$(have "import mmengine, cv2; assert mmengine.__version__ == '0.10.7'")" \
  "${PIP[@]}" "mmengine==0.10.7" "numpy>=2,<2.4" "opencv-python" "addict" "yapf" "packaging" "pyyaml" "Pillow<10"
step "mmcv 2.1.0 built from source with ops (about 13 min on 2 cores, cached by pip afterwards)" \
  "$(have "import mmcv, mmcv.ops; from mmcv.utils import ext_loader; ext_loader.load_ext('_ext', ['nms']); assert mmcv.__version__ == '2.1.0'")" \
  env MMCV_WITH_OPS=1 "${PIP[@]}" --no-build-isolation "mmcv==2.1.0"
step "mmsegmentation 1.2.2 + mmpretrain 1.2.0" \
  "$(have "import mmseg, mmpretrain; assert mmseg.__version__ == '1.2.2' and mmpretrain.__version__ == '1.2.0'")" \
  "${PIP[@]}" "mmsegmentation==1.2.2" "mmpretrain==1.2.0" "ftfy" "regex" "Pillow<10"
step "Detectron2 v0.6 (pure Python, from the pb1-detectron2 sdist) + dependencies" \
  "$(have "import importlib.util, importlib.metadata as md, os; d = os.path.dirname(importlib.util.find_spec('detectron2').origin); assert md.version('detectron2') == '0.6'; assert os.path.isfile(os.path.join(d, 'model_zoo', 'configs', 'COCO-PanopticSegmentation', 'panoptic_fpn_R_50_1x.yaml'))")" \
  "$PY" "$ROOT/tools/install_detectron2.py"
step "panopticapi-lite (--no-deps: its pins conflict)" \
  "$(have "from panopticapi.evaluation import pq_compute")" \
  "${PIP[@]}" --no-deps "panopticapi-lite==0.2.0"
step "test and benchmark tools (pytest, timm, matplotlib, onnxruntime, onnxscript)" \
  "$(have "import pytest, timm, matplotlib, onnxruntime, onnxscript")" \
  "${PIP[@]}" pytest "timm==1.0.*" matplotlib "onnxruntime==1.31.1" "onnxscript==0.7.2"
step "rv_plugins (editable)" \
  "$(have "import rv_plugins, os; assert os.path.realpath(os.path.dirname(rv_plugins.__file__)) == os.path.realpath('$ROOT/rv_plugins')") && $PY -m pip show rv_plugins >/dev/null" \
  "${PIP[@]}" --no-deps --no-build-isolation -e "$ROOT"
step "mmengine hook for 'rv_plugins::' config scopes (.pth in site-packages; an outdated one is rewritten)" \
  "\"$PY\" -m rv_plugins.openmmlab.scope --check" \
  "$PY" -m rv_plugins.openmmlab.scope --install
step "compiled CPU scan kernel tuned to this CPU (rv_plugins/ops/csrc, cached by torch)" \
  "$(have "from rv_plugins.ops import cpu_kernel; cpu_kernel.load(tuned=True)")" \
  "$PY" -c "from rv_plugins.ops import cpu_kernel; cpu_kernel.load(verbose=True, tuned=True)"
echo "[setup] environment ready in $(( $(date +%s) - T0 ))s: activate with 'source .venv/bin/activate'"
