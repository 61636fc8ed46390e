# UperNet + VisionGRU-Ti on ADE20K, 512x512, 160k iterations (8 GPUs x 2 images), Swin's AdamW recipe,
# fine-tuned from ImageNet weights as in the paper (its 44.7 mIoU starts from the authors' ImageNet model).
#   python tools/train.py configs/upernet_visiongru_ti_ade20k.py            (data in data/ade/ADEChallengeData2016)
#   python -m torch.distributed.run --nproc_per_node 8 tools/train.py configs/upernet_visiongru_ti_ade20k.py --launcher pytorch
#
# ImageNet weights: `pretrained` below (the backbone loads it when training starts; a missing file stops
# the run with its path). Either
#   a) the authors' released VisionGRU-Ti (82.0% top-1), converted once:
#        python tools/convert_visiongru_checkpoint.py their_visiongru_ti.pth checkpoints/visiongru_ti_released.pth
#      it needs the backbone's preset='released' (minGRU candidate through g, no positional embedding), or
#   b) one of ours, e.g. work_dirs/visiongru_ti_in1k/iter_*.pth or epoch_300.pth from configs/visiongru_ti_in1k.py
#      (mmpretrain's keys backbone.* / head.fc.*; prefix='backbone.' picks the backbone). Use the preset it was
#      trained with; a 'paper' positional embedding trained at 224 is resized bicubically to 512.
#      --cfg-options model.backbone.init_cfg.checkpoint=work_dirs/visiongru_ti_in1k/epoch_300.pth
# From scratch instead: --cfg-options model.backbone.init_cfg=None
# The log shows one line "VisionGRU: loaded N/N tensors from ...: resized ..., missing ..., unexpected ...";
# a checkpoint that matches no backbone tensor is an error, never a silent random start.
_base_ = [
    'mmseg::_base_/models/upernet_swin.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]
custom_imports = dict(imports=['rv_plugins.mmseg'], allow_failed_imports=False)
default_scope = 'mmseg'

crop_size = (512, 512)
pretrained = 'checkpoints/visiongru_ti_released.pth'
embed_dims = [72, 144, 288, 576]
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        _delete_=True,
        type='VisionGRU',
        arch='tiny',
        preset='released',  # the authors' released model, what their weights need; 'paper' = the paper's text
        img_size=crop_size[0],  # sizes the positional embedding of preset='paper' (none with 'released')
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        with_cp=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    decode_head=dict(in_channels=embed_dims, num_classes=150),
    auxiliary_head=dict(in_channels=embed_dims[2], num_classes=150))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={'pos_embed': dict(decay_mult=0.), 'norm': dict(decay_mult=0.)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
