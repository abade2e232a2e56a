"""Stopping a training run on request: SIGTERM (``kill``, SLURM preemption and time limit),
SIGINT (Ctrl-C), SIGUSR1 (SLURM's ``--signal``) and SIGHUP (a closed terminal) end the run with
exit status 3 at any point: during start-up, before the training state exists, at once with
nothing to save; afterwards at an iteration boundary with ``latest.pt`` written, instead of losing
everything since the last periodic checkpoint.

Once the training state exists the handler only records the signal; the training loop checks it
before the first iteration and after each one. Later signals are acknowledged and change nothing,
so they cannot interrupt the checkpoint being written (which is atomic anyway: see
``models.checkpoint.save_checkpoint``).

DataLoader workers must outlive these signals (SLURM sends them to every process of the job):
``workers_start_shielded`` starts them with the signals blocked, so that none reaches a worker
before its ``worker_init_fn`` (``ignore_stop_signals``) has taken over.

Torch-free: train.py installs the handlers before it imports torch.
"""
import contextlib
import os
import signal
import threading

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR1", "SIGHUP")
                     if hasattr(signal, name))
# train.py's exit status after such a stop (0: finished, 1: crashed, 2: a user error).
EXIT_STOPPED = 3


class StoppedDuringStartup(BaseException):
    """A stop signal arrived before the training state existed: the run ends with nothing to save.
    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` of start-up code swallows it."""

    def __init__(self, signum):
        self.signal_name = signal.Signals(signum).name
        super().__init__(f"stopped by {self.signal_name} during start-up, before training began: nothing to save "
                         f"(no checkpoint was written or changed); run the same command again to start")


class StopSignals:
    """Context manager: while active, the stop signals end the start-up at once (``StoppedDuringStartup``
    raised from the handler) until ``record_only()`` is called; from then on they are recorded in
    ``received`` (the first one's number, else None) instead of ending the process. The previous
    handlers come back on exit.

    Handlers can only be installed from the main thread; elsewhere the signals keep their
    previous behaviour. ``announce`` writes a one-line acknowledgement of each signal to stderr.
    """

    def __init__(self, announce=True):
        self.received = None
        self.announce = announce
        self.starting = True
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

    def record_only(self):
        """The training state exists: from now on a signal is recorded, and the loop saves before it stops."""
        self.starting = False

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        first = self.received is None
        if first:
            self.received = signum
        if not first:
            text = f"{name} received: already stopping; please wait\n"
        elif self.starting:
            text = f"{name} received during start-up: stopping, nothing to save yet\n"
        else:
            text = f"{name} received: stopping after the current iteration, then saving latest.pt\n"
        if self.announce:
            # os.write, not logging or print: a signal handler must not take locks the interrupted code may hold.
            os.write(2, text.encode())
        if first and self.starting:
            raise StoppedDuringStartup(signum)


@contextlib.contextmanager
def workers_start_shielded():
    """Block the stop signals in this thread while it starts DataLoader workers (``iter(loader)``).

    A new process starts with the signal mask of the thread that forked it (and keeps it across exec),
    so a signal sent to the whole process group while workers start stays pending in each new worker
    until its worker_init_fn (``ignore_stop_signals``) discards it, instead of killing the worker before
    that function runs. In this process a signal that came meanwhile is delivered when the block ends.
    """
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ignore_stop_signals(worker_id=None):
    """DataLoader ``worker_init_fn``: workers outlive the stop signals that reach every process of a
    job (SLURM signals them all), so that the main process can finish its iteration with them.

    A SIGTERM from the worker's parent still ends it: that is how the DataLoader and
    multiprocessing's exit handler end workers that did not stop on request, and a worker that
    ignored it would keep the main process waiting forever. Telling the sender apart needs
    ``sigwaitinfo``; where it is missing (macOS) SIGTERM keeps its default action.
    """
    others = [sig for sig in STOP_SIGNALS if sig != signal.SIGTERM]
    for sig in others:
        signal.signal(sig, signal.SIG_IGN)  # also discards one that came while they were blocked
    if not hasattr(signal, "sigwaitinfo"):
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        return
    # Kept blocked (the worker started with it blocked) and inherited by threads started later, so only
    # the waiting thread takes it, also one sent before this function ran.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=_exit_on_sigterm_from, args=(os.getppid(),), daemon=True).start()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, others)


def _exit_on_sigterm_from(parent):
    while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
        pass
    os._exit(128 + signal.SIGTERM)  # the status of a shell's process ended by SIGTERM
