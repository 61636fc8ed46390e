# The main job, anywhere: UperNet + VisionGRU-Ti trained on procedural scenes (textured shapes of five
# classes on textured backgrounds, generated on the fly: no download). Runs on a CPU in minutes:
#   python tools/train.py configs/upernet_visiongru_ti_synthetic.py
# Inherits the ADE20K recipe and swaps the data; the decoder is narrowed and the schedule shortened
# so that a 2-core CPU finishes, and BN replaces SyncBN (one process).
_base_ = ['./upernet_visiongru_ti_ade20k.py']

num_classes = 6
img_size = (64, 64)
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    data_preprocessor=dict(size=img_size),
    backbone=dict(img_size=img_size[0], drop_path_rate=0.0, init_cfg=None),  # from scratch: no ImageNet weights
    decode_head=dict(channels=64, num_classes=num_classes, norm_cfg=norm_cfg),
    auxiliary_head=dict(channels=32, num_classes=num_classes, norm_cfg=norm_cfg))

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

optim_wrapper = dict(optimizer=dict(lr=2e-3, weight_decay=0.01), clip_grad=dict(max_norm=1.0))
max_iters = 800
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=50, end=max_iters, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
custom_imports = dict(imports=['rv_plugins.mmseg', 'rv_plugins.openmmlab.prepared_runner'], allow_failed_imports=False)
runner_type = 'PreparedRunner'  # resume choice + work-dir lock from any tools/train.py (see prepared_runner)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10, log_metric_by_epoch=False),
    # kill-safe: written atomically, the old one deleted after the new is complete (rv_plugins.engine.hooks)
    checkpoint=dict(type='AtomicCheckpointHook', by_epoch=False, interval=100, max_keep_ckpts=1),
    visualization=dict(type='SegVisualizationHook', draw=False))
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
