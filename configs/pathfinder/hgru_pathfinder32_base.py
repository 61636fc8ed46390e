# hGRU on Pathfinder-32 (C-RBP paper, section 2.1, scaled to a CPU): the base of
# hgru_{bptt,cbptt,rbp,crbp}_pathfinder32.py, which change only model.backbone.mode.
#   python tools/train.py configs/pathfinder/hgru_crbp_pathfinder32.py
# Validation runs on the training length; the two longer lengths (the paper's 20 and 25 dashes,
# scaled like 14 -> `train_length`) are evaluated with the test loop:
#   python tools/test.py CONFIG CKPT --cfg-options test_dataloader.dataset.length=6
#   python tools/test.py CONFIG CKPT --cfg-options test_dataloader.dataset.length=8
# IoUMetric logs mIoU and, in its per-class table, the IoU of 'contour' (the target contour).
# tools/train_pathfinder.py runs this config (flags -> cfg keys: its cfg_options) and writes the report
# behind the table of docs/pathfinder.md; the table's command
#   PYTHONPATH=. python tools/train_pathfinder.py --mode crbp --image-size 32 --length-scale 0.3 \
#       --kernel-size 5 --steps 8 --batch-size 16 --iters 2500 --lr 3e-3 --lr-schedule cosine \
#       --input-scale 3 --target-prior 0.02     (its defaults: --lcp-reduction mean --lcp-weight 10)
# is this recipe with the training images in order (train_dataloader.sampler.shuffle=False; here they
# are shuffled) and no validation loop (tests/test_pathfinder.py pins the difference).
custom_imports = dict(imports=['rv_plugins.mmseg', 'rv_plugins.openmmlab.prepared_runner'], allow_failed_imports=False)
runner_type = 'PreparedRunner'  # resume choice + work-dir lock from any tools/train.py (see prepared_runner)
default_scope = 'mmseg'

image_size = 32
train_length = 4                        # paper lengths 14 / 20 / 25 dashes x 0.3 -> 4 / 6 / 8
test_lengths = (4, 6, 8)
steps = 8
max_iters = 2500                        # ~25 min on one CPU thread
model = dict(
    type='RecurrentSegmentor',
    data_preprocessor=dict(type='SegDataPreProcessor', mean=[0.0], std=[255.0], bgr_to_rgb=False,
                           pad_val=0, seg_pad_val=255, size_divisor=1),
    backbone=dict(type='PathfinderHGRU', in_channels=1, channels=25, kernel_size=5,
                  input_kernel_size=7, num_classes=2, mode='crbp', steps=steps,
                  # the authors' Pathfinder penalty: `penalty.mean() * 10` with lambda 0.9
                  # (github.com/c-rbp/pathfinder_experiments, mainclean.py); the summed penalty
                  # (their COCO choice) would be ~40,000x stronger on a 16x25x32x32 state
                  lcp_lambda=0.9, lcp_weight=10.0, lcp_reduction='mean',
                  input_scale=3.0,        # 1-px lines: stronger drive (see PathfinderHGRU)
                  target_prior=0.02,      # read-out starts at the ~2 % target frequency
                  # gate biases log U(1, 7), the authors' documented intent; 'uniform' = U(1, 7), what
                  # their code runs (models/hgrucleanSEG.py: `.log()` not in place)
                  gate_bias_rule='log_uniform'),
    class_weight=None,
    test_steps=None)

train_pipeline = [dict(type='LoadPathfinderSample'), dict(type='PackSegInputs')]
val_pipeline = [dict(type='LoadPathfinderSample'), dict(type='PackSegInputs')]
# Grey image files (MMSegInferencer, mmseg.apis.inference_model); the procedural test set renders its samples
# in place of these file loaders (rv_plugins.mmseg.datasets.ProceduralSegDataset), as validation does.
test_pipeline = [dict(type='LoadImageFromFile', color_type='grayscale'), dict(type='LoadAnnotations'),
                 dict(type='PackSegInputs')]
dataset = dict(type='PathfinderSegDataset', image_size=image_size, num_distractors=2, channels=1)
train_dataloader = dict(
    batch_size=16, num_workers=0, persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(dataset, num_samples=max_iters * 16, length=train_length, seed=0, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=16, num_workers=0, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(dataset, num_samples=128, length=train_length, seed=10000, pipeline=val_pipeline))
test_dataloader = dict(val_dataloader, dataset=dict(val_dataloader['dataset'], length=test_lengths[-1],
                                                     pipeline=test_pipeline))
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='Adam', lr=3e-3))
param_scheduler = [dict(type='CosineAnnealingLR', T_max=max_iters, eta_min=0.0, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=500)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    # kill-safe: written atomically, the old one deleted after the new is complete (rv_plugins.engine.hooks)
    checkpoint=dict(type='AtomicCheckpointHook', by_epoch=False, interval=250, max_keep_ckpts=1),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook', draw=False))
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='gloo'))
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='SegLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(by_epoch=False)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0)
