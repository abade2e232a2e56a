"""Test inputs: a folder of LR faces of any size, each resized to the network's input size."""
import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from data.degradation import resize_bicubic
from utils.image_io import index_by_stem, read_rgb
from utils.image_tensor import to_tensor


class SingleDataset(Dataset):
    """The images directly in ``root`` (not recursive; stems must be unique since outputs are named
    by stem), sorted by stem. Each is converted to RGB by ``read_rgb`` (grayscale, alpha, 16-bit,
    with a notice) and PIL-bicubic resized to ``load_size`` x ``load_size`` when its size differs
    (16x16 LR, an already upsampled 128x128, anything else). ``load_size`` need not be a multiple
    of 4; the caller pads for the network.

    Item: ``{"LR": (3, S, S) float32 in [-1, 1], "path": str, "orig_size": (h, w)}``.
    """

    def __init__(self, root, load_size=128):
        self.paths = [path for _, path in sorted(index_by_stem(root).items())]
        self.load_size = load_size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        path = self.paths[index]
        img = read_rgb(path)
        lr = np.asarray(resize_bicubic(Image.fromarray(img), (self.load_size, self.load_size)))
        return {"LR": to_tensor(lr), "path": str(path), "orig_size": img.shape[:2]}
