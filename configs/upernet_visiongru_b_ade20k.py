# UperNet + VisionGRU-B on ADE20K, 512x512, 160k iterations: the Ti config with the base arch.
_base_ = ['./upernet_visiongru_ti_ade20k.py']

embed_dims = [104, 208, 416, 832]
model = dict(
    backbone=dict(arch='base', drop_path_rate=0.3),
    decode_head=dict(in_channels=embed_dims),
    auxiliary_head=dict(in_channels=embed_dims[2]))
