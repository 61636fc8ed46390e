"""Detectron2 config keys of rv_plugins and a loader for yaml files that inherit the model zoo.

``add_rv_config(cfg)`` adds (defaults in brackets)::

    MODEL.ROI_MASK_HEAD.HGRU     recurrent mask head (``ROI_MASK_HEAD.NAME: "HGRUMaskHead"``)
        CELL ["pathfinder"; "coco" = the C-RBP authors' COCO cell and read-out],
        STEPS [20], TEST_STEPS [0 = STEPS], SOLVER_MODE ["crbp"], NEUMANN_TERMS [15; 0 = STEPS],
        NEUMANN_NORM_CAP [0.0 = off; the authors' code: 1.0], LCP_LAMBDA [0.9; their code: 0.95],
        LCP_WEIGHT [1e-3], LCP_REDUCTION ["sum"], CHANNELS [256], KERNEL_SIZE [3],
        INPUT_KERNEL_SIZE [1], NORM ["group"], NORM_GROUPS [32], SHARE_KERNELS [False],
        READOUT_NORM ["SyncBN"; "coco" only; a Detectron2 norm name, "" = none]
        Solver defaults = the authors' COCO runs (c-rbp/panoptic_segmentation:
        configs/BASE-RCNN-RFPN-CBP*.yaml XI 0.001; rnns.py CBP_penalty summed, tau 0.95;
        mask_head.py 15 Neumann iterations), lambda = 0.9 as the paper says. CELL stays
        "pathfinder" by default so configs and checkpoints that do not name a cell keep their
        architecture; our COCO configs (configs/detectron2/) name "coco".
    MODEL.VISIONGRU              ``BACKBONE.NAME: "build_visiongru_fpn_backbone"``
        ARCH ["tiny"], OUT_FEATURES [res2..res5], DROP_PATH_RATE [0.1], IMG_SIZE [0 = no pos. emb.],
        FROZEN_STAGES [-1], WITH_CP [False], PRESET ["released" = the authors' released model; "paper"],
        PRETRAINED ['' = none: backbone weights, loaded by rv_plugins' loader when the model is built]
    MODEL.SEQUENCER2D            ``BACKBONE.NAME: "build_sequencer2d_fpn_backbone"``
        ARCH ["s"], OUT_FEATURES [res2..res5], DROP_PATH_RATE [0.1], RNN_TYPE ["lstm"],
        PATCH_SIZES [[] = the arch's], FROZEN_STAGES [-1], WITH_CP [False], PRETRAINED ['' = none]
    DATASETS.SYNTHETIC_PANOPTIC_ROOT ['' = none]: folder written by
        ``tools/make_synthetic_coco_panoptic.py``; ``tools/train_net.py`` registers it.

Inheriting Detectron2's own configs: Detectron2 v0.6 resolves ``_BASE_`` relative to the yaml
file, which breaks as soon as our configs live outside its package. Our yaml files therefore
write ``_BASE_: "detectron2://COCO-PanopticSegmentation/Base-Panoptic-FPN.yaml"``; the config
node returned by :func:`get_cfg` maps that prefix to the installed model-zoo file
(:func:`zoo_config_file`, found without importing ``detectron2.model_zoo``, which needs
``pkg_resources``) at any depth of the ``_BASE_`` chain, and leaves every other ``_BASE_``
(relative, absolute, ``~``) to Detectron2. Plain ``detectron2.config.get_cfg()`` cannot read these
files; use ``rv_plugins.detectron2.config.get_cfg(path)``.
"""
import importlib.util
import os
from typing import Optional, Sequence

from detectron2.config import CfgNode as _D2CfgNode
from detectron2.config import get_cfg as _d2_get_cfg

ZOO_PREFIX = "detectron2://"
__all__ = ["add_rv_config", "get_cfg", "RVCfgNode", "ZOO_PREFIX"]


