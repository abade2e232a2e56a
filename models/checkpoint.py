"""Checkpoint files: atomic saving, safe loading (``weights_only``) and loading weights into a network.

In models/ because training, test.py, the export and the demo all read and write these files (and the
engines must not import each other's internals); it needs only torch and the bottom layer.

A training checkpoint is a dict with the keys ``model`` (state_dict without ``module.``
prefixes), ``ema`` (state_dict of the EMA weights, optional), ``optimizer``, ``scheduler``,
``scaler``, ``epoch`` (epochs completed), ``iteration``, ``batch_in_epoch`` (batches of the
current epoch done), ``rng``, ``options`` (a dict of plain values) and ``checksums`` (``weights_checksum`` of
``model`` and ``ema``, and ``tree_checksum`` of everything else under ``training_state``: the optimizer,
the position, the options...; added by ``save_checkpoint``, checked by ``load_checkpoint``). Only tensors
and plain Python types are stored, so every file loads with ``torch.load(weights_only=True)``,
which cannot execute code from the file.
"""
import contextlib
import hashlib
import logging
import pickle
import re
import shlex
import zipfile
from pathlib import Path

import torch

from models.config import HybriMambaConfig
from models.device import unwrap
from models.pretrained import DEFAULT_TASK, TASK_TYPES, Release, read_release, weights_checksum
from models.pretrained import SUFFIX as RELEASE_SUFFIX
from utils.atomic_file import TEMP_NAME, atomic_output
from utils.errors import UserError, first_few

log = logging.getLogger("hybrimamba")
MODULE_PREFIX = "module."
CHECKSUMMED = ("model", "ema")
REST = "training_state"  # the checksum of every other entry but "checksums"


class WeightsMismatch(UserError):
    """A state_dict whose keys or shapes do not fit the network."""


