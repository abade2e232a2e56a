"""The paper's degradation (PIL bicubic down by the scale factor, then PIL bicubic back up) and
the PIL geometry it relies on.

All resampling in the data pipeline goes through ``resize_bicubic`` so that training,
validation, test LR folders and the bicubic baseline use one and the same filter.
"""
import numpy as np
from PIL import Image


def resize_bicubic(img, size):
    """PIL bicubic resize of a PIL image to ``size = (width, height)``; a no-op copy at equal size."""
    size = (int(size[0]), int(size[1]))
    if img.size == size:
        return img.copy()
    return img.resize(size, Image.BICUBIC)


def center_square(img):
    """Largest centred square of a PIL image (W, H) -> (min(W, H), min(W, H))."""
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return img.crop((left, top, left + side, top + side))


def bicubic_degrade(hr, scale_factor):
    """HR PIL image (W, H) -> ``(lr_small, lr_up)``: PIL bicubic to (W // s, H // s), then back to (W, H)."""
    w, h = hr.size
    if w // scale_factor < 1 or h // scale_factor < 1:
        raise ValueError(f"image {w}x{h} is smaller than the scale factor {scale_factor}")
    lr_small = resize_bicubic(hr, (w // scale_factor, h // scale_factor))
    return lr_small, resize_bicubic(lr_small, (w, h))


def bicubic_degrade_array(hr, scale_factor):
    """``bicubic_degrade`` on RGB uint8 arrays: (H, W, 3) -> ((H/s, W/s, 3), (H, W, 3)) uint8."""
    lr_small, lr_up = bicubic_degrade(Image.fromarray(hr), scale_factor)
    return np.asarray(lr_small), np.asarray(lr_up)
