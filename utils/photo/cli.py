"""enhance.py: the small faces of real photos restored, the whole photo enlarged.

    python enhance.py INPUT --out DIR [--upscale 8] [--side_by_side] [--pretrain_model_path FILE]

INPUT is a photo or a folder of photos (not searched recursively). For each photo the faces are
detected (MTCNN), aligned to the framing the network was trained on, restored by the network at
their own resolution and pasted back, with feathered edges, into the photo enlarged by PIL bicubic.
Written to DIR: <stem>.png, <stem>.json, <stem>_faces/NN.png and, with --side_by_side,
<stem>_side_by_side.png (see utils/photo/outputs.py).
"""
import argparse
import logging
from pathlib import Path

import cv2

from options.base_options import SCAN_BACKENDS, OptionParser
from utils.errors import UserError
from utils.evaluation.inference import console_logging, select_device
from utils.evaluation.pretrained import SHIPPED_MODEL
from utils.image_io import is_image_file
from utils.output_folder import check_output_folder
from utils.photo.detector import MIN_BOX, UPSAMPLE, FaceDetector
from utils.photo.outputs import PhotoOutputs, write_outputs
from utils.photo.photo_io import read_photo, upscale
from utils.photo.pipeline import MAX_FACE, enhance_photo
from utils.photo.restorer import FaceRestorer, load_model
from utils.progress import progress_bar

log = logging.getLogger("hybrimamba")
MAX_OUTPUT_PIXELS = 400_000_000  # 1.2 GB as RGB: the enlarged photo is held in memory whole


def parse_args(argv=None):
    p = OptionParser(prog="python enhance.py", description=__doc__.split("\n\n")[0],
                     epilog="examples:\n  python enhance.py group.jpg --out enhanced\n"
                            "  python enhance.py photos/ --out enhanced --side_by_side --upscale 4",
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="a photo, or a folder of photos")
    p.add_argument("--out", required=True, help="output folder (created; must not be or lie inside a folder INPUT)")
    p.add_argument("--upscale", type=int, default=8, help="enlargement of the whole photo (default: %(default)s)")
    p.add_argument("--pretrain_model_path", default=str(SHIPPED_MODEL),
                   help="the restoring model (default: the shipped pretrained/ model)")
    p.add_argument("--gpus", type=int, default=1, help="0: CPU; >= 1: the first GPU when there is one (default: 1)")
    p.add_argument("--scan_backend", choices=SCAN_BACKENDS, default="auto", help="selective-scan backend")
    p.add_argument("--side_by_side", action="store_true", help="also write input | bicubic | result as one picture")
    p.add_argument("--max_face", type=int, default=MAX_FACE,
                   help="faces larger than this many pixels are left as the bicubic enlargement; the network runs "
                        "at 8x a face's size (default: %(default)s, where the shipped model stops helping)")
    p.add_argument("--skip_bad_images", action="store_true", help="leave unreadable photos out instead of stopping")
    args = p.parse_args(argv)
    if args.upscale < 1:
        raise UserError(f"--upscale {args.upscale}: must be at least 1")
    if args.max_face < 4:
        raise UserError(f"--max_face {args.max_face}: must be at least 4 pixels")
    if args.gpus < 0:
        raise UserError(f"--gpus {args.gpus}: must be 0 (CPU) or more")
    return args


def list_photos(source):
    """The photos named by INPUT: the file itself, or the images directly in the folder (sorted)."""
    source = Path(source)
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise UserError(f"{source}: no such file or folder; pass a photo or a folder of photos")
    photos = sorted(p for p in source.iterdir() if p.is_file() and is_image_file(p))
    if not photos:
        raise UserError(f"{source}: no photos in this folder (it is not searched recursively)")
    stems = {}
    for path in photos:
        if path.stem in stems:
            raise UserError(f"{source}: '{stems[path.stem].name}' and '{path.name}' would both be written as "
                            f"{path.stem}.png; rename one")
        stems[path.stem] = path
    return photos


def photo_record(path, photo, orientation, result, args, model_line):
    return {
        "input": path.name, "input_size": [int(photo.shape[1]), int(photo.shape[0])], "exif_orientation": orientation,
        "upscale": args.upscale, "output": f"{path.stem}.png",
        "coordinates": "input pixels after EXIF orientation; (0, 0) is the top-left corner of the photo",
        "model": model_line, "faces": [face.record() for face in result.faces],
    }


def enhance_file(path, args, restorer, detector, model_line):
    """Enhance one photo and write its outputs; returns the number of faces, or None when it was skipped."""
    try:
        photo, orientation = read_photo(path)
    except UserError as err:
        if args.skip_bad_images:
            log.warning(f"notice: skipped: {err}")
            return None
        raise UserError(f"{err}; or pass --skip_bad_images to leave it out") from None
    pixels = photo.shape[0] * photo.shape[1] * args.upscale ** 2
    if pixels > MAX_OUTPUT_PIXELS:
        raise UserError(f"{path}: {photo.shape[1]}x{photo.shape[0]} enlarged {args.upscale}x would be "
                        f"{pixels / 1e6:.0f} megapixels (at most {MAX_OUTPUT_PIXELS / 1e6:.0f}); pass a smaller "
                        f"--upscale")
    outputs = PhotoOutputs(Path(args.out), path.stem)
    outputs.check_free(path)
    result = enhance_photo(photo, restorer, detector, args.upscale, args.max_face, progress=True)
    for number, face in enumerate(result.faces):
        if face.notice:
            log.warning(f"notice: {path.name} face {number:02d}: {face.notice}")
    bicubic = upscale(photo, args.upscale) if args.side_by_side else None
    write_outputs(outputs, result, photo_record(path, photo, orientation, result, args, model_line),
                  photo if args.side_by_side else None, bicubic)
    restored = sum(face.restored is not None for face in result.faces)
    found = (f"{restored} of {len(result.faces)} face(s) restored" if result.faces
             else "no face found (the photo is enlarged all the same)")
    log.info(f"{path.name}: {found} -> {outputs.image}")
    return restored


def main(argv=None):
    with console_logging():
        return run(parse_args(argv))


def run(args):
    photos = list_photos(args.input)
    source = Path(args.input)
    check_output_folder("--out", args.out, {"INPUT": source if source.is_dir() else None})
    unreadable = [p for p in photos if not cv2.haveImageReader(str(p))]
    if unreadable and not args.skip_bad_images:
        raise UserError(f"{unreadable[0]}: not a readable image (unknown format or corrupt); remove it or pass "
                        f"--skip_bad_images")
    device, notices = select_device(args.gpus)
    for line in notices:
        log.warning(f"notice: {line}")
    model, model_scale, hr_size, model_line = load_model(args.pretrain_model_path, device, args.scan_backend)
    restorer = FaceRestorer(model, model_scale, hr_size, device)
    detector = FaceDetector(MIN_BOX, UPSAMPLE, device=device)
    log.info(f"{model_line}; {len(photos)} photo(s), x{args.upscale}, on {device}")
    counts = [enhance_file(path, args, restorer, detector, model_line)
              for path in progress_bar(photos, desc="photos", unit="photo", enabled=len(photos) > 1)]
    done = [c for c in counts if c is not None]
    log.info(f"{len(done)} photo(s) enhanced, {sum(done)} face(s) restored, {len(counts) - len(done)} skipped; "
             f"written to {args.out}")
    return 0
