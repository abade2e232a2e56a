"""The paper's training augmentation: random horizontal flip and a random scale in [1.0, 1.3].

The scale is applied as a random resized crop: a square window of side
``round(load_size / s)`` is cut at a random position and PIL-bicubic resized back to
``load_size``. That equals zooming the image by ``s`` and cropping ``load_size`` pixels, up to
sub-pixel placement, at a fraction of the cost; ``s = 1`` gives the image unchanged.

Randomness comes from Python's stdlib ``random`` (the module-level generator unless an explicit
``random.Random`` is passed). PyTorch's DataLoader reseeds ``random`` in every worker from its
own generator, and the trainer seeds it in the main process, so a seeded run (and its resume)
draws the same augmentations.
"""
import random

from PIL import Image

from data.degradation import resize_bicubic

SCALE_RANGE = (1.0, 1.3)


def random_flip_scale(img, flip_prob=0.5, scale_range=SCALE_RANGE, rng=None):
    """Augment a square PIL image (S, S) -> PIL image (S, S): flip, then random resized crop."""
    rng = rng or random
    size = img.size[0]
    if img.size[1] != size:
        raise ValueError(f"augmentation expects a square image, got {img.size[0]}x{img.size[1]}")
    if rng.random() < flip_prob:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    scale = rng.uniform(*scale_range)
    crop = min(size, max(1, round(size / scale)))
    left = rng.randint(0, size - crop)
    top = rng.randint(0, size - crop)
    if crop == size:
        return img
    return resize_bicubic(img.crop((left, top, left + crop, top + crop)), (size, size))
