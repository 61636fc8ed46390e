"""What ``tools/train.py`` and ``tools/test.py`` share: config loading, dataset checks, mmengine fixes.

Entry points, in the order the tools call them:

- :func:`setup_launcher_env`, :func:`load_config` (``Config.fromfile`` with the ``rv_plugins::``
  rule of :mod:`rv_plugins.openmmlab.scope` in place, then ``--cfg-options``),
  :func:`default_work_dir`;
- :func:`check_datasets`: a missing or empty data folder fails before the Runner is built, with an
  error that names the folder and how to get the data;
- :func:`use_atomic_checkpoints`: mmengine's ``CheckpointHook`` becomes ``AtomicCheckpointHook``;
- :func:`build_runner`: mmengine's Runner (or the config's ``runner_type``) with the fixes for
  CPU-only distributed runs (:func:`init_cpu_process_group`) and torch >= 2.6 weights-only loading
  of mmengine's checkpoints;
- :func:`is_main_rank`.

Toolkit-agnostic: the config's ``default_scope`` (mmseg or mmpretrain) decides the registries.
Importing this module imports no toolkit; the functions import mmengine when called.
"""
import os
import os.path as osp
from typing import Optional

__all__ = ["DATA_HINTS", "load_config", "check_datasets", "init_cpu_process_group", "build_runner",
           "use_atomic_checkpoints", "is_main_rank", "default_work_dir", "setup_launcher_env"]

DATA_HINTS = {
    "ADE20KDataset": ("ADE20K (ADEChallengeData2016): download ADEChallengeData2016.zip from the MIT "
                      "Scene Parsing benchmark and unzip it so that {root}/images/training exists "
                      "(see mmsegmentation's docs/en/user_guides/2_dataset_prepare.md, 'ADE20K')."),
    "ImageNet": ("ImageNet-1k: place the train/ and val/ folders (and meta/train.txt, meta/val.txt) under "
                 "{root} (see mmpretrain's docs/en/user_guides/dataset_prepare.md, 'ImageNet')."),
}


def load_config(path: str, cfg_options: Optional[dict] = None):
    """``Config.fromfile`` with our ``rv_plugins::`` scope rule in place."""
    from mmengine.config import Config

    from rv_plugins.openmmlab import scope

    scope.patch_now()
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


def init_cpu_process_group(launcher: str) -> None:
    """CPU-only distributed runs (e.g. ``torch.distributed.run`` on a machine without a GPU).

    mmengine 0.10.7's ``pytorch`` launcher always calls ``torch.cuda.set_device`` and fails without a
    GPU; its Runner skips its own ``init_dist`` when a process group exists, so on a CPU-only machine we
    create the gloo group from torchrun's environment first (and :func:`build_runner` wraps the model in
    DDP without ``device_ids``, which CPU modules require). With a GPU nothing changes.
    """
    import torch
    import torch.distributed as dist

    if launcher != "pytorch" or torch.cuda.is_available() or dist.is_initialized():
        return
    dist.init_process_group(backend="gloo")


def build_runner(cfg):
    """mmengine's Runner (or the config's ``runner_type``), after our compatibility fixes."""
    import torch
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    from rv_plugins.openmmlab.checkpoints import allow_mmengine_checkpoints

    launcher = cfg.get("launcher", "none")
    init_cpu_process_group(launcher)
    if launcher != "none" and not torch.cuda.is_available():
        wrapper = cfg.get("model_wrapper_cfg") or dict(type="MMDistributedDataParallel")
        cfg.model_wrapper_cfg = dict(wrapper, device_ids=None)
    runner = Runner.from_cfg(cfg) if "runner_type" not in cfg else RUNNERS.build(cfg)
    allow_mmengine_checkpoints()  # torch >= 2.6 weights-only loading of mmengine's own checkpoints (resume)
    return runner


def use_atomic_checkpoints(cfg) -> bool:
    """Swap mmengine's plain ``CheckpointHook`` for ``AtomicCheckpointHook`` (same arguments; see
    ``rv_plugins.engine.hooks``): every config trained with our tools gets kill-safe checkpoints,
    resume from the newest complete one and a work-dir lock. Returns whether the hook is ours."""
    import rv_plugins.engine.hooks  # noqa: F401  (registers the hook)

    hooks = cfg.get("default_hooks")
    if hooks is None:
        cfg.default_hooks = hooks = {}
    ckpt = hooks.get("checkpoint", "missing")
    if ckpt == "missing":  # mmengine would add CheckpointHook(interval=1) by epoch
        hooks["checkpoint"] = ckpt = dict(type="CheckpointHook", interval=1)
    if ckpt is None:
        return False
    kind = ckpt.get("type")
    if kind in ("CheckpointHook", "mmengine.CheckpointHook"):
        ckpt["type"] = "AtomicCheckpointHook"
    return ckpt.get("type") == "AtomicCheckpointHook"


def is_main_rank() -> bool:
    """Rank 0 (or a single process), before any process group exists."""
    for var in ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK"):
        if var in os.environ:
            return int(os.environ[var]) == 0
    return True


def default_work_dir(config_path: str) -> str:
    return osp.join("work_dirs", osp.splitext(osp.basename(config_path))[0])


def setup_launcher_env(launcher: str, local_rank: int) -> None:
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(local_rank)
