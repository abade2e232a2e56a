"""Recomputation of cheap activations in the backward, for the layers' memory-lean training path."""
from torch.utils.checkpoint import checkpoint


def recompute(fn, *args):
    """fn(*args), keeping only ``args`` for the backward, which runs fn again (under the same autocast
    state) to differentiate it. For cheap, deterministic parts (no randomness: the RNG state is not
    saved); the result and gradients are those of fn itself."""
    return checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=False)
