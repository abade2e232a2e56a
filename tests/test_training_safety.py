"""train.py keeps the user's work: one run per checkpoint folder, unusable output folders and full disks
found as one-line errors, latest.pt saved before a data or log failure stops the run, the EMA kept on
resume, the whole training state checksummed, and a changed data set reported."""
import contextlib
import errno
import os
import re
import signal
import subprocess
import sys

import pytest
import torch

import train as train_script
from models import HybriMamba
from models.checkpoint import load_checkpoint, save_checkpoint
from tests.conftest import ROOT, file_hashes
from tests.test_preemption import ONE_THREAD, started, wait_for
from tests.test_safety import assert_unchanged, refused
from tests.test_train import make_faces, run_training, train_argv
from utils.errors import UserError
from utils.training.data import ResumableSampler
from utils.training.trainer import Trainer


@pytest.fixture(scope="module")
def faces6(tmp_path_factory):
    return make_faces(tmp_path_factory.mktemp("faces6"), 6)


@contextlib.contextmanager
def tmpfs(folder, options):
    """A tmpfs mounted on ``folder`` (needs root); the test is skipped where it cannot be mounted."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True,
                          text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


@contextlib.contextmanager
def read_only(folder):
    """``folder`` made read-only: by its mode bits, or (for root, whom they do not stop) by a read-only mount."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)
    else:
        with tmpfs(folder, "ro,size=1m"):
            yield folder


def train_line(argv):
    """Run train.py in a process; (exit status, its stderr)."""
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), *argv], cwd=ROOT, env=ONE_THREAD,
                          capture_output=True, text=True, timeout=300)
    return done.returncode, done.stderr


# ------------------------------------------------------------------ one run per checkpoint folder
def test_a_second_run_is_refused_while_the_first_lives_and_starts_once_it_is_killed(tmp_path):
    faces = make_faces(tmp_path / "faces", 4)
    common = ("--continue_train", "auto", "--num_threads", "1", "--print_freq", "1")
    run_dir = tmp_path / "ckpt" / "locked"
    log_path = tmp_path / "first.out"
    first_argv = train_argv(tmp_path, faces, "locked", *common, "--max_iters", "1000")
    with started([sys.executable, str(ROOT / "train.py"), *first_argv], log_path, tmp_path) as first:
        try:
            wait_for(log_path, "iteration 1: loss", first)
            # Frozen with its DataLoader worker, so that its files stay as they are while the second run starts.
            os.killpg(first.pid, signal.SIGSTOP)
            before = file_hashes(tmp_path)
            code, err = train_line(train_argv(tmp_path, faces, "locked", *common, "--max_iters", "3"))
            assert code == 2 and "Traceback" not in err, err
            assert err.strip().splitlines()[-1] == (
                f"error: {run_dir} is in use: another training with this --ckpt_dir and --name is running (it holds "
                f"the lock {tmp_path / 'ckpt' / '.locked.lock'}); wait for it to end or stop it, or choose another "
                f"--name")
            assert_unchanged(before, file_hashes(tmp_path))
            # kill -9 of the first run's main process: its worker is still there (stopped) and holds no lock.
            first.kill()
            first.wait()
            code, err = train_line(train_argv(tmp_path, faces, "locked", *common, "--max_iters", "3"))
            assert code == 0, err[-3000:]
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(first.pid, signal.SIGKILL)
    assert load_checkpoint(run_dir / "latest.pt")["iteration"] == 3


# ------------------------------------------------------------------ output folders
@pytest.mark.parametrize("flag", ["--ckpt_dir", "--checkpoints_dir"])
@pytest.mark.parametrize("problem", ["through a file", "read-only"])
def test_an_unusable_output_folder_is_refused_before_training(tmp_path, faces6, capsys, flag, problem):
    (tmp_path / "notes.txt").write_text("the user's")
    with contextlib.ExitStack() as stack:
        if problem == "through a file":
            folder = tmp_path / "notes.txt" / "runs"
        else:
            folder = stack.enter_context(read_only(tmp_path / "runs"))
        argv = [*train_argv(tmp_path, faces6, "out", "--max_iters", "1"), flag, str(folder)]
        before = file_hashes(tmp_path)
        line = refused(train_script.main, argv, capsys)
        assert_unchanged(before, file_hashes(tmp_path))
    reason = "a path through a file" if problem == "through a file" else "(Read-only file system|Permission denied)"
    assert re.fullmatch(f"error: {flag} {re.escape(str(folder))}: cannot write in {re.escape(str(folder))} "
                        f"\\({reason}\\); choose another {flag}", line), line


