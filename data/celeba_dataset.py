"""Training/validation set: a folder of HR faces, degraded on the fly (docs/architecture.md §4)."""
import logging
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from data.augmentation import random_flip_scale
from data.degradation import bicubic_degrade, center_square, resize_bicubic
from data.image_tensor import to_tensor
from utils.errors import UserError
from utils.image_io import list_images, read_rgb

log = logging.getLogger("hybrimamba")


def hr_folder(root):
    """The folder of HR images: ``root/HR`` when ``root`` is a prepared folder (data.prepare_celeba
    layout, whose LR/ and LR_bicubic/ siblings must not be read as HR), else ``root``."""
    root = Path(root)
    if (root / "HR").is_dir():
        log.warning(f"{root}: reading HR images from {root / 'HR'} (prepared layout)")
        return root / "HR"
    return root


class CelebADataset(Dataset):
    """HR faces from a folder (recursive), with LR made by ``bicubic_degrade``.

    Each image is brought to ``load_size`` x ``load_size`` first: a square of another size is
    bicubic-resized, a non-square one is centre-cropped to a square then resized (one notice;
    prepare raw CelebA with ``python -m data.prepare_celeba`` for the standard framing). With
    ``augment`` the §4 flip/scale augmentation follows (randomness from Python's ``random``,
    see ``data.augmentation``); without it the item is deterministic (validation).

    Item: ``{"HR": (3, S, S), "LR": (3, S, S) bicubic-upsampled, "path": str}``, float32 in [-1, 1].

    A corrupt file raises ``UserError`` naming it; with ``skip_bad`` it is reported once and the
    next index is served instead.
    """

    def __init__(self, root, load_size=128, scale_factor=8, augment=True, skip_bad=False):
        if load_size % scale_factor:
            raise UserError(f"load_size {load_size} is not divisible by scale_factor {scale_factor}; "
                            f"use e.g. --load_size {load_size // scale_factor * scale_factor}")
        self.root = hr_folder(root)
        self.paths = list_images(self.root)
        self.load_size = load_size
        self.scale_factor = scale_factor
        self.augment = augment
        self.skip_bad = skip_bad
        self._reported_bad = set()
        self._resize_noticed = False

    def __len__(self):
        return len(self.paths)

    def _load_hr(self, path):
        img = Image.fromarray(read_rgb(path))
        target = (self.load_size, self.load_size)
        if img.size != target:
            if not self._resize_noticed:
                self._resize_noticed = True
                log.warning(f"{path}: {img.size[0]}x{img.size[1]} brought to {self.load_size}x{self.load_size} "
                            f"(centre square crop if not square, then bicubic); further ones silently")
            img = resize_bicubic(center_square(img), target)
        return img

    def _read_or_skip(self, index):
        """(index actually served, HR image); bad files are skipped forward when ``skip_bad``."""
        for offset in range(len(self.paths)):
            i = (index + offset) % len(self.paths)
            try:
                return i, self._load_hr(self.paths[i])
            except UserError as err:
                if not self.skip_bad:
                    raise
                if i not in self._reported_bad:
                    self._reported_bad.add(i)
                    log.warning(f"skipping bad image: {err}")
        raise UserError(f"no readable image among the {len(self.paths)} files of the dataset")

    def __getitem__(self, index):
        i, hr = self._read_or_skip(index)
        if self.augment:
            hr = random_flip_scale(hr)
        _, lr = bicubic_degrade(hr, self.scale_factor)
        return {"HR": to_tensor(np.asarray(hr)), "LR": to_tensor(np.asarray(lr)), "path": str(self.paths[i])}
