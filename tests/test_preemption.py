"""Training on clusters: stop signals end a run with latest.pt written, the run resumes exactly,
--continue_train auto, all DDP ranks stop together, and logs in files hold no progress-bar frames."""
import contextlib
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp

from models.checkpoint import load_checkpoint
from options import TrainOptions
from tests.conftest import ROOT, file_hashes
from tests.test_train import free_port, make_faces, run_training, tensor_leaves, train_argv
from utils.training.stop_signals import EXIT_STOPPED, ignore_stop_signals
from utils.training.trainer import Trainer, train

# One thread in and out of the test process: the runs compared bit for bit must reduce in the same order.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
STATE_KEYS = ("model", "ema", "optimizer", "rng")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def faces6(tmp_path_factory):
    return make_faces(tmp_path_factory.mktemp("faces6"), 6)


@contextlib.contextmanager
def started(command, log_path, cwd):
    """``command`` running in a new process group, stdout and stderr going to ``log_path`` (a file, as
    under nohup); stopped (SIGTERM, then SIGKILL) if it still runs when the block ends."""
    with open(log_path, "w") as out:
        proc = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=ONE_THREAD,
                                start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def read_log(path):
    return path.read_bytes().decode()  # not read_text(): its newline translation would hide carriage returns


def wait_for(path, text, proc, timeout=300):
    deadline = time.monotonic() + timeout
    while not path.is_file() or text not in path.read_text():
        assert proc.poll() is None, f"exited with {proc.returncode}: " + path.read_text()[-3000:]
        assert time.monotonic() < deadline, f"no '{text}' after {timeout} s"
        time.sleep(0.05)


def assert_same_state(a, b):
    ta, tb = tensor_leaves({k: a[k] for k in STATE_KEYS}), tensor_leaves({k: b[k] for k in STATE_KEYS})
    assert ta.keys() == tb.keys() and len(ta) > 100
    assert [k for k in ta if not torch.equal(ta[k], tb[k])] == []
    assert a["scheduler"] == b["scheduler"]
    assert (a["iteration"], a["epoch"], a["batch_in_epoch"]) == (b["iteration"], b["epoch"], b["batch_in_epoch"])


def test_sigterm_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path):
    faces = make_faces(tmp_path / "faces", 40)  # batch 2: 20 iterations per epoch
    common = ("--lr", "1e-3", "--seed", "4", "--ema", "0.9", "--num_threads", "1", "--print_freq", "1")
    argv = train_argv(tmp_path, faces, "stopped", *common, "--max_iters", "1000")
    log_path = tmp_path / "nohup.out"
    with started([sys.executable, str(ROOT / "train.py"), *argv], log_path, tmp_path) as proc:
        wait_for(log_path, "iteration 2: loss", proc)
        os.killpg(proc.pid, signal.SIGTERM)  # to every process, the DataLoader worker too, as SLURM does
        assert proc.wait(timeout=300) == EXIT_STOPPED
    output = read_log(log_path)

    stopped = load_checkpoint(tmp_path / "ckpt" / "stopped" / "latest.pt")
    stop = stopped["iteration"]
    assert 2 <= stop < 20 and (stopped["epoch"], stopped["batch_in_epoch"]) == (0, stop)  # mid-epoch
    assert f"stopped by SIGTERM after iteration {stop} (0 epoch(s) and {stop} batch(es) done)" in output
    assert f"iteration {stop + 1}: loss" not in output
    # A log file gets plain lines (iteration, epoch, loss, lr, images/s, ETA), no tqdm frames.
    assert "\r" not in output
    assert re.search(r"^epoch 1 iteration 2: loss \d\.\d{5} lr 0\.001 [\d.]+ it/s \([\d.]+ images/s\) "
                     r"ETA \d+:\d\d:\d\d$", output, flags=re.M)

    end = str(stop + 3)
    run_training(tmp_path, faces, "stopped", *common, "--max_iters", end, "--continue_train")
    run_training(tmp_path, faces, "straight", *common, "--max_iters", end)
    resumed = load_checkpoint(tmp_path / "ckpt" / "stopped" / "latest.pt")
    assert_same_state(resumed, load_checkpoint(tmp_path / "ckpt" / "straight" / "latest.pt"))
    assert not torch.equal(resumed["model"]["shallow.0.weight"], stopped["model"]["shallow.0.weight"])


