# Semantic FPN + Sequencer2D-S trained on procedural scenes (textured shapes, generated on the fly:
# no download). Inherits the ADE20K recipe and swaps only the data (and the number of classes):
#   python tools/train.py configs/fpn_sequencer2d_s_synthetic.py
# The decoder is narrowed and the schedule shortened so that a 2-core CPU finishes in minutes; BN
# replaces SyncBN in the head (one process).
_base_ = ['./fpn_sequencer2d_s_ade20k.py']

num_classes = 6
img_size = (64, 64)
model = dict(
    data_preprocessor=dict(size=img_size),
    neck=dict(out_channels=64),
    decode_head=dict(in_channels=[64, 64, 64, 64], channels=64, num_classes=num_classes,
                     norm_cfg=dict(type='BN', requires_grad=True)))

train_pipeline = [
    dict(type='LoadSyntheticScene'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
val_pipeline = [dict(type='LoadSyntheticScene'), dict(type='PackSegInputs')]
# Image files (MMSegInferencer, mmseg.apis.inference_model); the procedural test set renders its scenes in
# place of these file loaders (rv_plugins.mmseg.datasets.ProceduralSegDataset), as validation does.
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'), dict(type='PackSegInputs')]
dataset = dict(_delete_=True, type='SyntheticScenesDataset', img_size=img_size, num_classes=num_classes)
train_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(dataset, num_samples=4000, seed=0, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(dataset, num_samples=96, seed=12345, pipeline=val_pipeline))
test_dataloader = dict(val_dataloader, dataset=dict(val_dataloader['dataset'], pipeline=test_pipeline))

optim_wrapper = dict(optimizer=dict(lr=2e-3), clip_grad=dict(_delete_=True, max_norm=1.0))
max_iters = 250
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=30),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=30, end=max_iters, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
custom_imports = dict(imports=['rv_plugins.mmseg', 'rv_plugins.openmmlab.prepared_runner'], allow_failed_imports=False)
runner_type = 'PreparedRunner'  # resume choice + work-dir lock from any tools/train.py (see prepared_runner)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10, log_metric_by_epoch=False),
    # kill-safe: written atomically, the old one deleted after the new is complete (rv_plugins.engine.hooks)
    checkpoint=dict(type='AtomicCheckpointHook', by_epoch=False, interval=50, max_keep_ckpts=1),
    visualization=dict(type='SegVisualizationHook', draw=False))
