"""The HybriMamba network and its parts, one class per box of the paper's figures (docs/architecture.md §2-3).

    box (section of docs/architecture.md)           class                   module
    the network (2)                                HybriMamba              models.hybrimamba
    a stage, the paper's "HybriMamba Blocks" (3)   Stage                   models.stage
      one of its ``depth`` blocks: mixer, LEM      HybriMambaBlock         models.stage
      the paper's "HybriMamba": the Mamba mixer    HybriMambaMixer         models.mamba_block
        one of its ``n_layers`` residual layers    MambaLayer              models.mamba_block
        MambaBlock (3.1)                           MambaBlock              models.mamba_block
        FWM (3.2)                                  FWM                     models.fwm
        Image-SSM (3.3)                            ImageSSM                models.image_ssm
      LEM (3.5)                                    LEM                     models.lem
    Down / Up (2)                                  Downsample, Upsample    models.sampling

``HybriMambaConfig`` (models.config) holds the network's shape. The names are imported on first use
(PEP 562), so ``import models.config`` loads no torch (options/ builds --help with it).
"""
import importlib

_HOMES = {
    "HybriMamba": "models.hybrimamba",
    "HybriMambaConfig": "models.config",
    "Stage": "models.stage",
    "HybriMambaBlock": "models.stage",
    "HybriMambaMixer": "models.mamba_block",
    "MambaLayer": "models.mamba_block",
    "MambaBlock": "models.mamba_block",
    "FWM": "models.fwm",
    "ImageSSM": "models.image_ssm",
    "LEM": "models.lem",
    "Downsample": "models.sampling",
    "Upsample": "models.sampling",
    "forward_padded": "models.padding",
}

__all__ = list(_HOMES)


def __getattr__(name):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_HOMES])
