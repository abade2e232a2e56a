#!/usr/bin/env bash
# Super-resolve the Helen and CelebA LR test faces with a trained HybriMamba (see `python test.py --help`).
# Each input (16x16 LR, or any size) is bicubic-resized to 128x128 and written as <stem>.png to the
# output folder. Score the results with `python psnr_ssim.py HR_DIR OUT_DIR` and `python calc_lpips.py
# HR_DIR OUT_DIR`, or add `--hr_dir HR_DIR` below to score them right away (metrics.csv/json in OUT_DIR).
# Edit the paths here or set them in the environment.
set -e

HELEN_LR=${HELEN_LR:-/path/to/Helen/LR}
CELEBA_LR=${CELEBA_LR:-/path/to/CelebA/celeba_test/LR}
# Written by train.py (the authors' demo file was ./ckpt/latest_demo_model.pt). Without it, the small
# 8x model that ships with the project (pretrained/README.md; not the paper's model) is used.
TRAINED=./ckpt/Mamba-SRx8/latest.pt
# models/pretrained.py's SHIPPED_MODEL (tests/test_pretrained.py checks that they agree)
SHIPPED=./pretrained/HybriMamba-tiny-x8.safetensors
if [ -z "${CKPT:-}" ]; then
    if [ -f "$TRAINED" ]; then CKPT=$TRAINED; else CKPT=$SHIPPED; fi
    echo "test.sh: using $CKPT (set CKPT=... to choose another checkpoint)"
fi
HELEN_OUT=${HELEN_OUT:-result/Mamba-helen}
CELEBA_OUT=${CELEBA_OUT:-result/Mamba-celeba}
# The GPU to use (the seed's script used 4); an empty value hides every GPU and test.py runs on the CPU.
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-0}

# Testing on Helen
python test.py --gpus 1 --model Mamba --name Mamba-SRx8 \
    --load_size 128 --dataset_name single --dataroot "$HELEN_LR" \
    --pretrain_model_path "$CKPT" \
    --save_as_dir "$HELEN_OUT"

# Testing on CelebA
python test.py --gpus 1 --model Mamba --name Mamba-SRx8 \
    --load_size 128 --dataset_name single --dataroot "$CELEBA_LR" \
    --pretrain_model_path "$CKPT" \
    --save_as_dir "$CELEBA_OUT"