def test_signals_during_a_save_leave_a_loadable_latest_checkpoint(tmp_path, monkeypatch):
    faces = make_faces(tmp_path / "faces", 6)
    real_save = torch.save

    def signalled_save(obj, f):  # a stop signal as the checkpoint starts and a second one once it is written
        os.kill(os.getpid(), signal.SIGTERM)
        real_save(obj, f)
        os.kill(os.getpid(), signal.SIGINT)

    handlers = [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)]
    monkeypatch.setattr(torch, "save", signalled_save)
    trainer = run_training(tmp_path, faces, "signalled", "--save_latest_freq", "2", "--max_iters", "50")
    monkeypatch.undo()
    assert (trainer.stopped_by, trainer.iteration) == ("SIGTERM", 2)
    ckpt_dir = tmp_path / "ckpt" / "signalled"
    assert os.listdir(ckpt_dir) == ["latest.pt"]  # written once, no temp file left
    latest = load_checkpoint(ckpt_dir / "latest.pt")
    assert latest["iteration"] == 2 and all(torch.equal(latest["model"][k], v)
                                            for k, v in trainer.model.state_dict().items())
    assert [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)] == handlers


def test_continue_train_auto_starts_a_new_run_then_resumes_it(tmp_path, faces6):
    pre = tmp_path / "pre.pt"
    run_training(tmp_path, faces6, "source", "--max_iters", "1", "--seed", "9")
    os.replace(tmp_path / "ckpt" / "source" / "latest.pt", pre)
    auto = ("--continue_train", "auto", "--pretrain_model_path", str(pre))
    assert run_training(tmp_path, faces6, "auto", *auto, "--max_iters", "2").iteration == 2
    log_path = tmp_path / "check_points" / "auto" / "train_log.txt"
    assert "--continue_train auto: no " in log_path.read_text()
    assert f"initialised from raw weights from {pre}" in log_path.read_text()
    pre.unlink()  # a resumed run no longer needs the weights it started from
    assert run_training(tmp_path, faces6, "auto", *auto, "--max_iters", "3").iteration == 3
    assert f"resumed from {tmp_path / 'ckpt' / 'auto' / 'latest.pt'}: iteration 2," in log_path.read_text()


def _ddp_rank_signalled_on_rank_1(rank, argv, port, out_dir):
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    if rank == 1:  # only rank 1 is signalled, during its third iteration
        real_step = Trainer.train_step

        def step(self, batch):
            if self.iteration == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return real_step(self, batch)

        Trainer.train_step = step
    trainer = train(TrainOptions().parse(argv))
    torch.save({"iteration": trainer.iteration, "stopped_by": trainer.stopped_by}, out_dir / f"rank{rank}.pt")


def test_ddp_ranks_stop_after_the_same_iteration(tmp_path, faces6):
    argv = train_argv(tmp_path, faces6, "ddp_stop", "--batch_size", "1", "--max_iters", "50")
    context = mp.start_processes(_ddp_rank_signalled_on_rank_1, args=(argv, free_port(), tmp_path), nprocs=2,
                                 start_method="fork", join=False)
    deadline = time.monotonic() + 90
    while not context.join(timeout=1):
        if time.monotonic() > deadline:  # ranks that disagree wait for each other forever
            for proc in context.processes:
                proc.kill()
            pytest.fail("the ranks did not stop together")
    stops = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert stops == [{"iteration": 3, "stopped_by": "SIGTERM"}] * 2
    latest = load_checkpoint(tmp_path / "ckpt" / "ddp_stop" / "latest.pt")
    assert latest["iteration"] == 3 and len(latest["rng"]) == 2


