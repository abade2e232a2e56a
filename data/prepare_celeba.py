"""Prepare CelebA for training and testing: 128x128 HR face crops from ``img_align_celeba``.

Each 178x218 aligned image is cropped to the box (left 19, top 63, right 156, bottom 200), a
137x137 square that reproduces the framing of the common 128x128 CelebA FSR test set, then PIL
bicubic resized to ``--size``. ``--box auto`` takes the centred square of any image instead.

Layout written under ``--out``::

    OUT/HR/<id>.png           --size x --size HR crops
    OUT/LR/<id>.png           (--make_test_lr) HR bicubic-downscaled by --lr_scale, e.g. 16x16
    OUT/LR_bicubic/<id>.png   (--make_test_lr) LR bicubic-upsampled back: the bicubic baseline

Examples (``list_eval_partition.txt`` is CelebA's official split: "000001.jpg 0", 0 train,
1 val, 2 test)::

    python -m data.prepare_celeba --src img_align_celeba --out celeba_train \\
        --partition list_eval_partition.txt --split train
    python -m data.prepare_celeba --src img_align_celeba --out celeba_test \\
        --partition list_eval_partition.txt --split test --make_test_lr

Train with ``--dataroot celeba_train`` (the dataset reads its HR/ folder); test with
``--dataroot celeba_test/LR`` and evaluate against ``celeba_test/HR``. ``--exclude ids.txt``
(one id per line, extension optional) keeps chosen faces, e.g. test faces, out of a set.
"""
import argparse
import functools
import multiprocessing
import os
from pathlib import Path

import numpy as np
from PIL import Image

from data.degradation import center_square, resize_bicubic
from data.make_lr import check_lr_folders, write_lr_files
from utils.errors import UserError, run_cli
from utils.image_io import index_by_stem, is_image_file, read_rgb, write_rgb
from utils.output_files import check_output_folder
from utils.progress import progress_bar

ALIGNED_SIZE = (178, 218)
DEFAULT_BOX = (19, 63, 156, 200)
SPLITS = {"train": 0, "val": 1, "test": 2}
HR_PURPOSE = "HR crop"  # what utils.output_files records for OUT/HR/*.png


def parse_box(values):
    """``["auto"]`` -> None (centred square); four integers -> a square (left, top, right, bottom)
    inside the 178x218 aligned image."""
    if values == ["auto"]:
        return None
    try:
        box = tuple(int(v) for v in values)
    except ValueError:
        box = ()
    if len(box) != 4:
        raise UserError(f"--box {' '.join(values)}: give four integers LEFT TOP RIGHT BOTTOM or 'auto'")
    left, top, right, bottom = box
    if not (0 <= left < right <= ALIGNED_SIZE[0] and 0 <= top < bottom <= ALIGNED_SIZE[1]):
        raise UserError(f"--box {' '.join(values)}: must lie inside the {ALIGNED_SIZE[0]}x{ALIGNED_SIZE[1]} "
                        f"aligned image")
    if right - left != bottom - top:
        raise UserError(f"--box {' '.join(values)}: {right - left}x{bottom - top} is not square; faces would be "
                        f"stretched")
    return box


def read_list(flag, path, what):
    """The text of the list file ``path`` given as ``flag``; a missing or unreadable one raises ``UserError``."""
    try:
        return Path(path).read_text()
    except OSError as err:
        reason = "no such file" if isinstance(err, FileNotFoundError) else f"cannot read it ({err.strerror or err})"
        raise UserError(f"{flag} {path}: {reason}; pass {what}") from None


