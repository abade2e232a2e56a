"""Evaluate an SR folder against a ground-truth folder: pairing, parallel metrics, CSV.

Shared by psnr_ssim.py, calc_lpips.py, test.py --hr_dir and ``python -m utils.evaluation.results_table``.
Pairs are read and scored by a thread pool (OpenCV decoding and filtering release the GIL);
LPIPS runs batched in the calling thread on images of equal size.
"""
import csv
import io
import math
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from utils.errors import UserError, first_few
from utils.evaluation.metrics import SSIM_RADIUS, evaluate_pair
from utils.image_io import pair_by_stem, read_rgb
from utils.output_files import check_output_file, write_output
from utils.progress import progress_bar
from utils.y_conventions import CONVENTIONS, DEFAULT_Y_CONVENTION, metric_tag

# "convention" (e.g. "Y truncate") sits beside every per-image PSNR/SSIM pair
CSV_FIELDS = ("name", "gt", "sr", "psnr", "ssim", "convention", "lpips")
CSV_PURPOSE = "per-image metrics CSV"  # what utils.output_files records for psnr_ssim.py's, calc_lpips.py's, test.py's


def default_workers():
    return max(1, min(8, os.cpu_count() or 1))


def _ordered_map(fn, items, workers):
    """``map(fn, items)`` on a thread pool, in order, with a bounded number of pending results."""
    if workers <= 1:
        yield from map(fn, items)
        return
    items = iter(items)
    window = 4 * workers
    with ThreadPoolExecutor(workers) as pool:
        pending = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()


