"""A comparison picture: LR (nearest-upsampled) | bicubic | SR | HR, a few faces per row.

    python -m utils.evaluation.side_by_side --lr LR_DIR --sr SR_DIR --hr HR_DIR [--bicubic] --out fig.png
        [--n 4] [--per_row 2] [--zoom K]

Faces are matched by file stem; every tile is drawn at the size of the first HR image, then
enlarged K times by pixel replication (for small faces, so details and captions are readable).
"""
import argparse
import math

import cv2
import numpy as np
from PIL import Image

from data.degradation import resize_bicubic
from utils.errors import UserError, run_cli
from utils.image_io import check_image_format, index_by_stem, read_rgb, write_rgb
from utils.output_files import check_output_file

LABEL_HEIGHT = 24  # pixels of the caption band above each row
GAP = 4  # pixels between faces and between rows
BACKGROUND = 255
MAX_PIXELS = 200_000_000  # 600 MB as RGB; a larger picture is surely a typo in --zoom or --n
PURPOSE = "side-by-side picture"  # what utils.output_files records for --out


def pick_stems(lr_dir, sr_dir, hr_dir, n, names=None):
    """(stem, lr, sr, hr paths) of the given ``names``, or else of the first ``n`` stems common to all three folders."""
    indexes = [index_by_stem(d) for d in (lr_dir, sr_dir, hr_dir)]
    common = sorted(set.intersection(*(set(i) for i in indexes)))
    if names:
        absent = [s for s in names if s not in common]
        if absent:
            raise UserError(f"{absent[0]}: not present in all of {lr_dir}, {sr_dir}, {hr_dir}; pick another --names")
    if not common:
        raise UserError(f"{lr_dir}, {sr_dir} and {hr_dir} share no file stem; the faces are matched by file name")
    return [(s, *(i[s] for i in indexes)) for s in (names or common[:n])]


def face_tiles(lr, sr, hr, size, bicubic):
    """The tiles of one face as RGB uint8 (h, w, 3) arrays at ``size = (w, h)``, with their captions."""
    tiles = [("LR", cv2.resize(lr, size, interpolation=cv2.INTER_NEAREST))]
    if bicubic:
        tiles.append(("Bicubic", np.asarray(resize_bicubic(Image.fromarray(lr), size))))
    tiles += [("SR", sr), ("HR", hr)]
    return [(label, img if img.shape[1::-1] == size else cv2.resize(img, size, interpolation=cv2.INTER_AREA))
            for label, img in tiles]


def canvas_size(count, per_row, k, h, w):
    """(height, width) of the grid of ``count`` faces of ``k`` tiles of h x w pixels, ``per_row`` per row:
    width per_row * k * w + (per_row - 1) * GAP, height rows * (LABEL_HEIGHT + h) + (rows - 1) * GAP."""
    per_row = min(per_row, count)
    rows = math.ceil(count / per_row)
    return rows * (LABEL_HEIGHT + h) + (rows - 1) * GAP, per_row * k * w + (per_row - 1) * GAP


def compose(faces, per_row):
    """Grid of faces; ``faces`` is a list of tile lists from ``face_tiles`` -> RGB uint8 image of ``canvas_size``."""
    k = len(faces[0])
    h, w = faces[0][0][1].shape[:2]
    per_row = min(per_row, len(faces))
    canvas = np.full((*canvas_size(len(faces), per_row, k, h, w), 3), BACKGROUND, np.uint8)
    for i, tiles in enumerate(faces):
        top = (i // per_row) * (LABEL_HEIGHT + h + GAP)
        left = (i % per_row) * (k * w + GAP)
        for j, (label, img) in enumerate(tiles):
            x = left + j * w
            canvas[top + LABEL_HEIGHT:top + LABEL_HEIGHT + h, x:x + w] = img
            cv2.putText(canvas, label, (x + 4, top + LABEL_HEIGHT - 7), cv2.FONT_HERSHEY_SIMPLEX,
                        0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def side_by_side(lr_dir, sr_dir, hr_dir, n=4, per_row=2, bicubic=False, names=None, zoom=1):
    """The comparison picture as an RGB uint8 array (see ``compose`` for its size, with w and h times ``zoom``)."""
    if n < 1 or per_row < 1 or zoom < 1:
        raise UserError(f"--n {n}, --per_row {per_row} and --zoom {zoom} must be >= 1")
    picked = pick_stems(lr_dir, sr_dir, hr_dir, n, names)
    size = read_rgb(picked[0][3]).shape[1::-1]
    height, width = canvas_size(len(picked), per_row, 4 if bicubic else 3, size[1] * zoom, size[0] * zoom)
    if height * width > MAX_PIXELS:
        raise UserError(f"the picture would be {width}x{height} pixels (at most {MAX_PIXELS / 1e6:.0f} megapixels); "
                        f"lower --zoom {zoom}, --n or --per_row")
    faces = []
    for _, lr_path, sr_path, hr_path in picked:
        lr, sr, hr = read_rgb(lr_path), read_rgb(sr_path), read_rgb(hr_path)
        tiles = face_tiles(lr, sr, hr, size, bicubic)
        faces.append([(label, img.repeat(zoom, axis=0).repeat(zoom, axis=1)) for label, img in tiles])
    return compose(faces, per_row)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lr", required=True, help="folder of LR inputs")
    p.add_argument("--sr", required=True, help="folder of SR outputs")
    p.add_argument("--hr", required=True, help="folder of HR ground truth")
    p.add_argument("--bicubic", action="store_true", help="add a bicubic-upsampled LR column")
    p.add_argument("--n", type=int, default=4, help="number of faces (default 4, the first by file name)")
    p.add_argument("--names", nargs="+", help="file stems of the faces to show instead of the first --n")
    p.add_argument("--per_row", type=int, default=2, help="faces per row (default 2)")
    p.add_argument("--zoom", type=int, default=1, help="enlarge every tile K times, nearest-neighbour (default 1)")
    p.add_argument("--out", required=True, help="output image (PNG)")
    p.add_argument("--overwrite", action="store_true",
                   help="let --out replace a file that is not a side-by-side picture this project wrote")
    args = p.parse_args(argv)
    check_image_format(args.out, "--out")
    check_output_file("--out", args.out, PURPOSE, {"--lr": args.lr, "--sr": args.sr, "--hr": args.hr},
                      args.overwrite)
    picture = side_by_side(args.lr, args.sr, args.hr, args.n, args.per_row, args.bicubic, args.names, args.zoom)
    write_rgb(args.out, picture, PURPOSE)
    print(f"wrote {args.out} ({picture.shape[1]}x{picture.shape[0]})")


if __name__ == "__main__":
    run_cli(main)
