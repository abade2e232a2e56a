"""Progress output that suits where it goes: a tqdm bar on a terminal, plain lines in a file.

tqdm redraws its bar with carriage returns; written to a file (nohup.out, a SLURM log) every
redraw stays behind as a line fragment. ``progress_bar`` therefore returns a tqdm bar only when
its stream (stderr, where tqdm draws) is a terminal; otherwise a ``LineProgress`` that writes
one plain line every ``LINE_INTERVAL_S`` seconds and a last one when it closes.
"""
import logging
import math
import sys
import time

from tqdm import tqdm

LINE_INTERVAL_S = 30.0


class TqdmHandler(logging.Handler):
    """Console lines written through tqdm so they do not tear the progress bar; flushed at once,
    since a redirected stdout (nohup, SLURM) is block-buffered."""

    def emit(self, record):
        tqdm.write(self.format(record))
        sys.stdout.flush()


def format_duration(seconds):
    """Seconds as H:MM:SS (hours unbounded), e.g. 3725 -> '1:02:05'."""
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(round(max(seconds, 0.0))), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def is_terminal(stream):
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class LineProgress:
    """The part of tqdm's interface the project uses (iteration, ``update``, ``set_postfix``,
    ``close``, ``with``), reported as plain lines: ``desc: n/total unit (p%), rate, ETA``."""

    def __init__(self, iterable=None, total=None, desc="", unit="it", initial=0, file=None,
                 interval=LINE_INTERVAL_S):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.desc, self.unit, self.interval = total, desc, unit, interval
        self.file = file if file is not None else sys.stderr
        self.n = self._first = initial
        self._start = self._last_line = time.monotonic()
        self._postfix = ""
        self._closed = False

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, n=1):
        self.n += n
        now = time.monotonic()
        if now - self._last_line >= self.interval:
            self._line(now, final=False)

    def set_postfix(self, refresh=True, **values):
        self._postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self):
        if not self._closed:
            self._closed = True
            if self.n > self._first:
                self._line(time.monotonic(), final=True)

    def _line(self, now, final):
        self._last_line = now
        elapsed = now - self._start
        rate = (self.n - self._first) / elapsed if elapsed > 0 else math.inf
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        parts = [f"{count} {self.unit}" + (f" ({100 * self.n / self.total:.0f}%)" if self.total else "")]
        if math.isfinite(rate):
            parts.append(f"{rate:.3g} {self.unit}/s")
        if final:
            parts.append(f"took {format_duration(elapsed)}")
        elif self.total and rate > 0:
            parts.append(f"ETA {format_duration((self.total - self.n) / rate)}")
        if self._postfix:
            parts.append(self._postfix)
        print(f"{self.desc}: " + ", ".join(parts), file=self.file, flush=True)


def progress_bar(iterable=None, *, total=None, desc="", unit="it", enabled=True, lines=True, file=None,
                 **bar_options):
    """A progress reporter over ``iterable`` (or updated by hand with ``total``).

    On a terminal: a tqdm bar (``bar_options`` go to tqdm). Elsewhere: plain lines from
    ``LineProgress``, or nothing with ``lines=False`` (for callers that log their own lines).
    ``enabled=False``: nothing at all (other ranks, quiet library calls).
    """
    file = file if file is not None else sys.stderr
    if enabled and is_terminal(file):
        return tqdm(iterable, total=total, desc=desc, unit=unit, file=file, **bar_options)
    if enabled and lines:
        return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=bar_options.get("initial", 0),
                            file=file)
    return tqdm(iterable, total=total, disable=True)
