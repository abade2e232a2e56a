"""Training logs: console and text file, TensorBoard scalars, LR|SR|HR image grids (rank 0 only)."""
import contextlib
import logging
import sys
from pathlib import Path

import torch

from data.image_tensor import to_uint8
from utils.errors import UserError
from utils.image_io import write_rgb
from utils.progress import TqdmHandler

log = logging.getLogger("hybrimamba")
GRID_ROWS = 4


class LogWriteError(UserError):
    """The training logs cannot be written (a full or read-only disk)."""


class _FileHandler(logging.FileHandler):
    """A log file that keeps its first write error in ``error`` (``TrainLogger.check`` raises it) instead
    of printing a traceback for every line it cannot write."""
    error = None

    def handleError(self, record):
        if self.error is None:
            self.error = sys.exc_info()[1]


def image_grid(lr, sr, hr, rows=GRID_ROWS):
    """Batches (B, 3, H, W) in [-1, 1] -> uint8 (rows*H, 3*W, 3): one LR|SR|HR row per sample."""
    n = min(rows, lr.shape[0])
    triplets = torch.cat([t[:n].detach().float().cpu() for t in (lr, sr, hr)], dim=3)
    return to_uint8(torch.cat(list(triplets), dim=1))


class _Held(logging.Handler):
    """Keeps the log records of a start-up that may still be refused, for train_log.txt once it is not."""

    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


class TrainLogger:
    """Logging of one training run into ``exp_dir`` (train_log.txt, tb/, visuals/).

    Lines reach the console at once; the files are written from ``start_writing()`` on, called once
    the start-up checks have passed, so that a refused start leaves an earlier run's logs as they were
    (train_log.txt then gets the lines held until then). On ranks other than 0 (``enabled=False``)
    only errors reach the console and nothing is written.
    """

    def __init__(self, exp_dir, enabled=True):
        self.exp_dir = Path(exp_dir)
        self.enabled = enabled
        self.writer = None
        self._previous_level = log.level
        self._handlers = []
        if not enabled:
            log.setLevel(logging.ERROR)
            return
        console = TqdmHandler()
        console.setFormatter(logging.Formatter("%(message)s"))
        self._handlers = [console, _Held()]
        for handler in self._handlers:
            log.addHandler(handler)
        log.setLevel(logging.INFO)

    def start_writing(self, purge_step=None):
        """Open train_log.txt (writing the lines held so far into it) and the TensorBoard writer in tb/;
        ``purge_step`` (a resumed run's iteration) hides the events an interrupted run logged after its
        last checkpoint."""
        if not self.enabled:
            return
        with self._writing():
            self.exp_dir.mkdir(parents=True, exist_ok=True)
            text = _FileHandler(self.exp_dir / "train_log.txt")
            text.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
            held = self._handlers.pop()
            log.removeHandler(held)
            for record in held.records:
                text.handle(record)
            self._handlers.append(text)
            log.addHandler(text)
            # Imported here: TensorBoard is only needed by a logging rank.
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.exp_dir / "tb"), purge_step=purge_step)

    @contextlib.contextmanager
    def _writing(self):
        """A failed write (a full disk: ``OSError`` from TensorBoard, ``UserError`` from write_rgb) raises
        ``LogWriteError``."""
        try:
            yield
        except UserError as err:
            raise LogWriteError(str(err)) from None
        except OSError as err:
            raise LogWriteError(self._cannot_write(err)) from None

    def _cannot_write(self, err):
        reason = getattr(err, "strerror", None) or err
        return (f"{self.exp_dir}: cannot write the training logs ({reason}); free disk space or choose another "
                f"--checkpoints_dir")

    def check(self):
        """Raise ``LogWriteError`` if a line could not be written to train_log.txt."""
        for handler in self._handlers:
            if isinstance(handler, _FileHandler) and handler.error is not None:
                raise LogWriteError(self._cannot_write(handler.error))

    def scalars(self, values, step):
        """Add ``{tag: float}`` to TensorBoard at ``step``."""
        if self.writer:
            with self._writing():
                for tag, value in values.items():
                    self.writer.add_scalar(tag, value, step)

    def visuals(self, lr, sr, hr, step):
        """Write the LR|SR|HR grid of a batch to visuals/iter_<step>.png and TensorBoard; returns the path."""
        if not self.enabled:
            return None
        grid = image_grid(lr, sr, hr)
        path = self.exp_dir / "visuals" / f"iter_{step:08d}.png"
        with self._writing():
            write_rgb(path, grid, "training picture")
            self.writer.add_image("LR|SR|HR", grid, step, dataformats="HWC")
        return path

    def close(self):
        """Flush and close the logs; a final write that fails (a full disk) is a notice, not an error that
        would hide the run's outcome."""
        if self.writer:
            try:
                self.writer.close()
            except OSError as err:
                log.warning(f"notice: {self._cannot_write(err)}: the last TensorBoard events are lost")
            self.writer = None
        for handler in self._handlers:
            log.removeHandler(handler)
            with contextlib.suppress(OSError):  # the file handler's last flush
                handler.close()
        self._handlers = []
        log.setLevel(self._previous_level)
