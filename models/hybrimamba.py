"""HybriMamba: the U-shaped encoder-decoder of HybriMamba Stages for face super-resolution."""
from pathlib import Path

import torch
from torch import nn

from models.checkpoint import assign_weights
from models.config import HybriMambaConfig, check_scan_backend
from models.pretrained import DEFAULT_TASK, FOLDER_FILE, SUFFIX, Release, read_release, write_release
from models.sampling import Downsample, Upsample
from models.stage import Stage

NO_WEIGHT_DECAY = ("A_logs", "Ds")
LEAKY_SLOPE = 0.01  # PyTorch's default, as in the authors' nn.LeakyReLU(inplace=True) (docs/architecture.md §2)
INIT_STD = 0.02  # the authors' init_weights('normal', 0.02) (docs/architecture.md §3.6)


class HybriMamba(nn.Module):
    """(B, 3, H, W) bicubic-upsampled LR in [-1, 1] -> (B, 3, H, W) SR, H and W multiples of 4.

    Widths with C = embed_dim: encoder C, 2C, 4C at H, H/2, H/4; bottleneck 4C; decoder 8C, 4C,
    2C (each decoder stage sees the concatenation with its skip). The network predicts a
    residual added to its input.

    Built from a ``HybriMambaConfig`` or from its fields as keywords (``HybriMamba(embed_dim=8)``);
    ``model.config`` is the config. ``scan_backend`` is one of ``models.config.SCAN_BACKENDS``.
    """

    def __init__(self, config=None, *, scan_backend="auto", **fields):
        super().__init__()
        if config is None:
            config = HybriMambaConfig.from_dict(fields, "HybriMamba(...)")
        elif fields:
            raise TypeError(f"HybriMamba: pass a config or its fields ({', '.join(fields)}), not both")
        check_scan_backend(scan_backend)
        self.config = config
        in_chans, c = config.in_chans, config.embed_dim
        # What a release file says about the weights (models/pretrained.py); from_pretrained fills them.
        self.task, self.provenance = dict(DEFAULT_TASK), {}

        def stage(dim):
            return Stage(dim, depth=config.depth, n_layers=config.n_layers, mlp_ratio=config.mlp_ratio,
                         expand=config.expand, d_state=config.d_state, scan_backend=scan_backend)

        self.shallow = nn.Sequential(nn.Conv2d(in_chans, c, 3, padding=1), nn.LeakyReLU(LEAKY_SLOPE, inplace=True))
        self.enc0 = stage(c)
        self.down1 = Downsample(c, 2 * c)
        self.enc1 = stage(2 * c)
        self.down2 = Downsample(2 * c, 4 * c)
        self.enc2 = stage(4 * c)
        self.bottleneck = stage(4 * c)
        self.dec1 = stage(8 * c)
        self.up1 = Upsample(8 * c, 2 * c)
        self.dec2 = stage(4 * c)
        self.up2 = Upsample(4 * c, c)
        self.dec3 = stage(2 * c)
        self.reconstruct = nn.Sequential(nn.Conv2d(2 * c, in_chans, 3, padding=1),
                                         nn.LeakyReLU(LEAKY_SLOPE, inplace=True))
        self.apply(_init_weights)

    def forward(self, x):
        h, w = x.shape[-2:]
        if h % 4 or w % 4:
            raise ValueError(f"input size {h}x{w} is not a multiple of 4; use models.forward_padded")
        s0 = self.enc0(self.shallow(x))
        s1 = self.enc1(self.down1(s0))
        s2 = self.enc2(self.down2(s1))
        d = self.dec1(torch.cat((self.bottleneck(s2), s2), dim=1))
        d = self.dec2(torch.cat((self.up1(d), s1), dim=1))
        d = self.dec3(torch.cat((self.up2(d), s0), dim=1))
        return self.reconstruct(d) + x

    @classmethod
    def from_pretrained(cls, path, device="cpu", scan_backend="auto"):
        """The network stored in a release file (``.safetensors``, or a folder written by ``save_pretrained``),
        with its weights, in eval mode on ``device``. ``config`` holds its configuration, ``task`` its
        scale factor and size, ``provenance`` how it was made. A damaged or foreign file raises ``UserError``."""
        return cls.from_release(read_release(path), device, scan_backend, source=path)

    @classmethod
    def from_release(cls, release, device="cpu", scan_backend="auto", source="the release"):
        """``from_pretrained`` for a ``models.pretrained.Release`` already read; ``source`` names it in errors."""
        model = cls(release.config, scan_backend=scan_backend)
        assign_weights(model, release.state_dict, source)  # mismatched or non-finite weights: a one-line error
        model.task, model.provenance = dict(release.task), dict(release.provenance)
        return model.eval().to(device)

    def save_pretrained(self, path, provenance=None):
        """Write the weights, configuration, task and provenance (``provenance`` adds to the model's) as a
        release: to ``path`` if it ends in .safetensors, else to ``path/model.safetensors``. A file there
        that is not a HybriMamba release is never replaced. Returns the file's path."""
        path = Path(path)
        file = path if path.suffix == SUFFIX else path / FOLDER_FILE
        provenance = {**self.provenance, **(provenance or {})}
        release = Release(self.state_dict(), self.config, dict(self.task), provenance)
        return write_release(file, release)

    def set_scan_backend(self, name):
        """Switch the selective-scan backend of every Image-SSM (one of models.config.SCAN_BACKENDS)."""
        check_scan_backend(name)
        for module in self.modules():
            if hasattr(module, "scan_backend"):
                module.scan_backend = name

    def set_fused(self, enabled):
        """True (the default): the Image-SSM runs the fused scan kernels of its backend (cpp, triton), and
        training recomputes cheap activations in the backward instead of keeping them (about a third of
        the memory). False: the unfused path (cross-scan copies, every activation kept), the reference
        the fused one is tested against. Outputs and gradients are the same either way."""
        for module in self.modules():
            if hasattr(module, "fused"):
                module.fused = enabled

    def set_activation_checkpointing(self, enabled):
        """Store only each HybriMamba block's input for the backward and recompute the rest: the
        same gradients for less memory and one more forward pass of compute."""
        for module in self.modules():
            if isinstance(module, Stage):
                module.activation_checkpointing = enabled

    def optimizer_param_groups(self, weight_decay):
        """AdamW groups: every parameter decays except the SSM's A_log and D (docs/architecture.md §3.3)."""
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if param.requires_grad:
                (no_decay if name.rsplit(".", 1)[-1] in NO_WEIGHT_DECAY else decay).append(param)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _init_weights(module):
    """The authors' effective init (docs/architecture.md §3.6): every Conv2d and Linear N(0, 0.02) with zero bias;
    LayerNorm 1 and 0. The stacked SSM parameters are not modules and keep their own init."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.normal_(module.weight, std=INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
