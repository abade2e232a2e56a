"""Run a network that needs H and W to be multiples of some number on an image of any size."""
from torch.nn import functional as F


def forward_padded(model, x, multiple=4):
    """Pad (B, C, H, W) on the bottom/right to multiples of ``multiple``, run ``model``, crop back.

    Reflect padding where the image is large enough (it keeps edge statistics), replicate
    otherwise (reflect needs the pad to be smaller than the side).
    """
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if not pad_h and not pad_w:
        return model(x)
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    out = model(F.pad(x, (0, pad_w, 0, pad_h), mode=mode))
    return out[..., :h, :w]
