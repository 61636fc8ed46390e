# VisionGRU-Ti on ImageNet-1k, the paper's DeiT recipe: AdamW (lr 1e-3 x batch/1024, weight decay 0.05),
# cosine schedule with warm-up, 300 epochs, EMA 0.9999, DeiT augmentations (RandAugment, random erasing,
# Mixup 0.8, CutMix 1.0, label smoothing 0.1). 8 GPUs x 128 images = 1024.
#   python -m torch.distributed.run --nproc_per_node 8 tools/train.py configs/visiongru_ti_in1k.py --launcher pytorch
# preset='released' is the authors' released model (minGRU candidate through g, no positional embedding);
# preset='paper' the paper's text (linear candidate, a 56x56 positional embedding for img_size=224).
# Evaluate the authors' released weights with this config (mmpretrain keys: backbone.*, head.fc.*):
#   python tools/convert_visiongru_checkpoint.py their_visiongru_ti.pth checkpoints/visiongru_ti_released_mmpretrain.pth --format mmpretrain
#   python tools/test.py configs/visiongru_ti_in1k.py checkpoints/visiongru_ti_released_mmpretrain.pth
# Fine-tune from them or from one of ours: --cfg-options load_from=PATH (the whole classifier), or the
# backbone only: model = dict(backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=PATH))) in a derived config.
# A checkpoint of this config is what configs/upernet_visiongru_ti_ade20k.py starts from (`pretrained`).
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
]
custom_imports = dict(imports=['rv_plugins.mmpretrain'], allow_failed_imports=False)
default_scope = 'mmpretrain'

model = dict(
    type='ImageClassifier',
    backbone=dict(type='VisionGRU', arch='tiny', preset='released', img_size=224, out_indices=(3,),
                  drop_path_rate=0.1),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=576,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        init_cfg=[dict(type='TruncNormal', layer='Linear', std=0.02)]),
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]))

train_dataloader = dict(batch_size=128)
optim_wrapper = dict(
    optimizer=dict(lr=1e-3),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0, custom_keys={'.pos_embed': dict(decay_mult=0.0)}))
custom_hooks = [dict(type='EMAHook', momentum=1e-4, priority='ABOVE_NORMAL')]
auto_scale_lr = dict(base_batch_size=1024)
