"""Training data order and augmentation that a resumed run reproduces exactly.

Two pieces make every batch a pure function of (seed, epoch, position in the epoch):

- ``ResumableSampler`` is a ``DistributedSampler`` (order shuffled by a generator seeded with
  seed + epoch, each rank taking its share) that yields ``(epoch, index)`` keys and can skip
  the samples of the batches a checkpoint had already consumed.
- ``SeededSamples`` wraps the dataset and serves key ``(epoch, index)`` with the global
  Python/NumPy/torch RNGs seeded from (seed, epoch, index) for the duration of that one item,
  so the augmentation of a sample does not depend on which worker loads it, on how many
  items were loaded before, or on whether the run was resumed. The caller's RNG states are
  restored afterwards.
"""
import random
from contextlib import contextmanager
from itertools import islice

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from utils.errors import UserError
from utils.training.stop_signals import ignore_stop_signals, workers_start_shielded


def sample_seed(seed, epoch, index):
    """A 32-bit seed mixed from (seed, epoch, index) by NumPy's SeedSequence."""
    return int(np.random.SeedSequence([seed % 2**64, epoch, index]).generate_state(1)[0])


@contextmanager
def seeded_global_rngs(seed):
    """Seed Python's ``random``, NumPy's legacy global RNG and torch's CPU generator; restore them on exit."""
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


class SeededSamples(Dataset):
    """``dataset`` indexed by ``(epoch, index)`` keys; each item drawn under ``seeded_global_rngs``."""

    def __init__(self, dataset, seed):
        self.dataset = dataset
        self.seed = seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        with seeded_global_rngs(sample_seed(self.seed, epoch, index)):
            return self.dataset[index]


class ResumableSampler(DistributedSampler):
    """This rank's shuffled order for an epoch as ``(epoch, index)`` keys, minus a consumed prefix."""

    def __init__(self, dataset, num_replicas=1, rank=0, seed=0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.skip = 0

    def set_position(self, epoch, skip_samples):
        """Serve epoch ``epoch`` from its ``skip_samples``-th sample on."""
        self.set_epoch(epoch)
        self.skip = skip_samples

    def __iter__(self):
        for index in islice(super().__iter__(), self.skip, None):
            yield self.epoch, index

    def __len__(self):
        return super().__len__() - self.skip

    def samples_per_epoch(self):
        """Samples this rank sees in a whole epoch (ceil(len(dataset) / num_replicas))."""
        return self.num_samples


class DataError(UserError):
    """An image of the data set cannot be used (unreadable, corrupt); raised by ``batches``."""


def batches(loader):
    """Iterate ``loader``, its worker processes started shielded from stop signals
    (``workers_start_shielded``); a ``UserError`` raised while loading, also in a worker process (which
    the DataLoader re-raises with the worker's traceback in its message), comes out as a one-line
    ``DataError``."""
    with workers_start_shielded():
        iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except UserError as err:
            text = str(err)
            if text.startswith("Caught "):  # the traceback's last line is "utils.errors.UserError: <the message>"
                text = text.strip().splitlines()[-1].split(": ", 1)[-1]
            raise DataError(text) from None
        yield batch


def build_train_loader(dataset, batch_size, num_workers, seed, rank=0, world_size=1, pin_memory=False):
    """(loader, sampler, iterations per epoch) for exact-resume training (incomplete last batch dropped)."""
    samples = SeededSamples(dataset, seed)
    sampler = ResumableSampler(samples, num_replicas=world_size, rank=rank, seed=seed)
    iters_per_epoch = sampler.samples_per_epoch() // batch_size
    if iters_per_epoch == 0:
        raise UserError(f"{len(dataset)} training image(s) over {world_size} process(es) do not fill one batch of "
                        f"{batch_size}; lower --batch_size or add images")
    # Its own generator, so creating an iterator never draws from the global torch RNG.
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(samples, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=True,
                        pin_memory=pin_memory, generator=generator, persistent_workers=num_workers > 0,
                        worker_init_fn=ignore_stop_signals)
    return loader, sampler, iters_per_epoch
