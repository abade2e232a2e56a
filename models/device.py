"""Where the network runs: a ``--device`` name resolved to a usable torch.device, and the bare network
inside a DataParallel/DDP wrapper.

Here in models/ because every engine and script that runs the network needs them (param.py, LPIPS,
training, checkpoint loading) and models/ is the lowest layer that may use torch; the training-only
device plan (DataParallel, torchrun) is in utils.training.distributed.
"""
import torch
from torch import nn

from utils.errors import UserError


def resolve_device(name="auto"):
    """``name`` ('auto': cuda when available, else cpu) as a torch.device this machine can use;
    otherwise ``UserError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: not a device torch knows; use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as err:  # a device this build or machine lacks, or a wrong index
        reason = str(err).strip().splitlines()[0].split(". ")[0] if str(err).strip() else type(err).__name__
        raise UserError(f"--device {name}: not usable here ({reason}); use --device cpu") from None
    return device


def unwrap(model):
    """The bare network inside a DataParallel/DDP wrapper (or the network itself)."""
    return model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model
