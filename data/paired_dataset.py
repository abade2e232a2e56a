"""Validation/test pairs: an LR folder and an HR folder matched by file stem."""
import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from data.degradation import resize_bicubic
from data.image_tensor import to_tensor
from utils.errors import UserError, first_few
from utils.image_io import pair_by_stem, read_rgb


class PairedDataset(Dataset):
    """Pairs ``lr_root/<stem>.*`` with ``hr_root/<stem>.*`` (extensions may differ).

    LR images of any size are PIL-bicubic resized to ``load_size`` (the network input). HR images
    are the ground truth and are never resampled: one that is not ``load_size`` x ``load_size``
    is an error naming it, since resizing it would silently change the metrics.

    Item: ``{"LR": (3, S, S), "HR": (3, S, S), "path": str (the LR file)}``, float32 in [-1, 1].
    """

    def __init__(self, lr_root, hr_root, load_size=128):
        pairs, missing = pair_by_stem(hr_root, lr_root, allow_missing=True)
        if missing:
            raise UserError(f"{len(missing)} image(s) without a partner between {lr_root} and {hr_root} "
                            f"({first_few(missing)}); LR and HR files are paired by file name, make the folders match")
        self.pairs = [(lr, hr) for _, hr, lr in pairs]
        self.load_size = load_size

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, index):
        lr_path, hr_path = self.pairs[index]
        hr = read_rgb(hr_path)
        if hr.shape[:2] != (self.load_size, self.load_size):
            raise UserError(f"{hr_path}: HR is {hr.shape[1]}x{hr.shape[0]}, expected "
                            f"{self.load_size}x{self.load_size}; "
                            f"prepare HR crops with python -m data.prepare_celeba or set --load_size")
        size = (self.load_size, self.load_size)
        lr = np.asarray(resize_bicubic(Image.fromarray(read_rgb(lr_path)), size))
        return {"LR": to_tensor(lr), "HR": to_tensor(hr), "path": str(lr_path)}