def read_partition(path):
    """CelebA's ``list_eval_partition.txt`` -> {id stem: 0 train | 1 val | 2 test}."""
    partition = {}
    for number, line in enumerate(read_list("--partition", path, "CelebA's list_eval_partition.txt").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise UserError(f"{path}:{number}: expected '<image name> <0|1|2>', got '{line.strip()}'")
        partition[Path(fields[0]).stem] = int(fields[1])
    return partition


def read_ids(path):
    """Id stems listed one per line (extension optional; blank lines and '#' comments ignored)."""
    lines = (line.split("#")[0].strip() for line in read_list("--exclude", path, "a text file of ids").splitlines())
    return {Path(line).stem for line in lines if line}


def select_ids(index, partition=None, split="all", exclude=()):
    """Sorted (stem, path) items of ``index`` in ``split`` (needs ``partition``) and not in ``exclude``."""
    stems = set(index)
    if split != "all":
        stems = {s for s in stems if partition.get(s) == SPLITS[split]}
    stems -= set(exclude)
    return [(s, index[s]) for s in sorted(stems)]


def crop_face(img, box, size):
    """PIL image -> (size, size) PIL image: crop ``box`` (None: centred square), bicubic resize."""
    face = center_square(img) if box is None else img.crop(box)
    return resize_bicubic(face, (size, size))


def prepare_one(item, out, box, size, lr_scale, make_test_lr):
    """Crop one source image into ``out/HR`` (and its LR files); returns the stem."""
    stem, path = item
    img = read_rgb(path)
    if box is not None and (img.shape[1], img.shape[0]) != ALIGNED_SIZE:
        raise UserError(f"{path}: {img.shape[1]}x{img.shape[0]}, the crop box expects a "
                        f"{ALIGNED_SIZE[0]}x{ALIGNED_SIZE[1]} img_align_celeba image; pass --box auto for a centred "
                        f"square")
    hr = np.asarray(crop_face(Image.fromarray(img), box, size))
    write_rgb(out / "HR" / f"{stem}.png", hr, HR_PURPOSE)
    if make_test_lr:
        write_lr_files(hr, stem, out / "LR", out / "LR_bicubic", lr_scale)
    return stem


def check_no_foreign_outputs(hr_dir, stems):
    """Refuse an output folder holding crops outside this selection (e.g. excluded test faces
    left by an earlier run); re-running the same selection, e.g. after an interruption, is fine."""
    if not hr_dir.is_dir():
        return
    foreign = sorted(p.name for p in hr_dir.iterdir() if is_image_file(p) and p.stem not in stems)
    if foreign:
        raise UserError(f"{hr_dir} already holds {len(foreign)} file(s) outside this selection "
                        f"(e.g. {foreign[0]}); write to an empty --out folder")


def run_parallel(func, items, workers, desc):
    """``func`` over ``items`` in ``workers`` processes (in-process for 1) with a progress bar."""
    with progress_bar(total=len(items), desc=desc, unit="img") as bar:
        if workers <= 1:
            for item in items:
                func(item)
                bar.update()
            return
        with multiprocessing.Pool(workers) as pool:
            for _ in pool.imap_unordered(func, items, chunksize=32):
                bar.update()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--src", required=True, help="img_align_celeba folder (178x218 JPEGs named by id)")
    parser.add_argument("--out", required=True, help="output folder; HR/ (and LR/, LR_bicubic/) are written inside")
    parser.add_argument("--partition", default=None,
                        help="CelebA list_eval_partition.txt, needed by --split train|val|test")
    parser.add_argument("--split", choices=["train", "val", "test", "all"], default="all",
                        help="official split to prepare (default all images of --src)")
    parser.add_argument("--exclude", default=None, help="text file of ids to leave out, one per line")
    parser.add_argument("--size", type=int, default=128, help="HR crop size (default 128)")
    parser.add_argument("--box", nargs="+", default=[str(v) for v in DEFAULT_BOX], metavar="V",
                        help="crop box LEFT TOP RIGHT BOTTOM in the 178x218 image (default 19 63 156 200) or 'auto'")
    parser.add_argument("--lr_scale", type=int, default=8, help="LR downscaling factor for --make_test_lr (default 8)")
    parser.add_argument("--make_test_lr", action="store_true", help="also write OUT/LR and OUT/LR_bicubic")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="parallel processes")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace files under --out that prepare_celeba did not write there")
    args = parser.parse_args(argv)

    box = parse_box(args.box)
    if args.size < 1:
        raise UserError(f"--size {args.size}: must be a positive number of pixels, e.g. 128")
    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: must be at least 1")
    check_output_folder("--out", args.out, {"--src": args.src})
    if args.make_test_lr and (args.lr_scale < 1 or args.size % args.lr_scale):
        raise UserError(f"--size {args.size} is not divisible by --lr_scale {args.lr_scale}; pick sizes that divide")
    if args.split != "all" and args.partition is None:
        raise UserError(f"--split {args.split} needs --partition list_eval_partition.txt (CelebA's official split "
                        f"file)")
    index = index_by_stem(args.src)
    partition = read_partition(args.partition) if args.partition else None
    exclude = read_ids(args.exclude) if args.exclude else set()
    items = select_ids(index, partition, args.split, exclude)
    if not items:
        raise UserError(f"{args.src}: no image left after --split {args.split}"
                        f"{' and --exclude ' + args.exclude if args.exclude else ''}; check the id lists")
    if args.split != "all":
        unlisted = len(set(index) - set(partition))
        if unlisted:
            print(f"note: {unlisted} image(s) of {args.src} are not in {args.partition} and were left out")
    out = Path(args.out)
    stems = [stem for stem, _ in items]
    check_no_foreign_outputs(out / "HR", set(stems))
    check_output_folder("--out", out / "HR", {"--src": args.src}, HR_PURPOSE, [f"{s}.png" for s in stems],
                        args.overwrite)
    if args.make_test_lr:
        check_lr_folders(out / "LR", out / "LR_bicubic", stems, {"--src": args.src}, args.overwrite,
                         flags=("--out", "--out"))
    job = functools.partial(prepare_one, out=out, box=box, size=args.size,
                            lr_scale=args.lr_scale, make_test_lr=args.make_test_lr)
    run_parallel(job, items, args.workers, desc="prepare_celeba")
    excluded = len(select_ids(index, partition, args.split)) - len(items)
    print(f"wrote {len(items)} HR crop(s) to {out / 'HR'}"
          f"{' with LR/ and LR_bicubic/' if args.make_test_lr else ''} ({excluded} excluded)")


if __name__ == "__main__":
    run_cli(main)
