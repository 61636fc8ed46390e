# Sequencer2D-M (LSTM) on ImageNet-1k: the S recipe (see sequencer2d_s_in1k.py) with the M arch,
# stochastic depth 0.2 and 8 GPUs x 192 images (lr = 5e-4 x batch/512).
#   python -m torch.distributed.run --nproc_per_node 8 tools/train.py configs/sequencer2d_m_in1k.py --launcher pytorch
_base_ = ['./sequencer2d_s_in1k.py']

batch_size, num_gpus = 192, 8
lr = 5e-4 * batch_size * num_gpus / 512
model = dict(backbone=dict(arch='m', drop_path_rate=0.2))
train_dataloader = dict(batch_size=batch_size)
optim_wrapper = dict(optimizer=dict(lr=lr))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6 / lr, by_epoch=True, end=20, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True, begin=20),
]
auto_scale_lr = dict(base_batch_size=batch_size * num_gpus)
