"""Group photos made from aligned faces at known places: the ground truth for the photo pipeline's
tests, its benchmark and the demo.

Each face comes from a source image with a known *frame*: the square that the training framing
crops (for CelebA's aligned images ``data.prepare_celeba``'s box). It is drawn, with the rest of its
source image around it and feathered edges, into a high-resolution photo at ``scale`` times the
target size: frame side ``size * scale`` pixels, centred at ``centre * scale``, turned by ``angle``.
The low-resolution photo is that one PIL-bicubic reduced by ``scale``, the degradation the network
was trained on; so the high-resolution photo is the ground truth of an x``scale`` enhancement.
"""
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from data.degradation import resize_bicubic
from data.prepare_celeba import DEFAULT_BOX
from utils.photo import geometry
from utils.photo.alignment import FRAME

FEATHER = 0.06  # of the pasted source's shorter side: the width of its soft edge


@dataclass
class FaceSource:
    """An RGB uint8 image and its frame square (left, top, side) in its pixels."""
    image: np.ndarray
    frame: tuple


@dataclass
class Placement:
    """Where a face goes in the low-resolution photo: frame ``centre`` (x, y), frame side ``size`` in
    pixels, ``angle`` in degrees (counter-clockwise)."""
    centre: tuple
    size: float
    angle: float = 0.0


@dataclass
class GroupPhoto:
    """``lr`` (H, W, 3) and ``hr`` (H*scale, W*scale, 3) uint8; ``frames[i]`` maps face i's 128x128
    frame into ``lr``'s coordinates."""
    lr: np.ndarray
    hr: np.ndarray
    scale: int
    frames: list


def celeba_source(image):
    """A CelebA aligned image (178x218) with the training crop box as its frame."""
    left, top, right, _ = DEFAULT_BOX
    return FaceSource(image, (left, top, right - left))