# ------------------------------------------------------------------ full disks
def test_a_full_checkpoint_disk_is_a_one_line_error(tmp_path, faces6, capsys):
    with tmpfs(tmp_path / "small", "size=64k") as small:
        argv = [*train_argv(tmp_path, faces6, "full", "--max_iters", "1"), "--ckpt_dir", str(small)]
        line = refused(train_script.main, argv, capsys)
        assert line == (f"error: {small / 'full' / 'latest.pt'}: cannot write the checkpoint (No space left on "
                        f"device); free disk space or choose another --ckpt_dir")
        assert sorted(p.name for p in (small / "full").iterdir()) == []  # no temp file left


def fill(folder):
    """Write into ``folder`` until its file system is full."""
    with contextlib.suppress(OSError), open(folder / "filler", "wb") as f:
        while True:
            f.write(b"\0" * 65536)
            f.flush()


@pytest.mark.parametrize("failure", ["disk full", "path blocked"])
def test_a_log_that_cannot_be_written_saves_latest_before_stopping(tmp_path, faces6, monkeypatch, failure):
    with contextlib.ExitStack() as stack:
        logs = stack.enter_context(tmpfs(tmp_path / "logs", "size=2m")) if failure == "disk full" else tmp_path / "logs"
        step = Trainer.train_step

        def failing_after_2(self, batch):
            if self.iteration == 2:  # the next visuals (iteration 3) cannot be written
                if failure == "disk full":
                    fill(logs)
                else:
                    (logs / "run" / "visuals").write_text("in the way")
            return step(self, batch)

        monkeypatch.setattr(Trainer, "train_step", failing_after_2)
        argv = [*train_argv(tmp_path, faces6, "run", "--max_iters", "10", "--visual_freq", "3"), "--checkpoints_dir",
                str(logs)]
        with pytest.raises(UserError) as err:
            train_script.main(argv)
    latest = tmp_path / "ckpt" / "run" / "latest.pt"
    cause = (f"{logs / 'run' / 'visuals' / 'iter_00000003.png'}: cannot write the file (No space left on device); "
             f"free disk space or choose another output folder" if failure == "disk full" else
             f"{logs / 'run'}: cannot write the training logs (Not a directory); free disk space or choose another "
             f"--checkpoints_dir")
    resume = f"{latest} holds iteration 3: resume it with --continue_train once the logs can be written"
    assert str(err.value) == f"{cause}; {resume}"
    assert load_checkpoint(latest)["iteration"] == 3


# ------------------------------------------------------------------ a bad training image
@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_corrupt_image_saves_latest_and_the_resume_can_skip_it(tmp_path, workers):
    faces = make_faces(tmp_path / "faces", 5)
    broken = faces / "face_002.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    # batch 1, seed 3: the epoch's order puts the broken file at this position
    order = [i for _, i in ResumableSampler(list(range(5)), seed=3)]
    position = order.index(2)
    assert position > 0
    common = ("--batch_size", "1", "--num_threads", workers, "--seed", "3")
    with pytest.raises(UserError) as err:
        run_training(tmp_path, faces, "bad", *common, "--max_iters", "8")
    latest = tmp_path / "ckpt" / "bad" / "latest.pt"
    assert str(err.value) == (f"{broken}: not a readable image (corrupt or unsupported format); re-export or remove "
                              f"it; {latest} holds iteration {position}: resume it with --continue_train after "
                              f"removing or re-exporting the image, or with --skip_bad_images")
    assert load_checkpoint(latest)["iteration"] == position

    trainer = run_training(tmp_path, faces, "bad", *common, "--max_iters", "8", "--continue_train",
                           "--skip_bad_images")
    assert trainer.iteration == 8
    log_text = (tmp_path / "check_points" / "bad" / "train_log.txt").read_text()
    assert f"skipping bad image: {broken}: not a readable image" in log_text


