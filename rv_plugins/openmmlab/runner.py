"""What ``tools/train.py`` and ``tools/test.py`` share: config loading, dataset checks, building the runner.

Entry points, in the order the tools call them:

- :func:`setup_launcher_env`, :func:`load_config` (``Config.fromfile`` with the ``rv_plugins::``
  rule of :mod:`rv_plugins.openmmlab.scope` in place, so ``rv_plugins::<name>.py`` is a config path
  too, then ``--cfg-options``), :func:`default_work_dir`;
- :func:`check_datasets`: a missing or empty data folder fails before the Runner is built, with an
  error that names the folder and how to get the data;
- :func:`build_runner`: every run is a :class:`~rv_plugins.openmmlab.prepared_runner.PreparedRunner`,
  i.e. goes through the one run preparation (:mod:`rv_plugins.openmmlab.preparation`: work dir, atomic
  checkpoints, the checkpoint to resume from) and takes the work-dir lock when training starts;
- :func:`is_main_rank`.

:func:`use_atomic_checkpoints` (the hook swap of the preparation) and :data:`RUN_ERRORS` (the errors a
tool prints as ``error: <message>``) come from :mod:`rv_plugins.openmmlab.preparation`.

Toolkit-agnostic: the config's ``default_scope`` (mmseg or mmpretrain) decides the registries.
Importing this module imports no toolkit; the functions import mmengine when called.
"""
import os
import os.path as osp
from typing import Optional

from rv_plugins.openmmlab.preparation import RUN_ERRORS, RunPreparationError, use_atomic_checkpoints

__all__ = ["DATA_HINTS", "RUN_ERRORS", "load_config", "check_datasets", "build_runner", "use_atomic_checkpoints",
           "is_main_rank", "default_work_dir", "setup_launcher_env"]

DATA_HINTS = {
    "ADE20KDataset": ("ADE20K (ADEChallengeData2016): download ADEChallengeData2016.zip from the MIT "
                      "Scene Parsing benchmark and unzip it so that {root}/images/training exists "
                      "(see mmsegmentation's docs/en/user_guides/2_dataset_prepare.md, 'ADE20K')."),
    "ImageNet": ("ImageNet-1k: place the train/ and val/ folders (and meta/train.txt, meta/val.txt) under "
                 "{root} (see mmpretrain's docs/en/user_guides/dataset_prepare.md, 'ImageNet')."),
}


def load_config(path: str, cfg_options: Optional[dict] = None):
    """``Config.fromfile`` with our ``rv_plugins::`` scope rule in place (``path`` may be
    ``rv_plugins::<name>.py``), then ``cfg_options`` merged."""
    from mmengine.config import Config

    from rv_plugins.openmmlab import scope

    scope.patch_now()
    if "::" not in path and not osp.isfile(path):
        raise FileNotFoundError(f"config file {path!r} does not exist (give a config file, or "
                                f"rv_plugins::<name>.py for one shipped with rv_plugins)")
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


def _data_folders(ds) -> list:
    """The image/annotation folders a file-based dataset reads (relative to its data_root)."""
    prefix = ds.get("data_prefix")
    if isinstance(prefix, str) and prefix:
        return [prefix]
    if isinstance(prefix, dict):
        return [v for v in prefix.values() if isinstance(v, str) and v]
    split = ds.get("split")  # mmpretrain's ImageNet: data_root/<split>/
    return [split] if isinstance(split, str) and split else []


def _has_file(folder: str) -> bool:
    for _, _, files in os.walk(folder, followlinks=True):
        if any(not f.startswith(".") for f in files):
            return True
    return False


def check_datasets(cfg, which=("train_dataloader", "val_dataloader", "test_dataloader")) -> None:
    """Fail early, naming the missing (or empty) folder and how to get the data."""
    for key in which:
        for ds in _datasets(cfg.get(key)):
            root = ds.get("data_root") or ""
            if not root or root.startswith(("s3:", "http:", "https:")) or "://" in root:
                continue
            kind = str(ds.get("type"))
            hint = DATA_HINTS.get(kind, "").format(root=root)
            fix = (f"{hint} Or point the config at your copy: --cfg-options {key}.dataset.data_root=/path/to/data. "
                   f"To try the pipeline without any data, use a *_synthetic.py config.")
            if not osp.isdir(root):
                raise FileNotFoundError(f"{key}: the {kind} data root {osp.abspath(root)!r} does not exist. {fix}")
            for sub in _data_folders(ds):
                folder = sub if osp.isabs(sub) else osp.join(root, sub)
                if not osp.isdir(folder):
                    raise FileNotFoundError(
                        f"{key}: the {kind} data root {osp.abspath(root)!r} exists but has no folder "
                        f"{sub!r} ({osp.abspath(folder)}). {fix}")
                if not _has_file(folder):
                    raise FileNotFoundError(
                        f"{key}: the {kind} folder {osp.abspath(folder)!r} exists but holds no files "
                        f"(an unfinished download or unzip?), so the dataset would be empty. {fix}")
            ann = ds.get("ann_file")
            if isinstance(ann, str) and ann:
                path = ann if osp.isabs(ann) else osp.join(root, ann)
                if osp.isfile(path) and osp.getsize(path) == 0:
                    raise ValueError(f"{key}: the {kind} annotation file {osp.abspath(path)!r} is empty. {fix}")


def build_runner(cfg):
    """The Runner of a config, built as every run of our tools is: a
    :class:`~rv_plugins.openmmlab.prepared_runner.PreparedRunner` (the run preparation, the work-dir lock
    when training starts, the CPU-only distributed fixes). A config whose ``runner_type`` names another
    Runner class is refused (it would skip the preparation), unless that class derives from PreparedRunner."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    from rv_plugins.openmmlab.prepared_runner import PreparedRunner

    kind = cfg.get("runner_type", "PreparedRunner")
    cls = RUNNERS.get(kind) if isinstance(kind, str) else kind
    if cls is Runner:
        cls = PreparedRunner
    if cls is None or not (isinstance(cls, type) and issubclass(cls, PreparedRunner)):
        raise RunPreparationError(
            f"runner_type={kind!r}: rv_plugins' tools build every run with PreparedRunner (run preparation, "
            f"kill-safe checkpoints, the work-dir lock), which {kind!r} is not. Remove runner_type from the "
            f"config, derive that class from rv_plugins.openmmlab.prepared_runner.PreparedRunner, or run the "
            f"toolkit's own tools/train.py.")
    return cls.from_cfg(cfg)


def is_main_rank() -> bool:
    """Rank 0 (or a single process), before any process group exists."""
    for var in ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK"):
        if var in os.environ:
            return int(os.environ[var]) == 0
    return True


def default_work_dir(config_path: str) -> str:
    """``work_dirs/<config name>`` (the name without a ``scope::`` prefix)."""
    return osp.join("work_dirs", osp.splitext(osp.basename(config_path.split("::")[-1]))[0])


def setup_launcher_env(launcher: str, local_rank: int) -> None:
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(local_rank)
