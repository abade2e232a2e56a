"""Conversion between uint8 RGB arrays and network tensors in [-1, 1]."""
import numpy as np
import torch


def to_tensor(img):
    """RGB uint8 (H, W, 3) -> float32 tensor (3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(127.5).sub_(1.0)


def to_uint8(tensor):
    """Tensor (3, H, W) or (B, 3, H, W) in [-1, 1] -> uint8 (H, W, 3) or (B, H, W, 3), rounded not truncated."""
    x = tensor.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).cpu()
    return x.movedim(-3, -1).numpy()
