"""What ``tools/train.py`` and ``tools/test.py`` share: config loading, checks and mmengine fixes.

Toolkit-agnostic: the config's ``default_scope`` (mmseg or mmpretrain) decides the registries.
"""
import os
import os.path as osp
from typing import Optional

DATA_HINTS = {
    "ADE20KDataset": ("ADE20K (ADEChallengeData2016): download ADEChallengeData2016.zip from the MIT "
                      "Scene Parsing benchmark and unzip it so that {root}/images/training exists "
                      "(see mmsegmentation's docs/en/user_guides/2_dataset_prepare.md, 'ADE20K')."),
    "ImageNet": ("ImageNet-1k: place the train/ and val/ folders (and meta/train.txt, meta/val.txt) under "
                 "{root} (see mmpretrain's docs/en/user_guides/dataset_prepare.md, 'ImageNet')."),
}


def allow_mmengine_checkpoints() -> None:
    """torch >= 2.6 loads checkpoints with ``weights_only=True``; mmengine 0.10.7's resume then fails on
    its own message-hub classes (``Unsupported global: ...HistoryBuffer``). Allow-list exactly those."""
    import numpy as np
    import torch
    from mmengine.logging.history_buffer import HistoryBuffer

    if not hasattr(torch.serialization, "add_safe_globals"):
        return
    safe = [HistoryBuffer, np.ndarray, np.dtype, np.core.multiarray._reconstruct, np.core.multiarray.scalar]
    safe += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool", "uint8")]
    torch.serialization.add_safe_globals(safe)


def load_config(path: str, cfg_options: Optional[dict] = None):
    """``Config.fromfile`` with our ``rv_plugins::`` scope rule in place."""
    from mmengine.config import Config

    from rv_plugins import _mmengine_scope

    _mmengine_scope.patch_now()
    if not osp.isfile(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def _datasets(node):
    """Yield every dataset dict reachable from a config node (wrappers such as RepeatDataset included)."""
    if isinstance(node, dict):
        if "type" in node and ("data_root" in node or "data_prefix" in node):
            yield node
        for value in node.values():
            yield from _datasets(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _datasets(value)


def check_datasets(cfg, which=("train_dataloader", "val_dataloader", "test_dataloader")) -> None:
    """Fail early, naming the missing folder and how to get the data."""
    for key in which:
        for ds in _datasets(cfg.get(key)):
            root = ds.get("data_root") or ""
            if root and not root.startswith(("s3:", "http:", "https:")) and not osp.isdir(root):
                kind = str(ds.get("type"))
                hint = DATA_HINTS.get(kind, "").format(root=root)
                raise FileNotFoundError(
                    f"{key}: the {kind} data root {osp.abspath(root)!r} does not exist. {hint} "
                    f"Or point the config at your copy: --cfg-options {key}.dataset.data_root=/path/to/data. "
                    f"To try the pipeline without any data, use a *_synthetic.py config.")


def build_runner(cfg):
    """mmengine's Runner (or the config's ``runner_type``), after our compatibility fixes."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    allow_mmengine_checkpoints()
    return Runner.from_cfg(cfg) if "runner_type" not in cfg else RUNNERS.build(cfg)


def default_work_dir(config_path: str) -> str:
    return osp.join("work_dirs", osp.splitext(osp.basename(config_path))[0])


def setup_launcher_env(launcher: str, local_rank: int) -> None:
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(local_rank)
