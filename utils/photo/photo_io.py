"""Reading photos as they are meant to be seen, and enlarging them in bounded memory."""
import contextlib

import numpy as np
from PIL import Image

from utils.image_io import read_rgb

EXIF_ORIENTATION = 0x0112
STRIP_ROWS = 256   # input rows enlarged at a time
STRIP_MARGIN = 3   # rows of context around a strip: more than the bicubic filter's reach (2 pixels)


def exif_orientation(path):
    """The EXIF orientation tag of ``path`` (1-8; 1 when absent or unreadable)."""
    # A format PIL cannot parse has no orientation PIL could read.
    with contextlib.suppress(Exception), Image.open(path) as img:
        value = int(img.getexif().get(EXIF_ORIENTATION, 1))
        return value if 1 <= value <= 8 else 1
    return 1


def orient(img, orientation):
    """(H, W, C) ``img`` turned upright for an EXIF ``orientation`` (as PIL's ImageOps.exif_transpose)."""
    turns = {1: img, 2: img[:, ::-1], 3: img[::-1, ::-1], 4: img[::-1],
             5: img.transpose(1, 0, 2), 6: np.rot90(img, -1), 7: np.rot90(img, 2).transpose(1, 0, 2),
             8: np.rot90(img, 1)}
    return np.ascontiguousarray(turns[orientation])


def read_photo(path):
    """RGB uint8 (H, W, 3), upright; grey, alpha and 16-bit handled by ``read_rgb`` (with a notice).
    Returns ``(photo, orientation)``."""
    orientation = exif_orientation(path)
    return orient(read_rgb(path), orientation), orientation


def upscale(photo, scale):
    """``photo`` PIL-bicubic enlarged ``scale`` times, written strip by strip into one uint8 array (the
    same pixels as one PIL resize; peak memory the output plus a strip)."""
    height, width = photo.shape[:2]
    out = np.empty((height * scale, width * scale, 3), np.uint8)
    for y0 in range(0, height, STRIP_ROWS):
        y1 = min(height, y0 + STRIP_ROWS)
        c0, c1 = max(0, y0 - STRIP_MARGIN), min(height, y1 + STRIP_MARGIN)
        strip = np.asarray(Image.fromarray(photo[c0:c1]).resize((width * scale, (c1 - c0) * scale), Image.BICUBIC))
        out[y0 * scale:y1 * scale] = strip[(y0 - c0) * scale:(y1 - c0) * scale]
    return out
