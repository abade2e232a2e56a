#!/usr/bin/env bash
# What a CUDA machine adds to `make test`, in one run of about 15 minutes, most telling first:
#   the CUDA tests (the triton scans, plain and fused Image-SSM, against the float64 oracles, bf16, the
#   network compiled; the triton kernels' register reports), the training benchmark (seed command at
#   batch 32 bf16: triton, triton + --compile, torch), the activation memory of the seed's command (fused
#   against unfused, bench_memory.py), the scan benchmark (torch / triton / cuda at the stage shapes,
#   B = 8 and 32), the fused Image-SSM scan against the unfused triton path (stage shapes, B = 32, bf16),
#   a short bf16 training run of the seed's command on real CelebA faces (validation, checkpoints,
#   resume), test.py with PSNR/SSIM/LPIPS on its output, and the whole test suite.
# Usage: bash bench/gpu_check.sh OUT_DIR [SHARED_DIR]
#   SHARED_DIR holds data/celeba_align/{train,val} and weights/alexnet_imagenet_features.pth
#   (default ../shared). Logs go to OUT_DIR/logs.tar.gz; a summary is printed.
#   BUDGET=seconds (default 720) bounds the whole run: later steps shrink or are skipped.
set -u
OUT_DIR=$(realpath -m "${1:?usage: bash bench/gpu_check.sh OUT_DIR [SHARED_DIR]}")
SHARED=$(realpath "${2:-../shared}")
PY=${PYTHON:-python3}
WORK=$(mktemp -d)
LOGS=$WORK/logs
mkdir -p "$OUT_DIR" "$LOGS"
export PYTHONUNBUFFERED=1 HYBRIMAMBA_SHARED=$SHARED
END=$((SECONDS + ${BUDGET:-720}))

# step NAME SECONDS CMD...: run with a time limit, log to logs/NAME.log, print its status and tail.
step() {
    local name=$1 limit=$2 start=$SECONDS left=$((END - SECONDS - 15))
    shift 2
    ((left < limit)) && limit=$left
    if ((limit < 10)); then echo "== $name: skipped, out of time"; return; fi
    echo "== $name (limit $limit s)"
    timeout "$limit" "$@" >"$LOGS/$name.log" 2>&1
    echo "   exit $? after $((SECONDS - start)) s"
    tr '\r' '\n' <"$LOGS/$name.log" | grep -v '^ *$' | tail -n "${TAIL:-6}" | cut -c1-200 | sed 's/^/   /'
}

step env 60 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader;
    $PY -c 'import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())'"
step cuda_tests 240 $PY -m pytest -v -rs -k "cuda or gpu" tests/test_selective_scan.py tests/test_triton_scan.py \
    tests/test_network.py tests/test_lpips.py
# The targets: batch 32 bf16 at >= 100 images/s in <= 25 GB. (torch fp32 at batch 32 needs about 80 GB.)
TAIL=12 step bench_train 240 bash -c "$PY bench/bench_train.py --backends triton --batches 32 --amp bf16 --steps 3 --case_timeout 90;
    $PY bench/bench_train.py --backends triton --batches 32 --amp bf16 --steps 3 --compile --case_timeout 150;
    $PY bench/bench_train.py --backends torch --batches 8 32 --amp bf16 --steps 2 --case_timeout 60"
# What the seed's command keeps per image and its step's peak, fused against unfused (target: <= 24 GB fused).
TAIL=34 step bench_memory 200 $PY bench/bench_memory.py --amp bf16 --batch 32 --train_step
TAIL=16 step bench_scan 150 $PY bench/bench_scan.py --device cuda --repeats 1
TAIL=8 step bench_image_scan 90 $PY bench/bench_image_scan.py --device cuda --batch 32 --amp bf16 --repeats 2
step prepare 60 bash -c "$PY -m data.prepare_celeba --src '$SHARED/data/celeba_align/train' --out '$WORK/train' &&
    $PY -m data.prepare_celeba --src '$SHARED/data/celeba_align/val' --out '$WORK/val' --make_test_lr"

# The seed's training command on one GPU with bf16 autocast, stopped early; then resumed.
TRAIN=(train.py --gpus 1 --name gpu-bf16 --model Mamba --Gnorm bn --lr 0.0004 --beta1 0.9 --scale_factor 8
       --load_size 128 --dataroot "$WORK/train" --dataset_name celeba --batch_size 32 --total_epochs 100
       --visual_freq 10 --print_freq 10 --save_latest_freq 10 --amp bf16 --num_threads 8
       --val_dataroot "$WORK/val/HR" --val_freq 20 --checkpoints_dir "$WORK/check_points" --ckpt_dir "$WORK/ckpt")
step train 120 $PY "${TRAIN[@]}" --max_iters 20
step resume 60 $PY "${TRAIN[@]}" --max_iters 24 --continue_train
step test 60 $PY test.py --gpus 1 --model Mamba --name Mamba-SRx8 --load_size 128 --dataset_name single \
    --dataroot "$WORK/val/LR" --pretrain_model_path "$WORK/ckpt/gpu-bf16/latest.pt" --save_as_dir "$WORK/result" \
    --hr_dir "$WORK/val/HR" --lpips --backbone_weights "$SHARED/weights/alexnet_imagenet_features.pth"
step psnr_ssim_bicubic 30 $PY psnr_ssim.py "$WORK/val/HR" "$WORK/val/LR_bicubic"
# The whole suite, failures named as they happen (-v): on a CUDA machine some paths differ.
# pytest-xdist and pytest-timeout are not in requirements.txt: used when installed.
PARALLEL=$($PY -c 'import xdist' 2>/dev/null && echo "-n 8")
PER_TEST=$($PY -c 'import pytest_timeout' 2>/dev/null && echo "--timeout 150")
TAIL=15 step pytest 300 bash -c "$PY -m pytest -v $PARALLEL $PER_TEST 2>&1 | tee '$LOGS/pytest_full.log' |
    grep -E 'FAILED|ERROR|passed|failed'"

cp -r "$WORK/check_points" "$LOGS/" 2>/dev/null
tar -czf "$OUT_DIR/logs.tar.gz" -C "$WORK" logs
echo "logs: $OUT_DIR/logs.tar.gz"
