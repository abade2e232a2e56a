"""One training at a time per checkpoint folder: a second run with the same --ckpt_dir and --name is
refused while the first one lives (it would delete the first's temporary checkpoint at start-up, or
both would write interleaved logs and whichever latest.pt came last).

The lock is a POSIX record lock (``fcntl.lockf``) on ``<ckpt_dir>/.<name>.lock``, beside the run's
folder so that ``--overwrite`` can move that folder aside while the lock stays. The kernel releases
it when its process ends in any way (kill -9 included), so a dead run never blocks the next one; and
unlike ``flock`` it is not inherited by forked DataLoader workers, which could outlive a killed main
process for a few seconds. The file itself stays (empty): removing a lock file races with a process
that has just opened it. Where ``fcntl`` is missing (Windows) runs are not locked.
"""
import errno
import os
from pathlib import Path

from utils.errors import UserError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


def lock_path(run_folder):
    """The lock file of the run whose checkpoints go to ``run_folder``."""
    run_folder = Path(run_folder)
    return run_folder.with_name(f".{run_folder.name}.lock")


class RunLock:
    """The lock of the run whose checkpoints go to ``run_folder``, taken at construction (``UserError``
    when another process holds it); ``release()`` (or the process's end) frees it. ``notice`` says why
    a file system that cannot lock (NFS without its lock daemon) leaves the run unlocked, else None."""

    def __init__(self, run_folder):
        self.path = lock_path(run_folder)
        self.notice = None
        self._fd = None
        if fcntl is None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise UserError(f"{self.path}: cannot create the run's lock file ({err.strerror or err}); choose "
                            f"another --ckpt_dir") from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                self.notice = (f"cannot lock {self.path} ({err.strerror or err}): a second training with this "
                               f"--ckpt_dir and --name would not be refused")
                return
            raise UserError(f"{run_folder} is in use: another training with this --ckpt_dir and --name is running "
                            f"(it holds the lock {self.path}); wait for it to end or stop it, or choose another "
                            f"--name") from None
        self._fd = fd

    def release(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
