"""Make LR test folders from an HR folder: PIL bicubic down by the scale factor (PNG), and
optionally the bicubic baseline (that LR bicubic-upsampled back to the HR size).

    python -m data.make_lr HR_DIR --lr_dir OUT_LR [--lr_up_dir OUT_UP] [--scale 8]

Outputs are named ``<stem>.png`` after the HR files (the folder's images, not recursive).
"""
import argparse
from pathlib import Path

from PIL import Image

from data.degradation import bicubic_degrade_array
from utils.errors import UserError, run_cli
from utils.image_io import index_by_stem, read_rgb, write_rgb
from utils.output_files import check_distinct, check_output_folder
from utils.progress import progress_bar

# what utils.output_files records for the files of each folder
LR_PURPOSE, UP_PURPOSE = "LR image", "bicubic-upsampled LR image"


def check_divisible(path, size, scale):
    """``size = (w, h)`` of the HR file ``path`` must be a multiple of ``scale`` on both sides."""
    w, h = size
    if w % scale or h % scale:
        raise UserError(f"{path}: {w}x{h} is not divisible by the scale {scale}; "
                        f"crop the HR images to a multiple of {scale} first")


def write_lr_files(hr, stem, lr_dir, up_dir, scale):
    """Write ``lr_dir/<stem>.png`` (H/s, W/s) and, if ``up_dir``, ``up_dir/<stem>.png`` (H, W)
    made from the HR RGB uint8 array ``hr`` (H, W, 3)."""
    lr_small, lr_up = bicubic_degrade_array(hr, scale)
    write_rgb(Path(lr_dir) / f"{stem}.png", lr_small, LR_PURPOSE)
    if up_dir is not None:
        write_rgb(Path(up_dir) / f"{stem}.png", lr_up, UP_PURPOSE)


def check_lr_folders(lr_dir, up_dir, stems, inputs, overwrite=False, flags=("--lr_dir", "--lr_up_dir")):
    """Before any work: the LR and bicubic folders (``flags``) are two folders apart from ``inputs`` in which
    ``<stem>.png`` may be written for each of ``stems`` (utils.output_files' rule)."""
    check_distinct(dict(zip(flags, (lr_dir, up_dir))))
    for flag, out, purpose in zip(flags, (lr_dir, up_dir), (LR_PURPOSE, UP_PURPOSE)):
        if out is not None:
            check_output_folder(flag, out, inputs, purpose, [f"{stem}.png" for stem in stems], overwrite)


def image_size(path):
    """(w, h) from the file header, or by decoding when PIL cannot parse it (``read_rgb``'s errors)."""
    try:
        with Image.open(path) as img:
            return img.size
    except Exception:
        h, w = read_rgb(path).shape[:2]
        return w, h


def make_lr(hr_dir, lr_dir, up_dir=None, scale=8, overwrite=False):
    """LR (and bicubic-upsampled) PNGs for every image of ``hr_dir``; returns how many. A file of the
    output folders that make_lr did not write there is replaced only with ``overwrite``."""
    index = index_by_stem(hr_dir)
    check_lr_folders(lr_dir, up_dir, index, {"HR_DIR": hr_dir}, overwrite)
    for path in index.values():
        check_divisible(path, image_size(path), scale)
    for stem, path in progress_bar(sorted(index.items()), desc="make_lr", unit="img"):
        write_lr_files(read_rgb(path), stem, lr_dir, up_dir, scale)
    return len(index)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("hr_dir", help="folder of HR images")
    parser.add_argument("--lr_dir", required=True, help="output folder for the downscaled LR PNGs")
    parser.add_argument("--lr_up_dir", default=None,
                        help="output folder for the bicubic-upsampled LR (the bicubic baseline)")
    parser.add_argument("--scale", type=int, default=8, help="downscaling factor (default 8: 128x128 -> 16x16)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace files of the output folders that make_lr did not write there")
    args = parser.parse_args(argv)
    if args.scale < 1:
        raise UserError(f"--scale {args.scale}: must be a positive integer")
    count = make_lr(args.hr_dir, args.lr_dir, args.lr_up_dir, args.scale, args.overwrite)
    outputs = args.lr_dir + (f" and {args.lr_up_dir}" if args.lr_up_dir else "")
    print(f"wrote {count} image(s) to {outputs}")


if __name__ == "__main__":
    run_cli(main)
