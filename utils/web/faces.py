"""The web page's work on one uploaded face: its LR and bicubic versions and HybriMamba's result."""
import numpy as np
import torch
from PIL import Image

from data.degradation import center_square, resize_bicubic
from data.image_tensor import to_tensor, to_uint8
from models import forward_padded

TREAT_AS = ("auto", "lr", "hr")


def prepare(img, task, treat_as="auto"):
    """(LR face, HR face or None, how it was treated) for an RGB uint8 face (h, w, 3) and a model's ``task``.

    The face is cut to its centred square. "lr": it is the low-resolution face, used as it is; "hr": it is a
    sharp face, PIL-bicubic resized to the task's size and shrunk by the scale factor the way the training
    data was (the page then shows what the model restores and the original beside it); "auto": "lr" for
    faces up to twice the LR side (32x32 for the 8x task), "hr" for larger ones.
    """
    if treat_as not in TREAT_AS:
        raise ValueError(f"treat_as must be one of {', '.join(TREAT_AS)}, not {treat_as!r}")
    square = center_square(Image.fromarray(img))
    size, small = task["load_size"], task["load_size"] // task["scale_factor"]
    if treat_as == "auto":
        treat_as = "lr" if square.size[0] <= 2 * small else "hr"
    if treat_as == "lr":
        return np.asarray(square), None, "lr"
    hr = resize_bicubic(square, (size, size))
    return np.asarray(resize_bicubic(hr, (small, small))), np.asarray(hr), "hr"


@torch.inference_mode()
def restore_face(model, img, treat_as="auto"):
    """Run ``model`` (HybriMamba with its ``task``) on an RGB uint8 face; returns a dict of RGB uint8 arrays
    ``lr``, ``bicubic`` and ``sr`` (the task's size), ``hr`` (or None) and ``treated_as`` ("lr" or "hr")."""
    lr, hr, treated = prepare(img, model.task, treat_as)
    size = model.task["load_size"]
    bicubic = np.asarray(resize_bicubic(Image.fromarray(lr), (size, size)))
    device = next(model.parameters()).device
    sr = to_uint8(forward_padded(model, to_tensor(bicubic)[None].to(device))[0])
    return {"lr": lr, "bicubic": bicubic, "sr": sr, "hr": hr, "treated_as": treated}
