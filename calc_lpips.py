"""Mean LPIPS of an SR folder against its ground truth: python calc_lpips.py GT_DIR SR_DIR."""
import argparse

from utils.errors import run_cli
from utils.evaluation.folder_eval import add_folder_arguments, check_csv_output, evaluate_folders, report
from utils.evaluation.lpips_metric import BACKBONE_ENV, LPIPS_NETS, build_lpips


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="LPIPS (lpips package, inputs RGB in [-1, 1]) of SR images against "
                                            "ground-truth images paired by file stem.")
    add_folder_arguments(p)
    p.add_argument("--net", choices=LPIPS_NETS, default="alex", help="LPIPS backbone (default alex, as the paper)")
    p.add_argument("--backbone_weights", default=None,
                   help=f"torchvision-format AlexNet/VGG16 state_dict for offline use (default: ${BACKBONE_ENV}; "
                        "unset: torchvision downloads it)")
    p.add_argument("--device", default="auto", help="auto (GPU when available), cpu, cuda or cuda:N")
    p.add_argument("--batch_size", type=int, default=16)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    check_csv_output(args)
    model = build_lpips(args.net, args.backbone_weights, args.device)
    rows, summary = evaluate_folders(args.gt_dir, args.sr_dir, psnr_ssim=False, lpips_model=model,
                                     lpips_batch_size=args.batch_size, allow_missing=args.allow_missing,
                                     workers=args.workers)
    report(rows, summary, args.csv)


if __name__ == "__main__":
    run_cli(main)