def is_gray(img):
    """Whether the RGB image ``img`` has three equal channels."""
    return bool((img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all())


def _pair_scorer(psnr_ssim, keep_pixels, convention, crop_border, rgb):
    """A function (stem, gt_path, sr_path) -> (row, (gt, sr) arrays or None, whether the SR is grayscale and
    the GT in colour), raising ``UserError``s."""
    min_side = 2 * SSIM_RADIUS + 1 + 2 * crop_border

    def score(pair):
        stem, gt_path, sr_path = pair
        gt, sr = read_rgb(gt_path), read_rgb(sr_path)
        if gt.shape != sr.shape:
            raise UserError(f"size mismatch for '{stem}': {gt_path} is {gt.shape[1]}x{gt.shape[0]}, "
                            f"{sr_path} is {sr.shape[1]}x{sr.shape[0]}; compare images of the same size")
        row = {"name": stem, "gt": Path(gt_path).name, "sr": Path(sr_path).name}
        if psnr_ssim:
            if min(gt.shape[:2]) < min_side:
                raise UserError(f"{gt_path}: {gt.shape[1]}x{gt.shape[0]} is too small for the 11x11 SSIM window "
                                f"after crop_border {crop_border}; use larger images or a smaller --crop_border")
            row["psnr"], row["ssim"] = evaluate_pair(gt, sr, convention, crop_border, rgb)
            row["convention"] = metric_tag(convention, rgb)
        return row, ((gt, sr) if keep_pixels else None), is_gray(sr) and not is_gray(gt)

    return score


def _mean(rows, key):
    """The mean of ``key`` over the rows where it is finite (identical images have an infinite PSNR)."""
    values = [r[key] for r in rows if key in r and math.isfinite(r[key])]
    return float(np.mean(values)) if values else None


def evaluate_folders(gt_dir, sr_dir, *, psnr_ssim=True, convention=DEFAULT_Y_CONVENTION, crop_border=0, rgb=False,
                     lpips_model=None, lpips_batch_size=16, allow_missing=False, workers=None, progress=True):
    """Score every SR image against the GT image of the same file stem.

    Returns ``(rows, summary)``: rows are dicts ``name, gt, sr`` plus ``psnr, ssim, convention``
    (when ``psnr_ssim``) and ``lpips`` (when an ``lpips_model`` from ``build_lpips`` is given);
    summary holds the means, the pair count, the skipped unpaired count and the settings. The
    PSNR mean leaves out identical pairs (infinite PSNR); ``identical_pairs`` counts them;
    ``grayscale_sr`` lists the names whose SR image is grayscale and GT in colour.
    Unpaired files, unreadable files and size mismatches raise ``UserError`` naming them.
    """
    if crop_border < 0:
        raise UserError(f"--crop_border {crop_border} must be >= 0")
    if lpips_batch_size < 1:
        raise UserError(f"--batch_size {lpips_batch_size} must be >= 1")
    pairs, missing = pair_by_stem(gt_dir, sr_dir, allow_missing=allow_missing)
    score = _pair_scorer(psnr_ssim, lpips_model is not None, convention, crop_border, rgb)
    rows, batch, gray = [], [], []

    if lpips_model is not None:
        # deferred so that PSNR/SSIM alone never pays for importing torch
        from utils.evaluation.lpips_metric import lpips_distance_uint8

    def flush():
        dist = lpips_distance_uint8(lpips_model, [g for _, g, _ in batch], [s for _, _, s in batch])
        for (row, _, _), d in zip(batch, dist):
            row["lpips"] = d
        batch.clear()

    results = _ordered_map(score, pairs, workers or default_workers())
    for row, pixels, gray_sr in progress_bar(results, total=len(pairs), desc=f"evaluating {Path(sr_dir).name}",
                                             unit="img", enabled=progress, leave=False):
        rows.append(row)
        if gray_sr:
            gray.append(row["name"])
        if pixels is None:
            continue
        if batch and (batch[0][1].shape != pixels[0].shape or len(batch) >= lpips_batch_size):
            flush()
        batch.append((row, *pixels))
    if batch:
        flush()
    summary = {
        "gt_dir": str(gt_dir), "sr_dir": str(sr_dir), "count": len(rows), "skipped_unpaired": len(missing),
        "psnr": _mean(rows, "psnr"), "ssim": _mean(rows, "ssim"), "lpips": _mean(rows, "lpips"),
        "identical_pairs": sum(math.isinf(r["psnr"]) for r in rows) if psnr_ssim else None,
        "channel": ("RGB" if rgb else "Y") if psnr_ssim else None,
        "y_convention": convention if psnr_ssim and not rgb else None,
        "convention": metric_tag(convention, rgb) if psnr_ssim else None,
        "crop_border": crop_border if psnr_ssim else None,
        "lpips_net": lpips_model.pnet_type if lpips_model is not None else None,
        "grayscale_sr": gray,
    }
    return rows, summary


def summary_lines(summary):
    """Human-readable lines for a summary from ``evaluate_folders``; every PSNR/SSIM value names its convention."""
    skipped = summary["skipped_unpaired"]
    lines = [f"pairs: {summary['count']} ({summary['gt_dir']} vs {summary['sr_dir']})"
             + (f"; {skipped} unpaired file(s) skipped" if skipped else "")]
    if summary["ssim"] is not None:
        rgb, tag = summary["channel"] == "RGB", summary["convention"]
        channel = "RGB channels" if rgb else f"BT.601 {CONVENTIONS[summary['y_convention']].describe()}"
        lines.append(f"convention: {channel}; crop_border {summary['crop_border']}, "
                     "SSIM Gaussian 11x11 sigma 1.5, K1 0.01, K2 0.03, population covariance")
        identical, psnr = summary["identical_pairs"], summary["psnr"]
        if psnr is None:
            lines.append(f"PSNR: infinite ({tag}; all {identical} pair(s) are identical)")
        elif identical:
            lines.append(f"PSNR: {psnr:.4f} dB ({tag}) over {summary['count'] - identical} pair(s); {identical} "
                         f"identical pair(s) left out (their PSNR is infinite)")
        else:
            lines.append(f"PSNR: {psnr:.4f} dB ({tag})")
        lines.append(f"SSIM: {summary['ssim']:.4f} ({tag})")
    if summary["lpips"] is not None:
        lines.append(f"LPIPS ({summary['lpips_net']}): {summary['lpips']:.4f}")
    gray = summary.get("grayscale_sr")
    if gray:
        lines.append(f"warning: {len(gray)} SR image(s) are grayscale but their ground truth is in colour "
                     f"({first_few(gray)}): Y-channel scores cannot see the missing colour; compare with --rgb")
    return lines


def write_csv(path, rows, fix="free disk space or choose another --csv"):
    """Per-image results as CSV with columns name, gt, sr and the metrics present (utils.output_files'
    ``write_output``, as a ``CSV_PURPOSE`` file)."""
    fields = [f for f in CSV_FIELDS if rows and f in rows[0]]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (repr(float(row[k])) if k in ("psnr", "ssim", "lpips") else row[k]) for k in fields})
    write_output(path, text.getvalue().encode(), CSV_PURPOSE, fix)


def add_folder_arguments(parser, sr_help="folder of super-resolved images"):
    """The GT_DIR SR_DIR positionals and the pairing/output options shared by the metric scripts."""
    parser.add_argument("gt_dir", help="folder of ground-truth (HR) images")
    parser.add_argument("sr_dir", help=sr_help)
    parser.add_argument("--allow_missing", action="store_true",
                        help="skip (and count) files present in one folder only")
    parser.add_argument("--csv", help="write per-image results to this CSV file (outside GT_DIR and SR_DIR)")
    parser.add_argument("--overwrite", action="store_true",
                        help="let --csv replace a file that is not a metrics CSV this project wrote")
    parser.add_argument("--workers", type=int, default=default_workers(), help="reader/metric threads")


def check_csv_output(args):
    """Before any work: the ``--csv`` of ``add_folder_arguments``' options may be written (utils.output_files)."""
    if args.csv:
        check_output_file("--csv", args.csv, CSV_PURPOSE, {"GT_DIR": args.gt_dir, "SR_DIR": args.sr_dir},
                          args.overwrite)


def report(rows, summary, csv_path=None):
    """Print the summary lines and write the per-image CSV when asked."""
    print("\n".join(summary_lines(summary)))
    if csv_path:
        write_csv(csv_path, rows)
        print(f"per-image results: {csv_path}")