# ------------------------------------------------------------------ resuming
def test_resume_keeps_the_ema_unless_ema_0_is_typed(tmp_path, faces6):
    run_training(tmp_path, faces6, "ema", "--ema", "0.9", "--max_iters", "2")
    saved_ema = load_checkpoint(tmp_path / "ckpt" / "ema" / "latest.pt")["ema"]
    trainer = run_training(tmp_path, faces6, "ema", "--max_iters", "3", "--continue_train")
    assert trainer.ema is not None and trainer.ema.decay == 0.9
    latest = load_checkpoint(tmp_path / "ckpt" / "ema" / "latest.pt")
    assert latest["options"]["ema"] == 0.9 and "ema" in latest
    # the EMA continued from the saved one: one more update from it
    key = "shallow.0.weight"
    torch.testing.assert_close(latest["ema"][key], 0.9 * saved_ema[key] + 0.1 * latest["model"][key])
    log_text = (tmp_path / "check_points" / "ema" / "train_log.txt").read_text()
    assert (f"notice: --ema 0.9 as {tmp_path / 'ckpt' / 'ema' / 'latest.pt'} was trained: its EMA weights are kept "
            f"(--ema 0 drops them)") in log_text

    trainer = run_training(tmp_path, faces6, "ema", "--max_iters", "4", "--continue_train", "--ema", "0")
    assert trainer.ema is None and "ema" not in load_checkpoint(tmp_path / "ckpt" / "ema" / "latest.pt")


def rewrite(path, change):
    """Load the checkpoint at ``path``, apply ``change`` to it and save it again (with fresh checksums)."""
    ckpt = load_checkpoint(path)
    change(ckpt)
    ckpt.pop("checksums")
    save_checkpoint(path, ckpt)


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory, faces6):
    root = tmp_path_factory.mktemp("trained")
    run_training(root, faces6, "run", "--max_iters", "2")
    return root


@pytest.fixture
def trained(trained_once, tmp_path):
    """A copy of a 2-iteration run 'run' (logs, latest.pt) in its own folder."""
    for folder in ("ckpt", "check_points"):
        subprocess.run(["cp", "-a", str(trained_once / folder), str(tmp_path)], check=True)
    return tmp_path


def exp_avg_sq_nan(ckpt):
    ckpt["optimizer"]["state"][3]["exp_avg_sq"].view(-1)[0] = float("nan")


def test_a_non_finite_optimizer_state_is_refused_on_resume(trained, faces6, capsys):
    latest = trained / "ckpt" / "run" / "latest.pt"
    rewrite(latest, exp_avg_sq_nan)
    before = file_hashes(trained)
    line = refused(train_script.main, train_argv(trained, faces6, "run", "--continue_train", "--max_iters", "4"),
                   capsys)
    # the optimizer's parameter 3, in the order of the trainer's parameter groups
    net = HybriMamba(embed_dim=8, depth=1, n_layers=1)
    names = {id(p): name for name, p in net.named_parameters()}
    param3 = [names[id(p)] for group in net.optimizer_param_groups(0.02) for p in group["params"]][3]
    assert line == (f"error: {latest}: non-finite values (NaN or inf) in the optimizer state: exp_avg_sq of {param3}; "
                    f"this training state cannot continue: start a new --name from its weights with "
                    f"--pretrain_model_path {latest}, or resume an earlier checkpoint")
    assert_unchanged(before, file_hashes(trained))


