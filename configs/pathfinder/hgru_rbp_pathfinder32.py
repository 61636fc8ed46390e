# hGRU on Pathfinder-32 trained with mode 'rbp' (see hgru_pathfinder32_base.py).
#   python tools/train.py configs/pathfinder/hgru_rbp_pathfinder32.py
_base_ = ['./hgru_pathfinder32_base.py']
model = dict(backbone=dict(mode='rbp'))
