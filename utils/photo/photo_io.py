"""Reading photos as they are meant to be seen, and enlarging them in bounded memory."""
import numpy as np
from PIL import Image

from utils.image_io import exif_orientation, read_rgb

STRIP_ROWS = 256   # input rows enlarged at a time
STRIP_MARGIN = 3   # rows of context around a strip: more than the bicubic filter's reach (2 pixels)


def read_photo(path):
    """RGB uint8 (H, W, 3), upright (``read_rgb`` applies the EXIF orientation); grey, alpha and 16-bit
    handled by ``read_rgb`` (with a notice). Returns ``(photo, orientation)``."""
    photo = read_rgb(path)
    return photo, exif_orientation(np.fromfile(str(path), dtype=np.uint8))


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
