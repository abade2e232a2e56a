"""Benchmark of folder evaluation (PSNR/SSIM on the Y channel, as psnr_ssim.py and test.py --hr_dir run it).

Writes N pairs of PNG images (smooth face-sized pictures and noisy copies) to a temporary folder
and times ``evaluate_folders`` with 1 and more reader/metric threads, printing images/s:

    python bench/bench_metrics.py                      # 1000 pairs of 128x128, threads 1, 2, 4
    python bench/bench_metrics.py --count 200 --workers 1 8
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.evaluation.folder_eval import evaluate_folders  # noqa: E402  (needs the repository root on sys.path)
from utils.image_io import write_rgb  # noqa: E402


def make_pairs(root, count, size, seed=0):
    """``count`` GT/SR PNG pairs of ``size`` x ``size`` in root/gt and root/sr; returns the two folders.

    GT: a bicubic-upsampled random 16x16 picture shifted per image (smooth like an upsampled face);
    SR: GT plus Gaussian noise (sigma 8), so PSNR is finite and SSIM below 1.
    """
    gt_dir, sr_dir = root / "gt", root / "sr"
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), (size, size), interpolation=cv2.INTER_CUBIC)
    for i in range(count):
        gt = np.roll(base, i, axis=1)
        sr = np.clip(gt + rng.normal(0, 8, gt.shape), 0, 255).astype(np.uint8)
        write_rgb(gt_dir / f"{i:05d}.png", gt, "benchmark image")
        write_rgb(sr_dir / f"{i:05d}.png", sr, "benchmark image")
    return gt_dir, sr_dir


def time_evaluation(gt_dir, sr_dir, workers, repeat):
    """(best wall seconds, its CPU seconds, summary) of ``repeat`` runs with ``workers`` threads."""
    best = None
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        _, summary = evaluate_folders(gt_dir, sr_dir, workers=workers, progress=False)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if best is None or wall < best[0]:
            best = (wall, cpu, summary)
    return best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=1000, help="image pairs")
    p.add_argument("--size", type=int, default=128, help="image side in pixels")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="thread counts to time")
    p.add_argument("--repeat", type=int, default=1, help="runs per thread count; the fastest is shown")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_metrics_") as tmp:
        start = time.perf_counter()
        gt_dir, sr_dir = make_pairs(Path(tmp), args.count, args.size)
        print(f"{args.count} pairs of {args.size}x{args.size} PNG written in {time.perf_counter() - start:.1f} s; "
              f"{os.cpu_count()} CPU core(s); PSNR/SSIM on Y (truncate), SSIM Gaussian 11x11")
        print(f"{'threads':>7}  {'wall s':>7}  {'CPU s':>7}  {'images/s':>9}  {'PSNR':>8}  {'SSIM':>7}")
        for workers in args.workers:
            wall, cpu, summary = time_evaluation(gt_dir, sr_dir, workers, args.repeat)
            print(f"{workers:>7}  {wall:>7.2f}  {cpu:>7.2f}  {summary['count'] / wall:>9.1f}  "
                  f"{summary['psnr']:>8.4f}  {summary['ssim']:>7.4f}")


if __name__ == "__main__":
    main()
