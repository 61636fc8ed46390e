"""Train a model from an mmengine config (mmsegmentation or mmpretrain: the config's default_scope decides).

    python tools/train.py configs/upernet_visiongru_ti_synthetic.py
    python tools/train.py rv_plugins::upernet_visiongru_ti_synthetic.py      # a config shipped with the package
    python tools/train.py CONFIG --work-dir DIR --resume [CKPT] --amp --cfg-options k=v ...
    python -m torch.distributed.run --nproc_per_node 8 tools/train.py CONFIG --launcher pytorch
    srun ... python tools/train.py CONFIG --launcher slurm

Every run is built as rv_plugins' PreparedRunner (rv_plugins.openmmlab.prepared_runner): kill-safe
checkpoints, --resume from the newest usable checkpoint, one training run per work dir. Multi-GPU and
multi-node runs go through mmengine's distributed runner. --amp: float16 with loss scaling on a GPU
(mmengine's AmpOptimWrapper), bfloat16 autocast on a CPU.
"""
import argparse
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(_ROOT, "rv_plugins")):
    sys.path.insert(0, _ROOT)  # run from a checkout

from mmengine.config import DictAction  # noqa: E402

from rv_plugins.openmmlab import runner as mr  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="config file, or rv_plugins::<name>.py")
    p.add_argument("--work-dir", help="where logs and checkpoints go (default: work_dirs/<config name>)")
    p.add_argument("--resume", nargs="?", type=str, const="auto",
                   help="resume from CKPT, or from the newest usable checkpoint in the work dir if no path is given")
    p.add_argument("--amp", action="store_true",
                   help="mixed precision: float16 + loss scaling on a GPU, bfloat16 autocast on a CPU")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, help="override config keys: key=value ...")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    p.add_argument("--local_rank", "--local-rank", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    mr.setup_launcher_env(args.launcher, args.local_rank)
    cfg = mr.load_config(args.config, args.cfg_options)
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or cfg.get("work_dir") or mr.default_work_dir(args.config)
    if args.resume == "auto":
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    try:
        if args.amp:
            from rv_plugins.openmmlab.amp import use_amp
            use_amp(cfg.optim_wrapper)
        mr.check_datasets(cfg, ("train_dataloader", "val_dataloader"))
        runner = mr.build_runner(cfg)
        return runner.train()
    except mr.RUN_ERRORS as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
