"""Aligning a detected face to the training framing, and cutting out the network's LR input.

The training faces are CelebA's aligned images cropped by ``data.prepare_celeba``'s box and
resized to 128x128. ``TEMPLATE`` holds where the five MTCNN landmarks of such a face lie in that
128x128 frame: the mean over the 780 faces of CelebA's validation split in the development sample
(cropped like the training data, landmarks by ``utils.photo.detector`` with MIN_BOX 40; every face
found; per-point standard deviation 1.4-1.8 pixels for the eyes, 1.7-5.2 for nose and mouth). A
face is aligned by the similarity transform (Umeyama's weighted least squares) that maps its
landmarks onto the template.
"""
from dataclasses import dataclass

import cv2
import numpy as np

from utils.photo import geometry

FRAME = 128
# (x, y) in the 128x128 frame, corner coordinates: left eye, right eye, nose, left and right mouth
# corner (as seen in the picture).
TEMPLATE = np.array([
    [47.22, 45.31],
    [83.91, 45.27],
    [64.89, 68.02],
    [49.09, 83.99],
    [81.87, 83.89],
])
# The weights of the five points in the fit. CelebA's aligned images were made from the eye positions,
# and MTCNN's nose is its least steady point (standard deviation 5 pixels in the frame): weighting the
# eyes 2 and the nose 0.3 cut the rms error of the fitted frame's corners by 8-18 % against equal
# weights, on faces of 20, 28, 40 and 128 pixels (5.7 instead of 6.2 pixels at 20, 3.2 instead of 3.9
# at 128, in frame pixels).
WEIGHTS = (2.0, 2.0, 0.3, 1.0, 1.0)


@dataclass
class AlignedFace:
    """``to_frame`` maps photo coordinates into the 128x128 frame; ``face_size`` is the side of that
    frame in photo pixels; ``lr`` is the network's (n, n, 3) uint8 input."""
    to_frame: np.ndarray
    face_size: float
    lr: np.ndarray


def frame_transform(landmarks):
    """Photo -> 128x128 frame: the similarity that best maps ``landmarks`` (5, 2) onto ``TEMPLATE``."""
    return geometry.umeyama(landmarks, TEMPLATE, WEIGHTS)


def warp_region(photo, to_region, width, height):
    """The ``width`` x ``height`` image seen through ``to_region`` (photo -> region coordinates):
    bicubic, edge pixels repeated beyond the photo. Reads only the pixels it needs."""
    return cv2.warpAffine(photo, geometry.to_opencv(to_region), (width, height), flags=cv2.INTER_CUBIC,
                          borderMode=cv2.BORDER_REPLICATE)


def lr_side(face_size, lr_size):
    """The side of the network's input for a face of ``face_size`` pixels: its own size, so that every
    input pixel spans ``scale`` output pixels as in training, and at least ``lr_size``."""
    return max(lr_size, round(face_size))


def align_face(photo, landmarks, lr_size=16):
    """Cut the face with ``landmarks`` out of ``photo`` (H, W, 3) uint8, aligned to the training framing,
    at its own resolution (``lr_side``): a rotation and a shift, almost no rescaling. A face smaller
    than ``lr_size`` is enlarged to it (bicubic) and restored from what there is.

    Reducing a larger face to ``lr_size`` instead (the training degradation) loses what the photo has:
    on CelebA faces of 20-40 pixels placed in photos with known landmarks, that made the restored face
    0.2-4.0 dB worse than bicubic, where restoring it at its own size gained 0.6-1.0 dB (see the README).
    """
    to_frame = frame_transform(landmarks)
    face_size = FRAME / geometry.scale_of(to_frame)
    side = lr_side(face_size, lr_size)
    crop = warp_region(photo, geometry.compose(geometry.scaling(side / FRAME), to_frame), side, side)
    return AlignedFace(to_frame, face_size, crop)
