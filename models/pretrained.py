"""Release files: HybriMamba weights as safetensors, with the network's configuration and provenance.

A release file is a ``.safetensors`` file: the network's state_dict (float32 tensors, no pickle,
nothing executable) and, in its string-to-string metadata:

- ``format`` = ``hybrimamba`` and ``format_version`` = ``1``: what the file is, so a foreign or
  future file is refused with a reason instead of loading wrong;
- ``config``: the network configuration as JSON (``HybriMambaConfig.to_dict()``, checked by its
  ``from_dict`` on reading; fields left out take their defaults);
- ``task``: JSON ``{"scale_factor": 8, "load_size": 128}``, the task the weights were trained for;
- ``provenance``: JSON of plain values, e.g. the training command, iterations, which weights
  (EMA or raw) and scores;
- ``weights_sha256``: a checksum of the tensors (keys, dtypes, shapes, bytes), so damage is found.

``write_release`` and ``read_release`` are the only code that writes and reads this format: the
model's ``save_pretrained``/``from_pretrained``, the export tool and test.py use them.
"""
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from models.config import HybriMambaConfig
from utils.atomic_file import atomic_output
from utils.errors import UserError

SUFFIX = ".safetensors"
# The model that ships with the project (pretrained/README.md): what test.sh, the demo, torch.hub and
# the web page use by default.
SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "pretrained" / "HybriMamba-tiny-x8.safetensors"
FOLDER_FILE = "model.safetensors"  # the file save_pretrained writes into a folder
FORMAT = "hybrimamba"
FORMAT_VERSION = "1"
TASK_TYPES = {"scale_factor": int, "load_size": int}
DEFAULT_TASK = {"scale_factor": 8, "load_size": 128}


@dataclass
class Release:
    """What a release file holds: weights, network configuration, task and provenance."""
    state_dict: dict
    config: HybriMambaConfig
    task: dict = field(default_factory=lambda: dict(DEFAULT_TASK))
    provenance: dict = field(default_factory=dict)


def weights_checksum(state_dict):
    """sha256 (hex) over a state_dict's keys (sorted), dtypes, shapes and tensor bytes."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _safetensors(feature):
    """The safetensors package (with its torch part), or a one-line error naming it."""
    try:
        import safetensors
        import safetensors.torch
    except ImportError:
        raise UserError(f"{feature} needs the package 'safetensors': pip install -r requirements.txt") from None
    return safetensors


def _typed(values, types, what, source):
    """``values`` (a dict from JSON) checked against ``types``: the known keys, each converted to its type."""
    if not isinstance(values, dict):
        raise UserError(f"{source}: its {what} is not a JSON object; the file is damaged or not a HybriMamba release")
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise UserError(f"{source}: unknown {what} key(s) {', '.join(unknown)}; the file needs a newer HybriMamba")
    typed = {}
    for key, value in values.items():
        kind = types[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
            raise UserError(f"{source}: {what} '{key}' is {value!r}, not a number of type {kind.__name__}")
        typed[key] = kind(value)
    return typed


def release_path(path):
    """The release file that ``path`` names: the file itself, or in a folder its ``model.safetensors`` or
    its only ``.safetensors`` file."""
    path = Path(path)
    if path.is_dir():
        if (path / FOLDER_FILE).is_file():
            return path / FOLDER_FILE
        found = sorted(path.glob(f"*{SUFFIX}"))
        if len(found) != 1:
            what = "no" if not found else f"{len(found)}"
            raise UserError(f"{path}: {what} {SUFFIX} files and no {FOLDER_FILE}; name the file to load")
        return found[0]
    if not path.is_file():
        raise UserError(f"{path}: no such file or folder; pass a {SUFFIX} file or a folder written by save_pretrained")
    return path


def read_release(path):
    """The :class:`Release` in ``path`` (a file, or a folder as :func:`release_path` says), checked: a
    damaged, truncated or foreign file raises a one-line ``UserError`` naming it."""
    path = release_path(path)
    if path.suffix != SUFFIX:
        raise UserError(f"{path}: not a {SUFFIX} file; from a training checkpoint make one with "
                        f"`python -m utils.training.export_model {path} OUT{SUFFIX}`")
    safetensors = _safetensors("reading a .safetensors model")
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as err:  # safetensors raises its own error types, and OSError for truncated files
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path}: not a readable safetensors file ({reason}); the file is damaged, "
                        f"copy it again") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{path}: a safetensors file but not a HybriMamba release (no format '{FORMAT}' in its "
                        f"metadata); load its state_dict with safetensors.torch.load_file")
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: release format version {meta.get('format_version')!r}; this HybriMamba reads "
                        f"version {FORMAT_VERSION}, update it")
    try:
        config, task, provenance = (json.loads(meta.get(key, "{}")) for key in ("config", "task", "provenance"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: damaged metadata ({err.msg}); copy the file again") from None
    config = HybriMambaConfig.from_dict(config, path) if isinstance(config, dict) else None
    if config is None:
        raise UserError(f"{path}: its config is not a JSON object; the file is damaged or not a HybriMamba release")
    if not isinstance(provenance, dict):
        raise UserError(f"{path}: its provenance is not a JSON object; copy the file again")
    if weights_checksum(state) != meta.get("weights_sha256"):
        raise UserError(f"{path}: the weights do not match the checksum stored with them (the file is damaged); "
                        f"copy it again")
    return Release(state, config, {**DEFAULT_TASK, **_typed(task, TASK_TYPES, "task", path)}, provenance)


def is_release(path):
    """Whether ``path`` is a file this module wrote (a HybriMamba release, with a readable header)."""
    try:
        with _safetensors("reading a .safetensors model").safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") == FORMAT
    except Exception:  # any unreadable file is not one of ours
        return False


def metadata(config, task, provenance, path):
    """The string-to-string metadata that describes a network (module docstring), checked; ``path`` names the
    file in errors. ONNX exports carry it too."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION,
            "config": json.dumps(config.to_dict(), sort_keys=True),
            "task": json.dumps(_typed(task, TASK_TYPES, "task", path), sort_keys=True),
            "provenance": json.dumps(provenance, sort_keys=True, default=str)}


def write_release(path, release, replace=False):
    """Write ``release`` to ``path`` (a ``.safetensors`` file) atomically: a temporary file in the same
    folder, then a rename, so an interrupted write leaves no partial file and no damaged old one. An
    existing file that is not a release is replaced only with ``replace``."""
    path = Path(path)
    if path.suffix != SUFFIX:
        raise UserError(f"{path}: a release file ends in {SUFFIX}")
    safetensors = _safetensors("writing a .safetensors model")
    if path.exists() and not replace and not is_release(path):
        raise UserError(f"{path}: exists and is not a HybriMamba release; it is not replaced, choose another path")
    state = {k: v.detach().cpu().contiguous() for k, v in release.state_dict.items()}
    meta = metadata(release.config, release.task, release.provenance, path)
    meta["weights_sha256"] = weights_checksum(state)
    # Serialised here and written by Python: safetensors' own save_file makes the file private (0600).
    data = safetensors.torch.save(state, metadata=meta)
    with atomic_output(path, "the model") as tmp, open(tmp, "xb") as f:
        f.write(data)
    return path
