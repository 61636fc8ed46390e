# UperNet + VisionGRU-B on ADE20K, 512x512, 160k iterations: the Ti config with the base arch.
# The authors released no VisionGRU-B weights: `pretrained` is one of ours, trained with
# configs/visiongru_b_in1k.py (see the Ti config for the options and what the log reports).
_base_ = ['./upernet_visiongru_ti_ade20k.py']

pretrained = 'work_dirs/visiongru_b_in1k/epoch_300.pth'

embed_dims = [104, 208, 416, 832]
model = dict(
    backbone=dict(arch='base', drop_path_rate=0.3, init_cfg=dict(checkpoint=pretrained)),
    decode_head=dict(in_channels=embed_dims),
    auxiliary_head=dict(in_channels=embed_dims[2]))
