# Semantic FPN + Sequencer2D-M on ADE20K, 512x512 crops (the paper's Table 3, 42M parameters): the S
# recipe (see fpn_sequencer2d_s_ade20k.py) with the M arch.
#   python -m torch.distributed.run --nproc_per_node 8 tools/train.py configs/fpn_sequencer2d_m_ade20k.py --launcher pytorch
_base_ = ['./fpn_sequencer2d_s_ade20k.py']

model = dict(backbone=dict(arch='m'))