def test_sigterm_to_torchrun_stops_both_ranks_with_one_checkpoint(tmp_path, faces6):
    argv = train_argv(tmp_path, faces6, "torchrun_stop", "--batch_size", "1", "--max_iters", "1000",
                      "--print_freq", "1")
    log_path = tmp_path / "torchrun.out"
    with started([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                  str(ROOT / "train.py"), *argv], log_path, tmp_path) as proc:
        wait_for(log_path, "iteration 2: loss", proc)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=300)
    output = read_log(log_path)
    assert "SIGKILL" not in output  # both ranks ended on their own, before torchrun's shutdown timeout
    stops = re.findall(r"stopped by SIGTERM after iteration (\d+) ", output)
    assert len(stops) == 1  # logged by rank 0 only
    assert os.listdir(tmp_path / "ckpt" / "torchrun_stop") == ["latest.pt"]
    latest = load_checkpoint(tmp_path / "ckpt" / "torchrun_stop" / "latest.pt")
    assert latest["iteration"] == int(stops[0]) and latest["world_size"] == 2 and len(latest["rng"]) == 2
    assert "\r" not in output


def _worker(ready):
    ignore_stop_signals()
    ready.set()
    time.sleep(60)


def test_a_dataloader_worker_outlives_other_senders_sigterm_but_not_its_parents():
    context = torch.multiprocessing.get_context("fork")
    ready = context.Event()
    worker = context.Process(target=_worker, args=(ready,), daemon=True)
    worker.start()
    assert ready.wait(30)
    for sig in ("TERM", "INT", "USR1"):  # from another process, like SLURM's signal to every process of a job
        subprocess.run(["kill", f"-{sig}", str(worker.pid)], check=True)
    worker.join(0.5)
    assert worker.is_alive()
    worker.terminate()  # as the DataLoader and multiprocessing's exit handler end a worker
    worker.join(10)
    assert worker.exitcode == 128 + signal.SIGTERM


# ------------------------------------------------------------------ signals at any point
# train.py with one function wrapped: after the function has run, the process writes its pid to a marker file
# and waits, so that the test's signal falls into that window every time instead of by chance.
# argv: module, attribute (a function or Class.method), marker file, seconds, then train.py's arguments.
PAUSED = """
import importlib, os, pathlib, runpy, sys, time
module, attribute, marker, delay = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3]), float(sys.argv[4])
owner_name, _, name = attribute.rpartition(".")
owner = importlib.import_module(module)
owner = getattr(owner, owner_name) if owner_name else owner
original = getattr(owner, name)

def paused(*args, **kwargs):
    result = original(*args, **kwargs)
    with marker.open("a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(delay)
    return result

setattr(owner, name, paused)
sys.argv = ["train.py", *sys.argv[5:]]
runpy.run_path("train.py", run_name="__main__")
"""
# Runs in every new DataLoader worker right after fork, before its worker_init_fn: the window in which a
# signal to the whole process group used to kill a worker (torch's own worker handler ends it on a
# SIGTERM from any process but its parent).
WORKER_START = ("torch.utils.data._utils.signal_handling", "_set_worker_signal_handlers")
LOOPS = 10


def markers(marker):
    return len(marker.read_text().splitlines()) if marker.is_file() else 0


def run_paused(tmp_path, hook, argv, tag, send, count=1, delay=1.0):
    """Run train.py ``argv`` paused after the ``count``-th call of ``hook`` (module, attribute); then call
    ``send(proc)``; returns (exit status, output)."""
    marker, log_path = tmp_path / f"marker-{tag}", tmp_path / f"{tag}.out"
    with started([sys.executable, "-c", PAUSED, *hook, str(marker), str(delay), *argv], log_path, ROOT) as proc:
        deadline = time.monotonic() + 300
        while markers(marker) < count:
            assert proc.poll() is None, f"exited with {proc.returncode}: " + log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, f"{hook} not reached after 300 s"
            time.sleep(0.02)
        send(proc)
        code = proc.wait(timeout=300)
    return code, read_log(log_path)


