"""LPIPS (the ``lpips`` package) with an offline path for the ImageNet backbone weights.

``lpips.LPIPS`` ships its calibrated linear layers but downloads the torchvision backbone
(AlexNet or VGG16) on first use. Offline, ``build_lpips(backbone_weights=PATH)`` builds the
network with a random backbone and loads a torchvision-format state_dict into it instead.
"""
import os
import urllib.error
import warnings
from contextlib import contextmanager

import torch

from data.image_tensor import to_tensor
from models.device import resolve_device
from utils.errors import UserError, first_few

LPIPS_NETS = ("alex", "vgg")
BACKBONE_ENV = "HYBRIMAMBA_LPIPS_BACKBONE"


def backbone_key_map(lpips_model):
    """torchvision key -> key in ``lpips_model.net``, e.g. 'features.3.weight' -> 'slice2.3.weight'.

    lpips splits torchvision's ``features`` Sequential into ``slice1..slice5`` and names each
    child by its torchvision index, so the index survives as the second name component.
    """
    return {"features." + name.split(".", 1)[1]: name for name, _ in lpips_model.net.named_parameters()}


def read_backbone_weights(path):
    """A torchvision-format state_dict from ``path``; unreadable files are a ``UserError``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: backbone weights file not found; pass a torchvision AlexNet/VGG16 "
                        f"state_dict") from None
    except Exception as err:  # torch raises several unrelated types for a file that is not a checkpoint
        raise UserError(f"{path}: not a readable torch state_dict ({type(err).__name__}); "
                        "pass a torchvision AlexNet/VGG16 state_dict saved with torch.save") from None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"{path}: expected a state_dict (name -> tensor); pass a torchvision AlexNet/VGG16 state_dict")
    return state


def load_backbone(lpips_model, state, path):
    """Load a torchvision AlexNet/VGG16 state_dict (full, or only ``features.*``) read from ``path``
    into the LPIPS backbone."""
    key_map = backbone_key_map(lpips_model)
    net = lpips_model.pnet_type
    missing = [k for k in key_map if k not in state]
    if missing:
        raise UserError(f"{path}: missing backbone keys {first_few(missing, 4)}; expected a torchvision '{net}' "
                        f"state_dict")
    own = lpips_model.net.state_dict()
    wrong = [k for k, name in key_map.items() if state[k].shape != own[name].shape]
    if wrong:
        k = wrong[0]
        raise UserError(f"{path}: '{k}' has shape {tuple(state[k].shape)}, LPIPS-{net} needs "
                        f"{tuple(own[key_map[k]].shape)}; is this a {net} state_dict (--net)?")
    lpips_model.net.load_state_dict({name: state[k] for k, name in key_map.items()}, strict=True)


def build_lpips(net="alex", backbone_weights=None, device="cpu"):
    """An ``lpips.LPIPS`` network in eval mode without gradients, on ``device``.

    ``backbone_weights`` (default: the ``HYBRIMAMBA_LPIPS_BACKBONE`` environment variable) is a
    torchvision-format state_dict for offline use; without it torchvision downloads the backbone.
    """
    import lpips  # deferred: importing it pulls torchvision models in

    if net not in LPIPS_NETS:
        raise UserError(f"--net {net!r} is not supported; use one of {', '.join(LPIPS_NETS)}")
    backbone_weights = backbone_weights or os.environ.get(BACKBONE_ENV) or None
    with warnings.catch_warnings():
        # torchvision deprecates the pretrained= argument lpips still passes
        warnings.simplefilter("ignore", UserWarning)
        if backbone_weights:
            state = read_backbone_weights(backbone_weights)
            model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
            load_backbone(model, state, backbone_weights)
        else:
            try:
                model = lpips.LPIPS(net=net, verbose=False)
            except (urllib.error.URLError, OSError, RuntimeError) as err:
                raise UserError(f"could not fetch the torchvision {net} backbone for LPIPS ({err}); offline, pass "
                                f"--backbone_weights PATH (or set {BACKBONE_ENV}) to a torchvision "
                                f"state_dict") from None
    model.requires_grad_(False)
    return model.eval().to(resolve_device(device) if isinstance(device, str) else device)


# The smallest side each backbone's pooling stack accepts (measured: AlexNet fails at 30 px).
MIN_SIDE = {"alex": 31, "vgg": 16}


@contextmanager
def exact_float32_convolutions():
    """cuDNN convolutions without TF32 (its default on Ampere and later), which would move LPIPS
    scores by about 1e-3 between a GPU and the CPU."""
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved


@torch.no_grad()
def lpips_distance(model, gt, sr):
    """LPIPS per image: ``gt``, ``sr`` (B, 3, H, W) RGB in [-1, 1] -> (B,) float tensor on the CPU."""
    min_side = MIN_SIDE.get(model.pnet_type, 1)
    if min(gt.shape[-2:]) < min_side:
        raise UserError(f"LPIPS ({model.pnet_type}) needs images of at least {min_side}x{min_side} pixels, "
                        f"these are {gt.shape[-2]}x{gt.shape[-1]}; skip LPIPS for such small faces")
    dev = next(model.parameters()).device
    with exact_float32_convolutions():
        return model(gt.to(dev), sr.to(dev)).flatten().float().cpu()


def lpips_distance_uint8(model, gts, srs):
    """LPIPS per pair of equal-size RGB uint8 (H, W, 3) arrays -> list of floats."""
    return lpips_distance(model, torch.stack([to_tensor(g) for g in gts]),
                          torch.stack([to_tensor(s) for s in srs])).tolist()
