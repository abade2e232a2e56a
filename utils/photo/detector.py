"""Face detection with landmarks: MTCNN (Zhang et al., 2016), whose weights ship inside the
facenet-pytorch package (no download at run time).

facenet-pytorch 2.6.0 pins torch<2.3, numpy<2 and Pillow<10.3, so it is installed with ``--no-deps``
(``requirements-extra.txt``); its MTCNN runs unchanged on current torch, numpy and Pillow (the
project's tests run it). The package is optional: only the photo pipeline needs it, and its
absence is a one-line error saying how to install it.

MTCNN reports coordinates as 1-based pixel indices (its MATLAB origin): a point at the centre of
the top-left pixel comes out as (1, 1). Measured on 150 CelebA faces redrawn at 24 to 256 pixels,
the offset is 0.9-1.2 pixels at every size. ``Detection`` holds corner coordinates (``geometry``),
so the detector's values are shifted by 0.5.
"""
import math
from dataclasses import dataclass

import cv2
import numpy as np

from utils.errors import UserError

INSTALL = "pip install requests && pip install --no-deps facenet-pytorch==2.6.0"
# MTCNN coordinates -> corner coordinates: minus 1 (1-based pixel centres), plus 0.5.
DETECTOR_OFFSET = 0.5
# Smallest MTCNN face box searched for, in photo pixels. A face framed like a CelebA training crop
# at f pixels has an MTCNN box of about 0.65 f x 0.95 f. The photo is enlarged UPSAMPLE times
# (bicubic) before MTCNN sees it, with the smallest box scaled alike, so its image pyramid and
# network cost stay the same (the enlarged copy costs memory: 4x the photo). But MTCNN's later
# stages cut each candidate out and resize it to 24 and 48 pixels, and from a bicubic enlargement
# rather than its own nearest-neighbour one they recover small faces (bench/bench_photo.py, 24
# CelebA faces per size: at 16 pixels 23 found instead of 19, at 12 pixels 20 instead of 7).
MIN_BOX = 10
UPSAMPLE = 2
PYRAMID_FACTOR = 0.709
THRESHOLDS = (0.6, 0.7, 0.7)
# Photos whose longer side exceeds TILE are searched tile by tile (bounded memory): tiles overlap by
# OVERLAP pixels, so a face whose box is at most that wide lies whole in the tile that holds its
# centre; larger faces are searched in a copy reduced to at most REDUCED_SIDE pixels.
TILE = 1024
OVERLAP = 160
REDUCED_SIDE = 2048
NMS_IOU = 0.3


@dataclass
class Detection:
    """One face: ``box`` (left, top, right, bottom), ``landmarks`` (5, 2) = left eye, right eye
    (as seen in the picture), nose, left and right mouth corner, both in corner pixel coordinates,
    and MTCNN's ``score`` in [0, 1]."""
    box: np.ndarray
    landmarks: np.ndarray
    score: float

    def moved(self, zoom, dx=0.0, dy=0.0):
        """The detection in the coordinates of an image ``zoom`` times smaller, shifted by (dx, dy)."""
        shift = np.array([dx, dy])
        return Detection(self.box / zoom + np.tile(shift, 2), self.landmarks / zoom + shift, self.score)


def load_mtcnn(min_box, factor, thresholds, device):
    """facenet-pytorch's MTCNN; a ``UserError`` naming the install command when the package (or its
    dependency ``requests``) is missing."""
    try:
        from facenet_pytorch import MTCNN
    except ImportError as err:
        missing = getattr(err, "name", None) or "facenet_pytorch"
        raise UserError(f"face detection needs facenet-pytorch (MTCNN's weights ship in it), and '{missing}' is not "
                        f"installed: run {INSTALL} (or pip install -r requirements-extra.txt as the Makefile "
                        f"does)") from None
    return MTCNN(min_face_size=min_box, factor=factor, thresholds=list(thresholds), keep_all=True,
                 select_largest=False, post_process=False, device=device)