def tree_checksum(obj):
    """sha256 (hex) over a nested structure of dicts (keys sorted), lists, tuples, tensors and plain values,
    each with its type: the optimizer state, the position, the RNG states and the options of a checkpoint."""
    digest = hashlib.sha256()

    def add(node):
        if isinstance(node, torch.Tensor):
            tensor = node.detach().cpu().contiguous()
            digest.update(f"T{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(node, dict):
            digest.update(f"D{len(node)}|".encode())
            for key in sorted(node, key=repr):
                digest.update(f"{type(key).__name__}:{key!r}=".encode())
                add(node[key])
        elif isinstance(node, (list, tuple)):
            digest.update(f"{type(node).__name__}{len(node)}|".encode())
            for item in node:
                add(item)
        else:
            digest.update(f"{type(node).__name__}:{node!r}|".encode())

    add(obj)
    return digest.hexdigest()


def _rest(state):
    return {k: v for k, v in state.items() if k not in (*CHECKSUMMED, "checksums")}


def with_checksums(state):
    """``state`` plus ``checksums`` of its weights and of the rest when it is a training checkpoint (a dict
    with 'model')."""
    if not (isinstance(state, dict) and _is_state_dict(state.get("model"))):
        return state
    checksums = {k: weights_checksum(state[k]) for k in CHECKSUMMED if _is_state_dict(state.get(k))}
    checksums[REST] = tree_checksum(_rest(state))
    return {**state, "checksums": checksums}


def verify_checksums(ckpt, path):
    """Damage to a checkpoint (its weights or the rest of its training state) raises ``UserError``; a checkpoint
    without checksums gets a notice. Files written before the rest was checksummed have only the weights'."""
    stored = ckpt.get("checksums") if isinstance(ckpt, dict) else None
    if stored is None:
        if select_weights(ckpt)[0] is not None:
            log.warning(f"notice: {path}: no weights checksum stored (an older checkpoint); "
                        f"damage to it cannot be detected")
        return
    for key, digest in stored.items():
        if key == REST:
            if tree_checksum(_rest(ckpt)) != digest:
                raise UserError(f"{path}: the training state (optimizer, position, options) does not match the "
                                f"checksum stored with it (the file is damaged); use another checkpoint (e.g. an "
                                f"iter_<N>.pt) or copy it again")
        elif not _is_state_dict(ckpt.get(key)) or weights_checksum(ckpt[key]) != digest:
            raise UserError(f"{path}: the '{key}' weights do not match the checksum stored with them (the file is "
                            f"damaged); use another checkpoint (e.g. an iter_<N>.pt) or copy it again")


def check_finite(state, source):
    """A state_dict with NaN or inf values raises ``UserError`` naming those tensors."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise UserError(f"{source}: non-finite values (NaN or inf) in {len(bad)} tensor(s): {first_few(bad)}; "
                        f"these weights are unusable, use an earlier checkpoint")


class _WriteErrors:
    """A binary file for torch.save that keeps the OSError of a failed write in ``error``: torch's zip writer
    turns it into a RuntimeError ("enforce fail ... unexpected pos") when the disk fills early in a save."""

    def __init__(self, file):
        self.file = file
        self.error = None

    def write(self, data):
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = err
            raise

    def __getattr__(self, name):  # the file's other methods, as torch or a caller may use them
        return getattr(self.file, name)


def save_checkpoint(path, state):
    """Write ``state`` (with ``checksums``) to ``path`` atomically: a temp file in the same folder, fsync,
    then rename.

    A crash or an exception while writing leaves the previous file at ``path`` untouched; a full disk
    (or another failed write) raises ``UserError``.
    """
    # A fresh unique name opened with "x" (not mkstemp): the file gets the umask's permissions, not 0600.
    with atomic_output(path, "the checkpoint", "free disk space or choose another --ckpt_dir") as tmp, \
            open(tmp, "xb") as f:
        writer = _WriteErrors(f)
        try:
            torch.save(with_checksums(state), writer)
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise


def remove_interrupted_saves(folder):
    """Delete the temporary files of saves into ``folder`` that a kill interrupted; returns (count, bytes).

    Only for a folder no other process is saving into (the run that owns it, at its start).
    """
    found = [p for p in Path(folder).glob(".*.tmp") if TEMP_NAME.fullmatch(p.name) and p.is_file()]
    size = 0
    for path in found:
        size += path.stat().st_size
        path.unlink()
    return len(found), size


def load_checkpoint(path):
    """Load a checkpoint onto the CPU with ``weights_only=True`` and verify its checksums; unreadable
    or damaged files raise ``UserError``."""
    path = Path(path)
    if path.suffix == RELEASE_SUFFIX:
        raise UserError(f"{path}: a release file holds weights only, no training state to resume; start a new run "
                        f"from it with --pretrain_model_path and a new --name")
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.pt"))
        raise UserError(f"{path}: is a folder; pass the checkpoint file in it"
                        + (f" ({first_few(found)})" if found else " (e.g. latest.pt)"))
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file; check --pretrain_model_path / --ckpt_dir and --name")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path}: not a PyTorch checkpoint (corrupt, truncated or a legacy format); "
                        f"re-save it with torch.save")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        reason = f"it stores a {found.group(1)} object" if found else "it stores objects other than tensors"
        raise UserError(f"{path}: refused by the safe loader (weights_only): {reason}; "
                        f"re-save the weights as a plain state_dict") from None
    except (RuntimeError, EOFError, OSError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path}: corrupt or truncated checkpoint ({reason})") from None
    verify_checksums(ckpt, path)
    return ckpt


def is_release_path(path):
    """Whether ``path`` names a release (a .safetensors file, or a folder holding one, as save_pretrained
    writes); any other folder is named as one by ``load_checkpoint``."""
    path = Path(path)
    return path.suffix == RELEASE_SUFFIX or (path.is_dir() and any(path.glob(f"*{RELEASE_SUFFIX}")))


def load_model_file(path):
    """A file of weights, loaded as a checkpoint dict: a torch checkpoint (``load_checkpoint``), or a release
    (``.safetensors`` or a folder, ``models.pretrained``) as ``{"model", "options": config and task,
    "provenance"}`` plus ``iteration`` when the release records it."""
    if not is_release_path(path):
        return load_checkpoint(path)
    release = read_release(path)
    ckpt = {"model": release.state_dict, "options": {**release.config.to_dict(), **release.task},
            "provenance": release.provenance}
    if isinstance(release.provenance.get("iterations"), int):
        ckpt["iteration"] = release.provenance["iterations"]
    if release.provenance.get("weights") in ("EMA", "raw"):  # which weights it holds, as an export says
        ckpt["weights"] = release.provenance["weights"]
    return ckpt


def strip_module_prefix(state_dict):
    """A state_dict with the ``module.`` prefix of DataParallel/DDP removed from every key."""
    return {(k[len(MODULE_PREFIX):] if k.startswith(MODULE_PREFIX) else k): v for k, v in state_dict.items()}


def _is_state_dict(obj):
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def select_weights(ckpt, prefer_ema=True):
    """(state_dict, which) from a loaded checkpoint: ``which`` is 'EMA', 'raw' or 'bare state_dict'.

    An exported file holds one set of weights as ``model`` and says which in ``weights``."""
    if isinstance(ckpt, dict) and _is_state_dict(ckpt.get("model")):
        if prefer_ema and _is_state_dict(ckpt.get("ema")):
            return strip_module_prefix(ckpt["ema"]), "EMA"
        exported = "ema" not in ckpt and ckpt.get("weights") in ("EMA", "raw")
        return strip_module_prefix(ckpt["model"]), ckpt["weights"] if exported else "raw"
    if _is_state_dict(ckpt):
        return strip_module_prefix(ckpt), "bare state_dict"
    return None, None


def stored_config(ckpt, source):
    """The ``HybriMambaConfig`` a loaded checkpoint's ``options`` name, or None when they name none (a bare
    state_dict, a file not written by train.py). Options saved before a config field existed give it its
    default; invalid values raise ``UserError`` naming ``source`` and the key."""
    options = ckpt.get("options") if isinstance(ckpt, dict) else None
    if not isinstance(options, dict) or not any(f.name in options for f in HybriMambaConfig.option_fields()):
        return None
    return HybriMambaConfig.from_options(options, source)


def _network_config_hint(ckpt, source):
    with contextlib.suppress(UserError):
        config = stored_config(ckpt, source)
        return f"; the checkpoint was trained with {config.flags()}" if config else ""
    return ""


def assign_weights(model, state, source, ckpt=None):
    """Load ``state`` (a state_dict) into ``model`` strictly; a mismatch raises ``WeightsMismatch``,
    NaN or inf values ``UserError``.

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
        parts = [f"{label}: {first_few(keys)}" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("shape (file vs network)", shapes)) if keys]
        raise WeightsMismatch(f"{source}: weights do not fit this network ({'; '.join(parts)})"
                        f"{_network_config_hint(ckpt, source)}")
    check_finite(state, source)
    target.load_state_dict(state)


