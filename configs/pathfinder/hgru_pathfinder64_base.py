# hGRU on Pathfinder-64 (C-RBP paper, section 2.1, scaled to a CPU): the base of
# hgru_{bptt,cbptt,rbp,crbp}_pathfinder64.py, which change only model.backbone.mode.
#   python tools/train.py configs/pathfinder/hgru_crbp_pathfinder64.py
# Validation runs on the training length; the two longer lengths (the paper's 20 and 25 dashes,
# scaled like 14 -> `train_length`) are evaluated with the test loop:
#   python tools/test.py CONFIG CKPT --cfg-options test_dataloader.dataset.length=8
#   python tools/test.py CONFIG CKPT --cfg-options test_dataloader.dataset.length=10
# IoUMetric logs mIoU and, in its per-class table, the IoU of 'contour' (the target contour).
custom_imports = dict(imports=['rv_plugins.mmseg'], allow_failed_imports=False)
default_scope = 'mmseg'

image_size = 64
train_length = 6                        # paper lengths 14 / 20 / 25 dashes x 0.4 -> 6 / 8 / 10
test_lengths = (6, 8, 10)
steps = 10
model = dict(
    type='RecurrentSegmentor',
    data_preprocessor=dict(type='SegDataPreProcessor', mean=[0.0], std=[255.0], bgr_to_rgb=False,
                           pad_val=0, seg_pad_val=255, size_divisor=1),
    backbone=dict(type='PathfinderHGRU', in_channels=1, channels=25, kernel_size=7,
                  input_kernel_size=7, num_classes=2, mode='crbp', steps=steps,
                  lcp_lambda=0.9, lcp_weight=1.0,
                  input_scale=3.0,        # 1-px lines: stronger drive (see PathfinderHGRU)
                  target_prior=0.01),     # read-out starts at the ~1 % target frequency
    class_weight=[1.0, 2.0],
    test_steps=None)

train_pipeline = [dict(type='LoadPathfinderSample'), dict(type='PackSegInputs')]
test_pipeline = [dict(type='LoadPathfinderSample'), dict(type='PackSegInputs')]
dataset = dict(type='PathfinderSegDataset', image_size=image_size, num_distractors=2, channels=1)
train_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(dataset, num_samples=4000, length=train_length, seed=0, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(dataset, num_samples=64, length=train_length, seed=10000, pipeline=test_pipeline))
test_dataloader = dict(val_dataloader, dataset=dict(val_dataloader['dataset'], length=test_lengths[-1]))
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

max_iters = 150
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='Adam', lr=1e-2))
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=10, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=1),
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
