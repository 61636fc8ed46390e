# Sequencer2D-S (LSTM) on ImageNet-1k with the paper's recipe (Sec. 4.1 and the authors' README):
# AdamW, lr = 5e-4 x batch/512 (batch 2048 = 8 GPUs x 256 -> lr 0.002), weight decay 0.05 (none
# on norms and biases), 300 epochs, cosine with 20 warm-up epochs from 1e-6, stochastic depth 0.1,
# label smoothing 0.1, Mixup 0.8, CutMix 1.0, RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25.
#   python -m torch.distributed.run --nproc_per_node 8 tools/train.py configs/sequencer2d_s_in1k.py --launcher pytorch
# Other rnn_type values ('gru', 'rnn': the paper's Table 2e; 'mingru': ours) swap the token mixer's RNN.
# timm's sequencer2d_s weights: keys are ours (classifier head.fc.*); to reproduce timm's logits at sizes
# that are not multiples of 14, set model.backbone.grid_rounding='floor' (timm drops the border).
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
]
custom_imports = dict(imports=['rv_plugins.mmpretrain'], allow_failed_imports=False)
default_scope = 'mmpretrain'

batch_size, num_gpus = 256, 8
lr = 5e-4 * batch_size * num_gpus / 512
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='Sequencer2D',
        arch='s',
        rnn_type='lstm',
        out_indices=(3,),
        final_norm=True,  # the classifier's LayerNorm, before the token mean
        drop_path_rate=0.1,
        init_cfg=None),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=384,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        init_cfg=dict(type='Constant', layer='Linear', val=0.0)),  # the authors zero the classifier
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]))

train_dataloader = dict(batch_size=batch_size)
optim_wrapper = dict(optimizer=dict(lr=lr, weight_decay=0.05))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6 / lr, by_epoch=True, end=20, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True, begin=20),
]
train_cfg = dict(by_epoch=True, max_epochs=300, val_interval=1)
auto_scale_lr = dict(base_batch_size=batch_size * num_gpus)
