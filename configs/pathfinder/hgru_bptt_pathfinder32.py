# hGRU on Pathfinder-32 trained with mode 'bptt' (see hgru_pathfinder32_base.py).
#   python tools/train.py configs/pathfinder/hgru_bptt_pathfinder32.py
_base_ = ['./hgru_pathfinder32_base.py']
model = dict(backbone=dict(mode='bptt'))
