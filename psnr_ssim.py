"""Mean PSNR / SSIM of an SR folder against its ground truth: python psnr_ssim.py GT_DIR SR_DIR."""
import argparse

from utils.errors import run_cli
from utils.folder_eval import default_workers, evaluate_folders, summary_lines, write_csv
from utils.metrics import Y_CONVENTIONS


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="PSNR and SSIM (Y channel of BT.601 YCbCr by default) of SR images "
                                            "against ground-truth images paired by file stem.")
    p.add_argument("gt_dir", help="folder of ground-truth (HR) images")
    p.add_argument("sr_dir", help="folder of super-resolved images (the --save_as_dir of test.py)")
    p.add_argument("--y_convention", choices=Y_CONVENTIONS, default="truncate",
                   help="how Y is quantised: truncate (Table 1 lineage, default), round (MATLAB/BasicSR), float")
    p.add_argument("--rgb", action="store_true", help="PSNR/SSIM on the RGB channels instead of Y")
    p.add_argument("--crop_border", type=int, default=0, help="pixels dropped on each side first (default 0)")
    p.add_argument("--allow_missing", action="store_true", help="skip (and count) files present in one folder only")
    p.add_argument("--csv", help="write per-image results to this CSV file")
    p.add_argument("--workers", type=int, default=default_workers(), help="reader/metric threads")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    rows, summary = evaluate_folders(args.gt_dir, args.sr_dir, convention=args.y_convention,
                                     crop_border=args.crop_border, rgb=args.rgb,
                                     allow_missing=args.allow_missing, workers=args.workers)
    print("\n".join(summary_lines(summary)))
    if args.csv:
        write_csv(args.csv, rows)
        print(f"per-image results: {args.csv}")


if __name__ == "__main__":
    run_cli(main)
