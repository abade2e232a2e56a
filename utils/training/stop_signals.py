"""Stopping a training run on request: SIGTERM (``kill``, SLURM preemption and time limit),
SIGINT (Ctrl-C) and SIGUSR1 (SLURM's ``--signal``) end the run at an iteration boundary with
``latest.pt`` written, instead of losing everything since the last periodic checkpoint.

The handler only records the signal; the training loop checks it after each iteration. Later
signals are acknowledged and change nothing, so they cannot interrupt the checkpoint being
written (which is atomic anyway: see ``models.checkpoint.save_checkpoint``).
"""
import os
import signal
import threading

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR1") if hasattr(signal, name))
# train.py's exit status after such a stop (0: finished, 1: crashed, 2: a user error).
EXIT_STOPPED = 3


class StopSignals:
    """Context manager: while active, the stop signals are recorded in ``received`` (the first
    one's number, else None) instead of ending the process; the previous handlers come back on exit.

    Handlers can only be installed from the main thread; elsewhere the signals keep their
    previous behaviour. ``announce`` writes a one-line acknowledgement of each signal to stderr.
    """

    def __init__(self, announce=True):
        self.received = None
        self.announce = announce
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.received is None:
            self.received = signum
            text = f"{name} received: stopping after the current iteration, then saving latest.pt\n"
        else:
            text = f"{name} received: already stopping; please wait for latest.pt to be saved\n"
        if self.announce:
            # os.write, not logging or print: a signal handler must not take locks the interrupted code may hold.
            os.write(2, text.encode())


def ignore_stop_signals(worker_id=None):
    """DataLoader ``worker_init_fn``: workers outlive the stop signals that reach every process of a
    job (SLURM signals them all), so that the main process can finish its iteration with them.

    A SIGTERM from the worker's parent still ends it: that is how the DataLoader and
    multiprocessing's exit handler end workers that did not stop on request, and a worker that
    ignored it would keep the main process waiting forever. Telling the sender apart needs
    ``sigwaitinfo``; where it is missing (macOS) SIGTERM keeps its default action.
    """
    for sig in STOP_SIGNALS:
        if sig != signal.SIGTERM:
            signal.signal(sig, signal.SIG_IGN)
    if hasattr(signal, "sigwaitinfo"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # inherited by threads started later
        threading.Thread(target=_exit_on_sigterm_from, args=(os.getppid(),), daemon=True).start()


def _exit_on_sigterm_from(parent):
    while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
        pass
    os._exit(128 + signal.SIGTERM)  # the status of a shell's process ended by SIGTERM
