"""Progress output: a tqdm bar on a terminal, plain timed lines elsewhere (log files, pipes)."""
import io

import pytest
from tqdm import tqdm

import utils.progress
from utils.progress import LineProgress, format_duration, progress_bar


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def clock(monkeypatch):
    """Replace the monotonic clock by the times (s) appended to the returned list, consumed in order."""
    times = []
    monkeypatch.setattr(utils.progress.time, "monotonic", lambda: times.pop(0))
    return times


def test_a_terminal_gets_a_tqdm_bar():
    stream = Terminal()
    with progress_bar(total=3, desc="work", file=stream, mininterval=0) as bar:
        for _ in range(3):
            bar.update(1)
    assert isinstance(bar, tqdm) and "\r" in stream.getvalue() and "3/3" in stream.getvalue()


def test_a_file_gets_a_plain_line_every_interval_and_at_the_end(clock):
    stream = io.StringIO()
    # start, then one update each at 10, 40, 50, 60 s, and the close at 80 s.
    clock += [0, 10, 40, 50, 60, 80]
    reporter = progress_bar(["a", "b", "c", "d"], desc="work", unit="img", file=stream)
    assert isinstance(reporter, LineProgress)
    assert list(reporter) == ["a", "b", "c", "d"] and clock == []
    assert stream.getvalue() == ("work: 2/4 img (50%), 0.05 img/s, ETA 0:00:40\n"
                                 "work: 4/4 img (100%), 0.05 img/s, took 0:01:20\n")


def test_lines_start_from_initial_and_carry_the_postfix(clock):
    stream = io.StringIO()
    clock += [0, 40, 41]
    with progress_bar(total=10, initial=6, desc="epoch 2/5", file=stream) as bar:
        bar.set_postfix(loss="0.5000")
        bar.update(2)
    assert stream.getvalue() == ("epoch 2/5: 8/10 it (80%), 0.05 it/s, ETA 0:00:40, loss=0.5000\n"
                                 "epoch 2/5: 8/10 it (80%), 0.0488 it/s, took 0:00:41, loss=0.5000\n")


def test_quiet_reporters_write_nothing():
    for options in ({"enabled": False}, {"lines": False}):
        stream = io.StringIO()
        assert list(progress_bar(range(3), file=stream, **options)) == [0, 1, 2]
        with progress_bar(total=2, file=stream, **options) as bar:
            bar.update(2)
        assert stream.getvalue() == ""
    terminal = Terminal()
    list(progress_bar(range(3), file=terminal, enabled=False))
    assert terminal.getvalue() == ""


def test_format_duration():
    assert [format_duration(s) for s in (0, 59.6, 3725, 90061, -3, float("inf"))] == \
        ["0:00:00", "0:01:00", "1:02:05", "25:01:01", "0:00:00", "?"]
