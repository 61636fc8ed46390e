# Semantic FPN + Sequencer2D-L on ADE20K, 512x512 crops (the paper's Table 3, 58M parameters): the S
# recipe (see fpn_sequencer2d_s_ade20k.py) with the L arch.
#   python -m torch.distributed.run --nproc_per_node 8 tools/train.py configs/fpn_sequencer2d_l_ade20k.py --launcher pytorch
_base_ = ['./fpn_sequencer2d_s_ade20k.py']

model = dict(backbone=dict(arch='l'))