def tile_starts(length, tile, overlap):
    """Start offsets of tiles of ``tile`` pixels covering ``length`` with at least ``overlap`` shared."""
    if length <= tile:
        return [0]
    count = -(-(length - overlap) // (tile - overlap))
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def non_max_suppression(found, iou=NMS_IOU):
    """``found`` without the detections that overlap a higher-scoring one by more than ``iou``."""
    if len(found) < 2:
        return found
    import torch
    from torchvision.ops import nms

    boxes = torch.tensor(np.stack([d.box for d in found]), dtype=torch.float64)
    keep = nms(boxes, torch.tensor([d.score for d in found], dtype=torch.float64), iou)
    return [found[int(i)] for i in keep]


class FaceDetector:
    """MTCNN over whole photos: ``detect(rgb_uint8)`` -> list of ``Detection``, highest score first."""

    def __init__(self, min_box=MIN_BOX, upsample=UPSAMPLE, factor=PYRAMID_FACTOR, thresholds=THRESHOLDS,
                 device="cpu"):
        if min_box <= 0 or upsample <= 0 or not 0 < factor < 1:
            raise UserError(f"detector settings min_box {min_box}, upsample {upsample}, factor {factor}: need "
                            f"min_box > 0, upsample > 0 and 0 < factor < 1")
        self.min_box, self.upsample = min_box, upsample
        self.mtcnn = load_mtcnn(min_box * upsample, factor, thresholds, device)

    def _run(self, image, zoom, min_box):
        """MTCNN on ``image`` enlarged ``zoom`` times, looking for boxes of ``min_box`` pixels of ``image``
        and more; coordinates in ``image``'s pixels."""
        height, width = image.shape[:2]
        size = (max(1, round(width * zoom)), max(1, round(height * zoom)))
        if min(size) < min_box * zoom:  # not even one pyramid level fits
            return []
        if zoom != 1:
            image = cv2.resize(image, size, interpolation=cv2.INTER_CUBIC if zoom > 1 else cv2.INTER_AREA)
        import torch

        self.mtcnn.min_face_size = min_box * zoom
        with torch.inference_mode():
            boxes, scores, points = self.mtcnn.detect(np.ascontiguousarray(image), landmarks=True)
        if boxes is None:
            return []
        return [Detection(np.asarray(b, np.float64) - DETECTOR_OFFSET, np.asarray(p, np.float64) - DETECTOR_OFFSET,
                          float(s)).moved(size[0] / width) for b, s, p in zip(boxes, scores, points)
                if math.isfinite(float(s))]

    def detect(self, photo):
        height, width = photo.shape[:2]
        if max(height, width) <= TILE:
            found = self._run(photo, self.upsample, self.min_box)
        else:
            found = []
            for y0 in tile_starts(height, TILE, OVERLAP):
                for x0 in tile_starts(width, TILE, OVERLAP):
                    tile = photo[y0:y0 + TILE, x0:x0 + TILE]
                    for d in self._run(tile, self.upsample, self.min_box):
                        d = d.moved(1.0, x0, y0)
                        cx, cy = (d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2
                        if self._in_core(cx, x0, width) and self._in_core(cy, y0, height):
                            found.append(d)
            reduce = min(1.0, max(REDUCED_SIDE / max(height, width), 24 / OVERLAP))
            found += [d for d in self._run(photo, reduce, OVERLAP / 2) if d.box[2] - d.box[0] > OVERLAP / 2]
        return sorted(non_max_suppression(found), key=lambda d: -d.score)

    @staticmethod
    def _in_core(centre, start, length):
        """Whether ``centre`` lies in the part of the tile at ``start`` that no neighbour covers better."""
        low = start + OVERLAP / 2 if start > 0 else -math.inf
        high = start + TILE - OVERLAP / 2 if start + TILE < length else math.inf
        return low <= centre < high