def add_rv_config(cfg: _D2CfgNode) -> _D2CfgNode:
    """Add the rv_plugins keys (see the module docstring) to a Detectron2 config in place; returns it.

    Call it before merging a yaml that uses them. Calling it twice is harmless.
    """
    CN = _D2CfgNode
    hgru = CN()
    hgru.CELL = "pathfinder"      # "coco": the authors' COCO cell (drive = ROI features, norm read-out)
    hgru.STEPS = 20
    hgru.TEST_STEPS = 0
    hgru.SOLVER_MODE = "crbp"
    hgru.NEUMANN_TERMS = 15       # the authors' mask_head.py: neumann_iterations = 15; 0 = STEPS
    hgru.NEUMANN_NORM_CAP = 0.0   # 0 = off; the authors' RBPFun stops when ||sum|| > 1.0
    hgru.LCP_LAMBDA = 0.9         # the paper; the authors' code: tau = 0.95 (rnns.py CBP_penalty)
    hgru.LCP_WEIGHT = 1e-3        # the authors' XI: 0.001 (configs/BASE-RCNN-RFPN-CBP*.yaml)
    hgru.LCP_REDUCTION = "sum"    # CBP_penalty returns vj_penalty.sum()
    hgru.CHANNELS = 256
    hgru.KERNEL_SIZE = 3
    hgru.INPUT_KERNEL_SIZE = 1
    hgru.NORM = "group"
    hgru.NORM_GROUPS = 32
    hgru.SHARE_KERNELS = False
    hgru.READOUT_NORM = "SyncBN"  # "coco" only: the authors' OUTPUTNORM
    cfg.MODEL.ROI_MASK_HEAD.HGRU = hgru

    vgru = CN()
    vgru.ARCH = "tiny"
    vgru.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    vgru.DROP_PATH_RATE = 0.1
    vgru.IMG_SIZE = 0
    vgru.FROZEN_STAGES = -1
    vgru.WITH_CP = False
    vgru.PRESET = "released"
    vgru.PRETRAINED = ""
    cfg.MODEL.VISIONGRU = vgru

    seq = CN()
    seq.ARCH = "s"
    seq.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    seq.DROP_PATH_RATE = 0.1
    seq.RNN_TYPE = "lstm"
    seq.PATCH_SIZES = []
    seq.FROZEN_STAGES = -1
    seq.WITH_CP = False
    seq.PRETRAINED = ""
    cfg.MODEL.SEQUENCER2D = seq

    cfg.DATASETS.SYNTHETIC_PANOPTIC_ROOT = ""
    return cfg


class RVCfgNode(_D2CfgNode):
    """Detectron2's ``CfgNode`` that also understands ``_BASE_: "detectron2://<zoo path>"``."""

    @classmethod
    def load_yaml_with_base(cls, filename, allow_unsafe: bool = False):
        if isinstance(filename, str) and ZOO_PREFIX in filename:
            # fvcore joins a relative _BASE_ to the including file's folder; keep what follows the prefix
            zoo_path = filename.split(ZOO_PREFIX, 1)[1]
            filename = zoo_config_file(zoo_path)
        return super().load_yaml_with_base(filename, allow_unsafe=allow_unsafe)


def zoo_config_dirs() -> list:
    """Where the installed Detectron2 keeps its model-zoo configs: ``detectron2/model_zoo/configs``
    (wheels, our v0.6 package, and source builds, where setup.py links it to the checkout's
    ``configs/``), else the checkout's ``configs/`` next to the package (an editable install
    without the link). Found from the package's location, not by importing ``detectron2.model_zoo``,
    which needs ``pkg_resources`` (gone from setuptools >= 82)."""
    spec = importlib.util.find_spec("detectron2")
    roots = list(spec.submodule_search_locations or []) if spec else []
    dirs = []
    for root in roots:
        dirs += [os.path.join(root, "model_zoo", "configs"), os.path.join(os.path.dirname(root), "configs")]
    return [d for d in dirs if os.path.isdir(d)]


def zoo_config_file(zoo_path: str) -> str:
    """``'COCO-PanopticSegmentation/Base-Panoptic-FPN.yaml'`` -> its file in the installed model zoo."""
    dirs = zoo_config_dirs()
    for d in dirs:
        path = os.path.join(d, zoo_path)
        if os.path.isfile(path):
            return path
    where = ", ".join(dirs) or "no model-zoo config folder found in the installed detectron2 package"
    raise FileNotFoundError(
        f"_BASE_ {ZOO_PREFIX}{zoo_path}: no such file in the installed Detectron2 model zoo ({where}); "
        f"check the path, e.g. {ZOO_PREFIX}COCO-PanopticSegmentation/Base-Panoptic-FPN.yaml, or reinstall "
        f"Detectron2 with its configs (tools/install_detectron2.py, or a source build).")


def get_cfg(path: Optional[str] = None, opts: Optional[Sequence[str]] = None) -> RVCfgNode:
    """Detectron2's default config plus :func:`add_rv_config`, then ``path`` (a yaml file, whose
    ``_BASE_`` may use the ``detectron2://`` prefix) and ``opts`` (``["KEY", "VALUE", ...]``)."""
    cfg = RVCfgNode(add_rv_config(_d2_get_cfg()))
    if path is not None:
        cfg.merge_from_file(path)
    if opts:
        cfg.merge_from_list(list(opts))
    return cfg