def smooth_background(width, height, rng, cell):
    """A smooth random field (H, W, 3) uint8 of muted colours, random every ``cell`` pixels, bicubic between."""
    shape = (max(2, height // cell + 2), max(2, width // cell + 2))
    grey = rng.uniform(60, 190, size=(*shape, 1))
    small = np.clip(grey + rng.uniform(-25, 25, size=(*shape, 3)), 0, 255).astype(np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def soft_edges(height, width, feather):
    """Float32 (H, W) mask: 1 inside, ramping linearly to 0 over ``feather`` pixels at the edges."""
    ramp_y = np.clip(np.minimum(np.arange(height) + 0.5, height - np.arange(height) - 0.5) / feather, 0, 1)
    ramp_x = np.clip(np.minimum(np.arange(width) + 0.5, width - np.arange(width) - 0.5) / feather, 0, 1)
    return np.outer(ramp_y, ramp_x).astype(np.float32)


def draw_face(hr, source, frame_to_hr):
    """Draw ``source`` into ``hr`` (in place) so that its frame lands where ``frame_to_hr`` maps the
    128x128 frame; only the face's bounding region of ``hr`` is touched."""
    left, top, side = source.frame
    source_to_frame = geometry.compose(geometry.scaling(FRAME / side), geometry.translation(-left, -top))
    source_to_hr = geometry.compose(frame_to_hr, source_to_frame)
    # Shrink or enlarge the source to the target scale with PIL first (antialiased), then only rotate.
    zoom = geometry.scale_of(source_to_hr)
    h, w = source.image.shape[:2]
    size = (max(1, round(w * zoom)), max(1, round(h * zoom)))
    resized = np.asarray(resize_bicubic(Image.fromarray(source.image), size))
    resized_to_source = np.array([[w / size[0], 0.0, 0.0], [0.0, h / size[1], 0.0]])
    resized_to_hr = geometry.compose(source_to_hr, resized_to_source)
    x0, y0, x1, y1 = geometry.bounding_box(resized_to_hr, size[0], size[1])
    x0, y0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
    x1, y1 = min(hr.shape[1], int(np.ceil(x1))), min(hr.shape[0], int(np.ceil(y1)))
    if x1 <= x0 or y1 <= y0:
        return
    to_region = geometry.compose(geometry.translation(-x0, -y0), resized_to_hr)
    m = geometry.to_opencv(to_region)
    patch = cv2.warpAffine(resized, m, (x1 - x0, y1 - y0), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    alpha = cv2.warpAffine(soft_edges(size[1], size[0], FEATHER * min(size)), m, (x1 - x0, y1 - y0),
                           flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)[..., None]
    region = hr[y0:y1, x0:x1].astype(np.float32)
    hr[y0:y1, x0:x1] = np.clip(np.round(region + alpha * (patch.astype(np.float32) - region)), 0, 255).astype(np.uint8)


def group_photo(sources, placements, width, height, scale=8, seed=0, background=None):
    """A ``width`` x ``height`` photo with ``sources[i]`` placed at ``placements[i]`` and its x``scale``
    ground truth. ``background``: an RGB uint8 image resized to the ground truth's size (default a
    smooth random field)."""
    rng = np.random.default_rng(seed)
    hr_size = (width * scale, height * scale)
    if background is None:
        hr = smooth_background(*hr_size, rng, cell=16 * scale)
    else:
        hr = np.array(resize_bicubic(Image.fromarray(background), hr_size))
    frames = []
    for source, place in zip(sources, placements):
        frame_to_lr = geometry.similarity(place.size / FRAME, np.radians(place.angle), (FRAME / 2, FRAME / 2),
                                          place.centre)
        draw_face(hr, source, geometry.compose(geometry.scaling(scale), frame_to_lr))
        frames.append(frame_to_lr)
    lr = np.asarray(resize_bicubic(Image.fromarray(hr), (width, height)))
    return GroupPhoto(lr, hr, scale, frames)


def grid_layout(sizes, angles=None, per_row=6, gap=0.5):
    """Placements for faces of ``sizes`` pixels in rows of ``per_row`` (each cell sized for the largest
    face with its CelebA surroundings, plus ``gap`` of it around), and the photo's (width, height)."""
    angles = angles or [0.0] * len(sizes)
    big = max(sizes)
    cell_w, cell_h = (1.3 + gap) * big, (1.6 + gap) * big
    # The frame's centre sits 0.96 of its side below the top of a CelebA image and 0.63 above its bottom.
    placements = [Placement(((i % per_row + 0.5) * cell_w, (i // per_row) * cell_h + (gap / 2 + 0.96) * big),
                            size, angle) for i, (size, angle) in enumerate(zip(sizes, angles))]
    rows = -(-len(sizes) // per_row)
    return placements, (int(np.ceil(min(len(sizes), per_row) * cell_w)), int(np.ceil(rows * cell_h)))


def face_region(photo, index, inset=0.1):
    """Bool (H, W) mask of face ``index``'s frame square in ``photo.hr``, less ``inset`` of its side at each
    edge (where the pasted face fades into the background)."""
    lo, hi = inset * FRAME, (1 - inset) * FRAME
    corners = geometry.apply(geometry.compose(geometry.scaling(photo.scale), photo.frames[index]),
                             [(lo, lo), (hi, lo), (hi, hi), (lo, hi)])
    mask = np.zeros(photo.hr.shape[:2], np.uint8)
    cv2.fillConvexPoly(mask, np.round(corners - 0.5).astype(np.int32), 1)
    return mask.astype(bool)


def match_faces(detections, photo, tolerance=0.25):
    """For each placed face, the index of the detection whose eye midpoint lies within ``tolerance`` of
    the face's size from where the template puts it (None if none); each detection matches once."""
    from utils.photo.alignment import TEMPLATE

    taken, matches = set(), []
    for frame in photo.frames:
        size = FRAME * geometry.scale_of(frame)
        eyes = geometry.apply(frame, TEMPLATE[:2]).mean(0)
        near = [(np.linalg.norm(d.landmarks[:2].mean(0) - eyes), i) for i, d in enumerate(detections) if i not in taken]
        near = [(dist, i) for dist, i in near if dist < tolerance * size]
        matches.append(min(near)[1] if near else None)
        if near:
            taken.add(matches[-1])
    return matches


def region_psnr(truth, image, mask):
    """PSNR (dB, RGB, peak 255) of ``image`` against ``truth`` over the pixels of ``mask``."""
    diff = truth[mask].astype(np.float64) - image[mask].astype(np.float64)
    return float(10 * np.log10(255.0 ** 2 / max(np.mean(diff ** 2), 1e-12)))
