# VisionGRU-B on ImageNet-1k: the Ti recipe with the base arch (no authors' weights exist for B; its
# checkpoints are what configs/upernet_visiongru_b_ade20k.py starts from).
_base_ = ['./visiongru_ti_in1k.py']

model = dict(backbone=dict(arch='base', drop_path_rate=0.3), head=dict(in_channels=832))
