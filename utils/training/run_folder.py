"""A training run's folders before it starts: both must be writable, temp files of an interrupted save
are removed, and a new run never replaces an earlier run's checkpoints (``--overwrite`` moves that run
aside instead)."""
import contextlib
import errno
import tempfile
import time
from pathlib import Path

import torch

from models.checkpoint import remove_interrupted_saves
from utils.errors import UserError, first_few

SHOWN = 4


def _latest_iteration(path):
    """The iteration stored in ``path``, read lazily (mmap); None when the file does not say."""
    with contextlib.suppress(Exception):
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["iteration"])
    return None


def _describe(checkpoints):
    names = []
    for path in checkpoints:
        iteration = _latest_iteration(path) if path.name == "latest.pt" else None
        names.append(path.name if iteration is None else f"{path.name} at iteration {iteration}")
    names.sort(key=lambda name: not name.startswith("latest.pt"))
    return first_few(names, SHOWN)


def _aside(folder, stamp):
    """A free sibling name for ``folder``: <name>.replaced-<stamp>[-N]."""
    candidate, n = folder.with_name(f"{folder.name}.replaced-{stamp}"), 1
    while candidate.exists():
        n += 1
        candidate = folder.with_name(f"{folder.name}.replaced-{stamp}-{n}")
    return candidate


def check_writable(folder, flag, value, create=True):
    """``UserError`` naming ``flag`` (given as ``value``) unless a file can be made in ``folder`` (created with
    its parents when ``create``, else only checked if it exists): a path through a file or a read-only
    folder is found at start-up instead of at the first save, after hours of training."""
    folder = Path(folder)
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        elif not folder.exists():
            return
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        reason = {errno.EEXIST: "a file, not a folder", errno.ENOTDIR: "a path through a file"}.get(
            err.errno, err.strerror or str(err))
        raise UserError(f"{flag} {value}: cannot write in {folder} ({reason}); choose another {flag}") from None


def check_output_folders(ckpt_dir, exp_dir, opt):
    """Check that the run can write its checkpoints (``ckpt_dir``, in --ckpt_dir) and logs (``exp_dir``, in
    --checkpoints_dir): the two parent folders are created, the run's own folders checked if they exist."""
    for folder, flag, value in ((ckpt_dir, "--ckpt_dir", opt.ckpt_dir),
                                (exp_dir, "--checkpoints_dir", opt.checkpoints_dir)):
        check_writable(folder.parent, flag, value)
        check_writable(folder, flag, value, create=False)


def prepare_run_folders(ckpt_dir, exp_dir, resume, overwrite=False):
    """Ready ``ckpt_dir`` (checkpoints) and ``exp_dir`` (logs) of a run; returns notice lines.

    Always: temp files that a kill during saving left in ``ckpt_dir`` are deleted. A run that does
    not ``resume`` must not replace the checkpoints of an earlier one: ``UserError`` unless
    ``overwrite``, which renames both folders to ``<name>.replaced-<time>`` (nothing is deleted).
    """
    ckpt_dir, exp_dir = Path(ckpt_dir), Path(exp_dir)
    notices = []
    if ckpt_dir.is_dir():
        count, size = remove_interrupted_saves(ckpt_dir)
        if count:
            notices.append(f"removed {count} temporary file(s) of an interrupted save from {ckpt_dir} "
                           f"({size / 1e6:.1f} MB)")
    checkpoints = sorted(ckpt_dir.glob("*.pt")) if ckpt_dir.is_dir() else []
    if resume or not checkpoints:
        return notices
    if not overwrite:
        raise UserError(f"{ckpt_dir} holds the checkpoints of an earlier run ({_describe(checkpoints)}); resume it "
                        f"with --continue_train, choose a new --name, or pass --overwrite to move the earlier run "
                        f"aside")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    moved = []
    folders = {f.resolve(): f for f in (ckpt_dir, exp_dir) if f.is_dir()}  # both flags may name one folder
    for folder in folders.values():
        target = _aside(folder, stamp)
        folder.rename(target)
        moved.append(str(target))
    notices.append(f"--overwrite: the earlier run moved to {' and '.join(moved)}")
    return notices
