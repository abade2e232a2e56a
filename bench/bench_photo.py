"""Benchmark of the photo pipeline (enhance.py) on synthetic group photos of real faces.

Faces from a folder of CelebA aligned images (178x218) are placed at known positions, turned by up
to +-10 degrees, in photos made at 8x and reduced (PIL bicubic), as ``utils.photo.synthetic`` does.
For each face size it prints the detector's recall and false detections, the error of the fitted
frame (rms over its four corners, in pixels of the 128x128 frame) and the PSNR of each restored face
region against the ground truth, beside the bicubic x8 photo's:

    python bench/bench_photo.py --faces celeba_align/val                      # sizes 12 to 64
    python bench/bench_photo.py --faces DIR --sizes 16 20 --upsample 1 --no_restore
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.evaluation.pretrained import SHIPPED_MODEL
from utils.image_io import list_images, read_rgb
from utils.photo import geometry, synthetic
from utils.photo.alignment import frame_transform
from utils.photo.detector import MIN_BOX, UPSAMPLE, FaceDetector
from utils.photo.photo_io import upscale
from utils.photo.pipeline import MAX_FACE, restore_faces
from utils.photo.restorer import FaceRestorer, load_model

CORNERS = np.array([(0, 0), (128, 0), (0, 128), (128, 128)], np.float64)
SCALE = 8


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--faces", required=True, help="folder of CelebA aligned images (img_align_celeba, 178x218)")
    p.add_argument("--sizes", type=int, nargs="+", default=[12, 16, 20, 24, 32, 40, 48, 64], help="face sizes (px)")
    p.add_argument("--photos", type=int, default=3, help="photos of 8 faces per size (default 3)")
    p.add_argument("--min_box", type=float, default=MIN_BOX)
    p.add_argument("--upsample", type=float, default=UPSAMPLE)
    p.add_argument("--max_face", type=int, default=MAX_FACE, help="enhance.py's --max_face")
    p.add_argument("--model", default=str(SHIPPED_MODEL))
    p.add_argument("--no_restore", action="store_true", help="detection and alignment only")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    paths = list_images(args.faces)
    detector = FaceDetector(min_box=args.min_box, upsample=args.upsample)
    restorer = None if args.no_restore else FaceRestorer(*load_model(args.model)[:3])
    rng = np.random.default_rng(0)
    print(f"min_box {args.min_box:g}, upsample {args.upsample:g}, max_face {args.max_face}; {args.photos} photos of 8 "
          f"faces per size")
    print("size  found   false  frame err (mean/p90)  PSNR bicubic  gain mean  gain min  gain>0  detect s")
    start = 0
    for size in args.sizes:
        found = false = 0
        errors, bicubic, gains, seconds = [], [], [], 0.0
        for _ in range(args.photos):
            sources = [synthetic.celeba_source(read_rgb(paths[(start + i) % len(paths)])) for i in range(8)]
            start += 8
            placements, (w, h) = synthetic.grid_layout([size] * 8, list(rng.uniform(-10, 10, 8)), per_row=4)
            photo = synthetic.group_photo(sources, placements, w, h, scale=SCALE, seed=start)
            t = time.perf_counter()
            detections = detector.detect(photo.lr)
            seconds += time.perf_counter() - t
            matches = synthetic.match_faces(detections, photo)
            found += sum(m is not None for m in matches)
            false += len(detections) - sum(m is not None for m in matches)
            base = upscale(photo.lr, SCALE)
            for index, (frame, match) in enumerate(zip(photo.frames, matches)):
                if match is None:
                    continue
                fit = frame_transform(detections[match].landmarks)
                err = geometry.apply(geometry.compose(fit, frame), CORNERS) - CORNERS
                errors.append(np.sqrt((err ** 2).sum(1).mean()))
                if restorer is None:
                    continue
                canvas = base.copy()
                restore_faces(photo.lr, canvas, restorer, [detections[match]], SCALE, args.max_face)
                region = synthetic.face_region(photo, index)
                bicubic.append(synthetic.region_psnr(photo.hr, base, region))
                gains.append(synthetic.region_psnr(photo.hr, canvas, region) - bicubic[-1])
        total = 8 * args.photos
        quality = (f"{np.mean(bicubic):12.2f}  {np.mean(gains):+9.2f}  {np.min(gains):+8.2f}  "
                   f"{np.mean(np.array(gains) > 0):6.0%}" if gains else f"{'-':>12}  {'-':>9}  {'-':>8}  {'-':>6}")
        print(f"{size:4d}  {found:2d}/{total:2d}  {false:5d}  {np.mean(errors):9.2f} / {np.percentile(errors, 90):5.2f}"
              f"       {quality}  {seconds / args.photos:8.2f}", flush=True)


if __name__ == "__main__":
    main()
