#!/usr/bin/env bash
# Train HybriMamba for 8x face SR on CelebA with the paper's protocol (see `python train.py --help`).
# Logs, options, TensorBoard (tb/) and image grids (visuals/) go to check_points/$NAME/;
# checkpoints (latest.pt every 500 iterations, iter_<N>.pt every 5000, best.pt with
# --val_dataroot) go to ckpt/$NAME/. Resume exactly with --continue_train.
# `kill <pid>` (SIGTERM) stops after the current iteration, with latest.pt written (exit status 3);
# nohup.out gets a plain progress line every --print_freq iterations instead of a progress bar.

# A folder of 128x128 HR faces, e.g. made by `python -m data.prepare_celeba`.
DATAROOT=/path/to/CelebA/celeba_train
NAME=Mamba-SRx8
# DataParallel over these GPUs (--gpus is how many of them to use; --batch_size is the whole batch).
export CUDA_VISIBLE_DEVICES=0,1,2

nohup python train.py --gpus 3 --name "$NAME" --model Mamba \
    --Gnorm "bn" --lr 0.0004 --beta1 0.9 --scale_factor 8 --load_size 128 \
    --dataroot "$DATAROOT" --dataset_name celeba \
    --batch_size 32 --total_epochs 100 --visual_freq 100 --print_freq 10 \
    --save_latest_freq 500 &
    # --continue_train

# DistributedDataParallel with torchrun: one process per GPU, --batch_size is per process
# (3 x 11 ~ the paper's 32); only rank 0 logs and writes checkpoints.
# Single node, 3 GPUs:
#   torchrun --standalone --nproc_per_node 3 train.py --name "$NAME" --lr 0.0004 --beta1 0.9 \
#       --scale_factor 8 --load_size 128 --dataroot "$DATAROOT" --dataset_name celeba \
#       --batch_size 11 --total_epochs 100 --visual_freq 100 --print_freq 10 --save_latest_freq 500
# Two nodes with 4 GPUs each (run on both; NODE_RANK 0 and 1, MASTER_HOST = node 0's address):
#   torchrun --nnodes 2 --node_rank "$NODE_RANK" --nproc_per_node 4 \
#       --rdzv_backend c10d --rdzv_endpoint "$MASTER_HOST:29500" train.py --name "$NAME" \
#       --dataroot "$DATAROOT" --batch_size 4 --total_epochs 100
# CPU only (gloo): add --gpus 0.
