"""Checkpoint files: atomic saving, safe loading (``weights_only``) and loading weights into a network.

A training checkpoint is a dict with the keys ``model`` (state_dict without ``module.``
prefixes), ``ema`` (state_dict of the EMA weights, optional), ``optimizer``, ``scheduler``,
``scaler``, ``epoch`` (epochs completed), ``iteration``, ``batch_in_epoch`` (batches of the
current epoch done), ``rng`` and ``options`` (a dict of plain
values). Only tensors and plain Python types are stored, so every file loads with
``torch.load(weights_only=True)``, which cannot execute code from the file.
"""
import contextlib
import os
import pickle
import re
import uuid
import zipfile
from pathlib import Path

import torch

from utils.distributed import unwrap
from utils.errors import UserError

MODULE_PREFIX = "module."
# The options that define the network's shape; a checkpoint's values name the config it needs.
NETWORK_OPTIONS = ("embed_dim", "depth", "n_layers", "expand", "d_state", "mlp_ratio")
SHOWN_KEYS = 5


def save_checkpoint(path, state):
    """Write ``state`` to ``path`` atomically: a temp file in the same folder, fsync, then rename.

    A crash or an exception while writing leaves the previous file at ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh unique name opened with "x" (not mkstemp): the file gets the umask's permissions, not 0600.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise UserError(f"{path}: cannot write the checkpoint ({err.strerror or err}); "
                            f"free disk space or choose another --ckpt_dir") from None
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder):
    """Make the rename itself durable (POSIX); platforms without directory fsync skip it."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load_checkpoint(path):
    """Load a checkpoint onto the CPU with ``weights_only=True``; unreadable files raise ``UserError``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file; check --pretrain_model_path / --ckpt_dir and --name")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path}: not a PyTorch checkpoint (corrupt, truncated or a legacy format); "
                        f"re-save it with torch.save")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        reason = f"it stores a {found.group(1)} object" if found else "it stores objects other than tensors"
        raise UserError(f"{path}: refused by the safe loader (weights_only): {reason}; "
                        f"re-save the weights as a plain state_dict") from None
    except (RuntimeError, EOFError, OSError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path}: corrupt or truncated checkpoint ({reason})") from None


def strip_module_prefix(state_dict):
    """A state_dict with the ``module.`` prefix of DataParallel/DDP removed from every key."""
    return {(k[len(MODULE_PREFIX):] if k.startswith(MODULE_PREFIX) else k): v for k, v in state_dict.items()}


def _is_state_dict(obj):
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def select_weights(ckpt, prefer_ema=True):
    """(state_dict, which) from a loaded checkpoint: ``which`` is 'EMA', 'raw' or 'bare state_dict'."""
    if isinstance(ckpt, dict) and _is_state_dict(ckpt.get("model")):
        if prefer_ema and _is_state_dict(ckpt.get("ema")):
            return strip_module_prefix(ckpt["ema"]), "EMA"
        return strip_module_prefix(ckpt["model"]), "raw"
    if _is_state_dict(ckpt):
        return strip_module_prefix(ckpt), "bare state_dict"
    return None, None


def _network_config_hint(ckpt):
    options = ckpt.get("options") if isinstance(ckpt, dict) else None
    if not isinstance(options, dict) or not all(k in options for k in NETWORK_OPTIONS):
        return ""
    flags = " ".join(f"--{k} {options[k]}" for k in NETWORK_OPTIONS)
    return f"; the checkpoint was trained with {flags}"


def _shown(keys):
    more = f" (+{len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else ""
    return ", ".join(keys[:SHOWN_KEYS]) + more


def assign_weights(model, state, source, ckpt=None):
    """Load ``state`` (a state_dict) into ``model`` strictly; a mismatch raises ``UserError``.

    ``source`` names the file in the message; ``ckpt`` (the whole loaded checkpoint) lets the
    message name the network options the weights were trained with.
    """
    target = unwrap(model)
    expected = target.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = [f"{label}: {_shown(keys)}" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("shape (file vs network)", shapes)) if keys]
        raise UserError(f"{source}: weights do not fit this network ({'; '.join(parts)})"
                        f"{_network_config_hint(ckpt)}")
    target.load_state_dict(state)


def load_weights(model, path, prefer_ema=True):
    """Load network weights from ``path`` into ``model``; returns a one-line description.

    ``path`` may hold a training checkpoint (EMA weights are used when present and
    ``prefer_ema``, else the raw ones) or a bare state_dict; ``module.`` prefixes are stripped.
    Missing, unexpected or differently shaped entries raise ``UserError`` listing the first
    few and, when the checkpoint stores its options, the network configuration it needs.
    """
    ckpt = load_checkpoint(path)
    state, which = select_weights(ckpt, prefer_ema)
    if state is None:
        raise UserError(f"{path}: holds neither a training checkpoint (key 'model') nor a state_dict of tensors")
    assign_weights(model, state, path, ckpt)
    where = f" (iteration {int(ckpt['iteration'])})" if isinstance(ckpt, dict) and "iteration" in ckpt else ""
    return f"{which} weights from {path}{where}"
