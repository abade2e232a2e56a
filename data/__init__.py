"""Datasets (CelebA HR folder, LR/HR pairs, LR only) and the CelebA/LR preparation scripts.

The dataset classes are imported on first use so that ``python -m data.make_lr`` and
``python -m data.prepare_celeba`` start without loading torch.
"""
import importlib

from utils.errors import UserError

_MODULES = {"CelebADataset": "data.celeba_dataset", "PairedDataset": "data.paired_dataset",
            "SingleDataset": "data.single_dataset"}
DATASETS = {"celeba": "CelebADataset", "paired": "PairedDataset", "single": "SingleDataset"}


def __getattr__(name):
    if name in _MODULES:
        return getattr(importlib.import_module(_MODULES[name]), name)
    raise AttributeError(f"module 'data' has no attribute '{name}'")


def create_dataset(name, **kwargs):
    """The dataset registered under ``name`` (celeba | paired | single), built with ``kwargs``."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset '{name}'; choose one of {', '.join(DATASETS)}")
    return __getattr__(DATASETS[name])(**kwargs)


__all__ = ["CelebADataset", "PairedDataset", "SingleDataset", "create_dataset"]