def load_weights(model, path, prefer_ema=True, ckpt=None):
    """Load network weights from ``path`` (or its already loaded ``ckpt``) into ``model``; returns a
    one-line description.

    ``path`` may hold a training checkpoint (EMA weights are used when present and
    ``prefer_ema``, else the raw ones), a bare state_dict or a release (.safetensors); ``module.``
    prefixes are stripped.
    Missing, unexpected or differently shaped entries raise ``UserError`` listing the first
    few and, when the checkpoint stores its options, the network configuration it needs; NaN or
    inf values raise ``UserError`` naming the tensors.
    """
    if ckpt is None:
        ckpt = load_model_file(path)
    state, which = select_weights(ckpt, prefer_ema)
    if state is None:
        raise UserError(f"{path}: holds neither a training checkpoint (key 'model') nor a state_dict of tensors")
    if "provenance" in ckpt:  # a release holds one set of weights; its provenance says which
        which = ckpt["provenance"].get("weights", "released")
    assign_weights(model, state, path, ckpt)
    where = f" (iteration {int(ckpt['iteration'])})" if isinstance(ckpt, dict) and "iteration" in ckpt else ""
    return f"{which} weights from {path}{where}"


def training_command(options):
    """``python train.py`` with the flags the run typed (``options['explicit']``), paths shortened to their
    last part (they name folders of the machine it ran on); None when the checkpoint does not record them."""
    typed = options.get("explicit")
    if not isinstance(typed, (list, tuple)) or not typed:
        return None
    words = ["python", "train.py"]
    for key in typed:
        value = options.get(key)
        if isinstance(value, bool):
            words += [f"--{key}"] if value else []
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        words += [f"--{key}", *(Path(str(v)).name if "/" in str(v) or "\\" in str(v) else str(v) for v in values)]
    return shlex.join(words)


def read_as_release(src, prefer_ema=True):
    """The ``models.pretrained.Release`` in ``src``: a release file read as it is, or a torch checkpoint's
    weights (EMA when present and ``prefer_ema``), network options, task and provenance."""
    if is_release_path(src):
        return read_release(src)
    ckpt = load_checkpoint(src)
    state, which = select_weights(ckpt, prefer_ema)
    if state is None or which == "bare state_dict" or not isinstance(ckpt.get("options"), dict):
        raise UserError(f"{src}: not a training checkpoint of train.py (it needs the keys 'model' and 'options')")
    options = ckpt["options"]
    config = stored_config(ckpt, src)
    if config is None:
        raise UserError(f"{src}: its options name no network settings; it was not written by train.py")
    task = {key: options[key] for key in TASK_TYPES if key in options}
    provenance = {**ckpt.get("provenance", {}), "weights": ckpt.get("weights", which), "source": Path(src).name}
    if "iteration" in ckpt:
        provenance["iterations"] = int(ckpt["iteration"])
    command = training_command(options)
    if command:
        provenance["training_command"] = command
    return Release(state, config, {**DEFAULT_TASK, **task}, provenance)
