"""Datasets (CelebA HR folder, LR/HR pairs, LR only) and the CelebA/LR preparation scripts."""
from data.celeba_dataset import CelebADataset
from data.paired_dataset import PairedDataset
from data.single_dataset import SingleDataset
from utils.errors import UserError

DATASETS = {"celeba": CelebADataset, "paired": PairedDataset, "single": SingleDataset}


def create_dataset(name, **kwargs):
    """The dataset class registered under ``name`` (celeba | paired | single), built with ``kwargs``."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset '{name}'; choose one of {', '.join(DATASETS)}")
    return DATASETS[name](**kwargs)


__all__ = ["CelebADataset", "PairedDataset", "SingleDataset", "create_dataset"]
