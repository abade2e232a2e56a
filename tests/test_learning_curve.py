"""bench/learning_curve.py: the minutes a run ran, read from its log, and the PNG it draws."""
import numpy as np
import pytest
from PIL import Image

from bench import learning_curve
from utils.errors import UserError

LOG = """\
2026-12-07 10:00:00 options: ...
2026-12-07 10:05:00 epoch 1 iteration 100: loss 0.08 lr 0.0006
2026-12-07 10:10:00 validation at iteration 200: PSNR-Y 25.100 dB, SSIM-Y 0.7000 (100 images, EMA weights)
  a traceback-free continuation line without a time stamp
2026-12-07 10:12:00 stopped by SIGTERM at iteration 230
2026-12-07 13:00:00 resumed from latest.pt at iteration 230
2026-12-07 13:08:30 validation at iteration 400: PSNR-Y 25.350 dB, SSIM-Y 0.7100 (100 images, EMA weights)
"""


def test_minutes_count_only_while_the_run_ran():
    # 10 minutes to the first validation; the 168-minute stop is left out; 8.5 more to the second
    assert learning_curve.read_curve(LOG) == [(10.0, 200, 25.1), (20.5, 400, 25.35)]
    assert learning_curve.read_curve(LOG, pause_minutes=1000)[1][0] == pytest.approx(188.5)


@pytest.mark.parametrize("span, step", [(0.5, 0.1), (6, 1), (7, 2), (130, 50), (0.03, 0.005)])
def test_tick_steps_are_round(span, step):
    assert learning_curve.nice_step(span) == pytest.approx(step)


def test_the_curve_is_drawn_and_written(tmp_path, capsys):
    log = tmp_path / "train_log.txt"
    log.write_text(LOG)
    out = tmp_path / "curve.png"
    assert learning_curve.main([str(log), "--out", str(out), "--offset", "80", "--start_psnr", "24.9",
                                "--reference", "Bicubic", "23.7"]) == 0
    picture = np.asarray(Image.open(out).convert("RGB"))
    assert picture.shape == (440, 720, 3)
    blue = (picture[..., 2] > 150) & (picture[..., 0] < 80)
    red = (picture[..., 0] > 150) & (picture[..., 2] < 100)
    assert blue.sum() > 200 and red.sum() > 100  # the curve and the reference line
    # the curve rises to the right: its rightmost points lie higher (smaller row) than its leftmost
    rows, cols = np.nonzero(blue)
    assert rows[cols > np.percentile(cols, 90)].mean() < rows[cols < np.percentile(cols, 10)].mean()
    assert "   100.5 min  iteration    400  PSNR-Y 25.350 dB" in capsys.readouterr().out


def test_refusals(tmp_path):
    log = tmp_path / "train_log.txt"
    log.write_text("2026-12-07 10:00:00 options: ...\n")
    with pytest.raises(UserError, match="no validation lines; train with --val_dataroot"):
        learning_curve.main([str(log), "--out", str(tmp_path / "curve.png")])
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"a picture of mine")
    log.write_text(LOG)
    with pytest.raises(UserError, match="--overwrite"):
        learning_curve.main([str(log), "--out", str(mine)])
    assert mine.read_bytes() == b"a picture of mine"
