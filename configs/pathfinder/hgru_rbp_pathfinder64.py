# hGRU on Pathfinder-64 trained with mode 'rbp' (see hgru_pathfinder64_base.py).
#   python tools/train.py configs/pathfinder/hgru_rbp_pathfinder64.py
_base_ = ['./hgru_pathfinder64_base.py']
model = dict(backbone=dict(mode='rbp'))
