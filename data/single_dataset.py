"""Test inputs: a folder of LR faces of any size, each resized to the network's input size."""
import logging

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from data.degradation import resize_bicubic
from data.image_tensor import to_tensor
from utils.errors import UserError, first_few
from utils.image_io import index_by_stem, read_rgb

log = logging.getLogger("hybrimamba")


def readable_sizes(paths, skip_bad=False):
    """{path: (w, h)} of the ``paths`` that decode. An unreadable one raises ``UserError`` naming it,
    or with ``skip_bad`` is left out with a notice."""
    sizes, bad = {}, []
    for path in paths:
        try:
            h, w = read_rgb(path).shape[:2]
        except UserError as err:
            bad.append((path, err))
            continue
        sizes[path] = (w, h)
    if bad and not skip_bad:
        raise UserError(f"{bad[0][1]} (or pass --skip_bad_images to leave out the {len(bad)} unreadable input(s))")
    if bad:
        log.warning(f"notice: skipping {len(bad)} unreadable input(s): {first_few([p for p, _ in bad])}")
    if not sizes:
        raise UserError(f"none of the {len(paths)} input(s) is a readable image")
    return sizes


def notice_resizing(sizes, load_size, scale_factor):
    """One notice for inputs that are not square (stretched) and one for square inputs that are
    neither the LR size (load_size / scale_factor) nor load_size."""
    side = f"{load_size}x{load_size}"
    regular, expected = {load_size}, f"not {side}"
    if load_size % scale_factor == 0:
        lr = load_size // scale_factor
        regular.add(lr)
        expected = f"neither the LR size {lr}x{lr} (--load_size {load_size} / --scale_factor {scale_factor}) nor {side}"
    stretched = [p for p, (w, h) in sizes.items() if w != h]
    off_size = [p for p, (w, h) in sizes.items() if w == h and w not in regular]
    for paths, what, done in ((stretched, "not square", "stretched"), (off_size, expected, "resized")):
        if paths:
            w, h = sizes[paths[0]]
            log.warning(f"notice: {paths[0]} is {w}x{h}, {what}: {done} to {side} ({len(paths)} such input(s))")


class SingleDataset(Dataset):
    """The images directly in ``root`` (not recursive; stems must be unique since outputs are named
    by stem), sorted by stem. Each is converted to RGB by ``read_rgb`` (grayscale, alpha, 16-bit,
    with a notice) and PIL-bicubic resized to ``load_size`` x ``load_size`` when its size differs
    (16x16 LR, an already upsampled 128x128, anything else). ``load_size`` need not be a multiple
    of 4; the caller pads for the network.

    Every image is decoded once up front, so an unreadable one is an error (or, with ``skip_bad``,
    left out) before any output is written; non-square and unexpected sizes get a notice.

    Item: ``{"LR": (3, S, S) float32 in [-1, 1], "path": str, "orig_size": (h, w)}``.
    """

    def __init__(self, root, load_size=128, scale_factor=8, skip_bad=False):
        sizes = readable_sizes([path for _, path in sorted(index_by_stem(root).items())], skip_bad)
        notice_resizing(sizes, load_size, scale_factor)
        self.paths = list(sizes)
        self.load_size = load_size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        path = self.paths[index]
        img = read_rgb(path)
        lr = np.asarray(resize_bicubic(Image.fromarray(img), (self.load_size, self.load_size)))
        return {"LR": to_tensor(lr), "path": str(path), "orig_size": img.shape[:2]}
