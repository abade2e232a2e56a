"""Training logs: console and text file, TensorBoard scalars, LR|SR|HR image grids (rank 0 only)."""
import logging
from pathlib import Path

import torch

from data.image_tensor import to_uint8
from utils.image_io import write_rgb
from utils.progress import TqdmHandler

log = logging.getLogger("hybrimamba")
GRID_ROWS = 4


def image_grid(lr, sr, hr, rows=GRID_ROWS):
    """Batches (B, 3, H, W) in [-1, 1] -> uint8 (rows*H, 3*W, 3): one LR|SR|HR row per sample."""
    n = min(rows, lr.shape[0])
    triplets = torch.cat([t[:n].detach().float().cpu() for t in (lr, sr, hr)], dim=3)
    return to_uint8(torch.cat(list(triplets), dim=1))


class TrainLogger:
    """Logging of one training run into ``exp_dir`` (train_log.txt, tb/, visuals/).

    On ranks other than 0 (``enabled=False``) only errors reach the console and nothing is written.
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
        self.exp_dir.mkdir(parents=True, exist_ok=True)
        console = TqdmHandler()
        console.setFormatter(logging.Formatter("%(message)s"))
        text = logging.FileHandler(self.exp_dir / "train_log.txt")
        text.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        self._handlers = [console, text]
        for handler in self._handlers:
            log.addHandler(handler)
        log.setLevel(logging.INFO)

    def start_tensorboard(self, purge_step=None):
        """Open the TensorBoard writer in tb/; ``purge_step`` (a resumed run's iteration) hides the
        events an interrupted run logged after its last checkpoint."""
        if self.enabled:
            # Imported here: TensorBoard is only needed by a logging rank.
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.exp_dir / "tb"), purge_step=purge_step)

    def scalars(self, values, step):
        """Add ``{tag: float}`` to TensorBoard at ``step``."""
        if self.writer:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)

    def visuals(self, lr, sr, hr, step):
        """Write the LR|SR|HR grid of a batch to visuals/iter_<step>.png and TensorBoard; returns the path."""
        if not self.enabled:
            return None
        grid = image_grid(lr, sr, hr)
        path = self.exp_dir / "visuals" / f"iter_{step:08d}.png"
        write_rgb(path, grid, "training picture")
        self.writer.add_image("LR|SR|HR", grid, step, dataformats="HWC")
        return path

    def close(self):
        if self.writer:
            self.writer.close()
            self.writer = None
        for handler in self._handlers:
            log.removeHandler(handler)
            handler.close()
        self._handlers = []
        log.setLevel(self._previous_level)
