"""Mean PSNR / SSIM of an SR folder against its ground truth: python psnr_ssim.py GT_DIR SR_DIR."""
import argparse

from utils.errors import run_cli
from utils.evaluation.folder_eval import add_folder_arguments, check_csv_output, evaluate_folders, report
from utils.y_conventions import DEFAULT_Y_CONVENTION, Y_CONVENTIONS, help_lines


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="PSNR and SSIM (Y channel of BT.601 YCbCr by default) of SR images "
                                            "against ground-truth images paired by file stem.",
                                epilog="\n".join(["Y conventions (--y_convention), and whose numbers each reproduces:",
                                                  *help_lines()]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_folder_arguments(p, sr_help="folder of super-resolved images (the --save_as_dir of test.py)")
    p.add_argument("--y_convention", choices=Y_CONVENTIONS, default=DEFAULT_Y_CONVENTION,
                   help=f"how Y is quantised (default {DEFAULT_Y_CONVENTION}; see below)")
    p.add_argument("--rgb", action="store_true", help="PSNR/SSIM on the RGB channels instead of Y")
    p.add_argument("--crop_border", type=int, default=0, help="pixels dropped on each side first (default 0)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    check_csv_output(args)
    rows, summary = evaluate_folders(args.gt_dir, args.sr_dir, convention=args.y_convention,
                                     crop_border=args.crop_border, rgb=args.rgb,
                                     allow_missing=args.allow_missing, workers=args.workers)
    report(rows, summary, args.csv)


if __name__ == "__main__":
    run_cli(main)