@pytest.mark.parametrize("part", ["optimizer", "scheduler", "position"])
def test_damage_anywhere_in_the_training_state_is_refused(trained, faces6, capsys, part):
    latest = trained / "ckpt" / "run" / "latest.pt"
    ckpt = load_checkpoint(latest)
    if part == "optimizer":  # one bit of one optimizer tensor, inside the file
        tensor = ckpt["optimizer"]["state"][3]["exp_avg"]
        data = bytearray(latest.read_bytes())
        start = data.find(tensor.numpy().tobytes())
        assert start > 0
        data[start + 2] ^= 0x01
        latest.write_bytes(bytes(data))
    else:  # the same object pickled again with one value changed, the stored checksums kept
        if part == "scheduler":
            ckpt["scheduler"]["last_epoch"] += 1
        else:
            ckpt["iteration"] += 1
        torch.save(ckpt, latest)
    before = file_hashes(trained)
    line = refused(train_script.main, train_argv(trained, faces6, "run", "--continue_train", "--max_iters", "4"),
                   capsys)
    assert line == (f"error: {latest}: the training state (optimizer, position, options) does not match the checksum "
                    f"stored with it (the file is damaged); use another checkpoint (e.g. an iter_<N>.pt) or copy it "
                    f"again")
    assert_unchanged(before, file_hashes(trained))


def test_absurd_network_options_in_a_checkpoint_are_never_used_to_build(trained, faces6, capsys):
    # train.py builds the network from its own command line; a checkpoint's stored options only name the
    # config in a mismatch message, and an invalid one is left out of it.
    latest = trained / "ckpt" / "run" / "latest.pt"

    def absurd(ckpt):
        ckpt["options"].update(embed_dim=100000, expand=float("inf"), depth="abc")

    rewrite(latest, absurd)
    assert run_training(trained, faces6, "run", "--continue_train", "--max_iters", "3").iteration == 3
    rewrite(latest, absurd)  # the resumed run saved its own options
    line = refused(train_script.main, [*train_argv(trained, faces6, "other", "--max_iters", "1"), "--embed_dim", "12",
                                       "--pretrain_model_path", str(latest)], capsys)
    assert line.startswith(f"error: {latest}: weights do not fit this network (") and line.endswith(")")


def test_resume_with_a_changed_data_set_says_so_with_counts(tmp_path):
    faces = make_faces(tmp_path / "faces", 6)
    log_path = tmp_path / "check_points" / "data" / "train_log.txt"
    run_training(tmp_path, faces, "data", "--max_iters", "2")
    make_faces(tmp_path / "more", 7)
    (tmp_path / "more" / "face_006.png").rename(faces / "face_006.png")  # batch 2: still 3 iterations per epoch
    run_training(tmp_path, faces, "data", "--max_iters", "3", "--continue_train")
    assert ("notice: the training set changed since the checkpoint was saved (7 images now, 6 then): every epoch is "
            "shuffled over the new set, so the run will not match an uninterrupted one") in log_path.read_text()
    (faces / "face_006.png").rename(faces / "face_100.png")  # 7 again, one of them another file
    run_training(tmp_path, faces, "data", "--max_iters", "4", "--continue_train")
    assert "(7 images then and now, but not the same files)" in log_path.read_text()
    run_training(tmp_path, faces, "data", "--max_iters", "5", "--continue_train")  # unchanged: no notice
    assert log_path.read_text().count("the training set changed") == 2


def test_a_failed_write_early_in_a_save_is_the_full_disk_message(tmp_path, monkeypatch):
    import models.checkpoint as checkpoint_module

    class FullAfter100Bytes:
        def __init__(self, file):
            self.file, self.written = file, 0

        def write(self, data):
            self.written += len(data)
            if self.written > 100:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.file.write(data)

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    monkeypatch.setattr(checkpoint_module, "open", lambda path, mode: FullAfter100Bytes(open(path, mode)),
                        raising=False)
    path = tmp_path / "latest.pt"
    with pytest.raises(UserError) as err:
        save_checkpoint(path, {"model": {"w": torch.ones(1000)}, "iteration": 1})
    assert str(err.value) == (f"{path}: cannot write the checkpoint (No space left on device); free disk space or "
                              f"choose another --ckpt_dir")
    assert os.listdir(tmp_path) == []
