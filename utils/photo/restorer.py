"""The network that restores aligned LR faces: loading it, and running it on one face.

Loading goes through ``load_model``, the one place that knows the checkpoint format (test.py's
loader: the network options stored in the file, EMA weights when present).
"""
import argparse

import numpy as np
import torch
from PIL import Image

from data.degradation import resize_bicubic
from data.image_tensor import to_tensor
from models import forward_padded
from models.checkpoint import load_checkpoint
from options.test_options import TestOptions
from utils.evaluation.inference import build_model
from utils.evaluation.pretrained import SHIPPED_MODEL


def load_model(path=SHIPPED_MODEL, device="cpu", scan_backend="auto"):
    """(network in eval mode on ``device``, scale factor, HR size, one-line description) from a checkpoint
    or release file (default: the shipped model); the scale and size are those it was trained for
    (default: the paper's 8 and 128)."""
    defaults = TestOptions().defaults()
    opt = argparse.Namespace(**{**defaults, "pretrain_model_path": str(path), "scan_backend": scan_backend})
    model, what = build_model(opt, device)
    ckpt = load_checkpoint(path)
    stored = ckpt.get("options") if isinstance(ckpt, dict) and isinstance(ckpt.get("options"), dict) else {}
    scale = int(stored.get("scale_factor", defaults["scale_factor"]))
    size = int(stored.get("load_size", defaults["load_size"]))
    return model, scale, size, what


class FaceRestorer:
    """Runs ``model`` (trained at ``scale``x on ``hr_size`` faces) on aligned LR faces.

    ``restore(lr)``: (n, n, 3) uint8 -> (n * scale, n * scale, 3) float32 in [0, 255]: PIL bicubic up
    by ``scale`` (the network's input, as in training), then the network.
    """

    def __init__(self, model, scale=8, hr_size=128, device="cpu"):
        self.model, self.scale, self.hr_size = model, scale, hr_size
        self.lr_size = hr_size // scale
        self.device = torch.device(device)

    @torch.inference_mode()
    def restore(self, lr):
        side = lr.shape[0] * self.scale
        up = np.asarray(resize_bicubic(Image.fromarray(lr), (side, side)))
        out = forward_padded(self.model, to_tensor(up)[None].to(self.device), multiple=4)[0]
        return out.float().clamp(-1, 1).add(1).mul(127.5).permute(1, 2, 0).cpu().numpy()