def group_sigterm(proc):
    os.killpg(proc.pid, signal.SIGTERM)  # as SLURM signals every process of the job, DataLoader workers included


@pytest.mark.parametrize("when, nth_worker", [("first iteration", 1), ("validation start", 2)])
def test_group_sigterm_while_workers_start_saves_every_time(tmp_path, when, nth_worker):
    faces = make_faces(tmp_path / "faces", 4)
    # One loader worker: the training loader's starts with the first iteration (and persists), the
    # validation loader's with each validation (after every iteration here).
    argv = train_argv(tmp_path, faces, "group", "--num_threads", "1", "--max_iters", "1000", "--val_dataroot",
                      str(faces), "--val_freq", "1", "--continue_train", "auto", "--scan_backend", "torch")
    latest = tmp_path / "ckpt" / "group" / "latest.pt"
    outcomes = []
    for loop in range(LOOPS):  # each run resumes the last one's latest.pt and is stopped after 1 iteration
        code, output = run_paused(tmp_path, WORKER_START, argv, f"run{loop}", group_sigterm, count=nth_worker)
        outcomes.append((code, load_checkpoint(latest)["iteration"] if latest.is_file() else None))
        assert outcomes[-1] == (EXIT_STOPPED, loop + 1), (when, outcomes, output[-3000:])
        assert "Traceback" not in output and f"stopped by SIGTERM after iteration {loop + 1} " in output


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM", "SIGUSR1", "SIGHUP"])
def test_a_signal_before_the_network_exists_exits_3_with_nothing_to_save(tmp_path, faces6, sig):
    run_training(tmp_path, faces6, "early", "--max_iters", "1")
    before = file_hashes(tmp_path / "ckpt", tmp_path / "check_points", faces6)
    argv = train_argv(tmp_path, faces6, "early", "--max_iters", "5", "--continue_train")
    # paused while the training images are listed: the network does not exist yet
    code, output = run_paused(tmp_path, ("data.celeba_dataset", "list_images"), argv, "early",
                              lambda proc: proc.send_signal(getattr(signal, sig)))
    assert code == EXIT_STOPPED, output[-3000:]
    assert output.strip().splitlines()[-1] == (f"stopped by {sig} during start-up, before training began: nothing "
                                               f"to save (no checkpoint was written or changed); run the same "
                                               f"command again to start")
    assert "Traceback" not in output
    assert file_hashes(tmp_path / "ckpt", tmp_path / "check_points", faces6) == before


def test_a_signal_once_the_training_state_exists_saves_it(tmp_path, faces6):
    argv = train_argv(tmp_path, faces6, "ready", "--max_iters", "5")
    # paused after the training state exists, before the first iteration
    code, output = run_paused(tmp_path, ("utils.training.logger", "TrainLogger.start_writing"), argv, "ready",
                              lambda proc: proc.send_signal(signal.SIGTERM))
    assert code == EXIT_STOPPED and "Traceback" not in output, output[-3000:]
    assert "stopped by SIGTERM after iteration 0 (0 epoch(s) and 0 batch(es) done); saved " in output
    assert load_checkpoint(tmp_path / "ckpt" / "ready" / "latest.pt")["iteration"] == 0
    assert run_training(tmp_path, faces6, "ready", "--max_iters", "2", "--continue_train").iteration == 2


def test_sighup_mid_training_saves(tmp_path, faces6):
    argv = train_argv(tmp_path, faces6, "hangup", "--max_iters", "1000", "--num_threads", "1")
    code, output = run_paused(tmp_path, ("utils.training.state", "TrainingState.advance"), argv, "hangup",
                              lambda proc: os.killpg(proc.pid, signal.SIGHUP), count=2, delay=0)
    assert code == EXIT_STOPPED and "Traceback" not in output, output[-3000:]
    stop = load_checkpoint(tmp_path / "ckpt" / "hangup" / "latest.pt")["iteration"]
    assert stop >= 2 and f"stopped by SIGHUP after iteration {stop} " in output
