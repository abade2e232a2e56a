"""torch.hub entry points: ``torch.hub.load(REPO_OR_DIR, "hybrimamba_tiny_x8")`` and
``torch.hub.load(REPO_OR_DIR, "hybrimamba", pretrained=False, **config)``.

Everything loads from the repository itself: no weights are downloaded.
"""
from models import HybriMamba as _HybriMamba
from models.pretrained import SHIPPED_MODEL as _SHIPPED_MODEL

dependencies = ["torch", "safetensors"]


def hybrimamba_tiny_x8(device="cpu", scan_backend="auto"):
    """The small 8x face model that ships with the repository (pretrained/README.md; not the paper's model),
    in eval mode: (B, 3, 128, 128) bicubic-upsampled 16x16 faces in [-1, 1] -> SR faces in [-1, 1]."""
    return _HybriMamba.from_pretrained(_SHIPPED_MODEL, device=device, scan_backend=scan_backend)


def hybrimamba(pretrained=False, weights=None, device="cpu", scan_backend="auto", **config):
    """A HybriMamba network: with ``pretrained`` the weights and configuration of ``weights`` (a .safetensors
    release file or folder; default the shipped model), else a new network of ``config`` (the paper's by
    default; e.g. ``embed_dim=16, depth=1``) in training mode."""
    if pretrained:
        if config:
            raise ValueError(f"pretrained=True takes its configuration from the file; drop {', '.join(config)}")
        return _HybriMamba.from_pretrained(weights or _SHIPPED_MODEL, device=device, scan_backend=scan_backend)
    return _HybriMamba(**config, scan_backend=scan_backend).to(device)
