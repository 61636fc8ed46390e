# hGRU on Pathfinder-64 trained with mode 'crbp' (see hgru_pathfinder64_base.py).
#   python tools/train.py configs/pathfinder/hgru_crbp_pathfinder64.py
_base_ = ['./hgru_pathfinder64_base.py']
model = dict(backbone=dict(mode='crbp'))
