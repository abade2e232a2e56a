"""Nothing a user made is lost and no failure is silent: each case is refused (or handled) with a
one-line error, exit code 2, and every file that existed before is byte-identical afterwards."""
import errno
import logging
import math
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import param
import psnr_ssim
import train as train_script
from data import make_lr, prepare_celeba
from models import HybriMamba
from models.checkpoint import load_checkpoint, load_weights, save_checkpoint
from options import TestOptions, TrainOptions
from tests.conftest import ROOT, file_hashes
from tests.test_eval_scripts import reference_metrics
from utils.errors import UserError, run_cli
from utils.evaluation.inference import run_test
from utils.training.trainer import NonFiniteError, train

TINY = {"embed_dim": 4, "depth": 1, "n_layers": 1}
TINY_FLAGS = [f for k, v in TINY.items() for f in (f"--{k}", str(v))]
SIZE = 16  # HR side in training and the network's input side in test.py


def refused(main, argv, capsys):
    """Run a script's ``main`` as its ``__main__`` does; it must exit 2 with one 'error:' line. Returns the line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, [str(a) for a in argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert "Traceback" not in err and err.count("error:") == 1, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: ")
    return line


def assert_unchanged(before, after, allow_new=False):
    changed = [p for p, h in before.items() if after.get(p) != h]
    assert changed == [], changed
    if not allow_new:
        assert sorted(after) == sorted(before)


def random_images(folder, names, size, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        w, h = size if isinstance(size, tuple) else (size, size)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
    return folder


# ------------------------------------------------------------------ test.py
def sr_main(argv):
    """test.py's main without progress bars."""
    run_test(TestOptions().parse(argv), progress=False)
    return 0


@pytest.fixture(scope="module")
def tiny_weights():
    torch.manual_seed(0)
    return HybriMamba(**TINY).state_dict()


@pytest.fixture
def setup(tmp_path, tiny_weights):
    """inputs/lr (4x4 LR faces), inputs/hr (16x16 ground truth) and a training-layout checkpoint."""
    lr = random_images(tmp_path / "inputs" / "lr", ["a.png", "b.png"], 4)
    hr = random_images(tmp_path / "inputs" / "hr", ["a.png", "b.png"], SIZE, seed=1)
    options = dict(vars(TrainOptions().parse(["--dataroot", "unused", *TINY_FLAGS])))
    ckpt = tmp_path / "model.pt"
    save_checkpoint(ckpt, {"model": tiny_weights, "options": options, "iteration": 1})
    return tmp_path, lr, hr, ckpt


def sr_args(lr, ckpt, out, *extra):
    """test.py's command line."""
    return ["--gpus", "0", "--num_threads", "0", "--load_size", SIZE, "--scale_factor", 4, "--dataroot", lr,
            "--pretrain_model_path", ckpt, "--save_as_dir", out, *extra]


@pytest.mark.parametrize("where, relation", [("inputs/lr", "is"), ("inputs/hr", "is"), ("inputs/lr/sub", "is inside"),
                                             ("inputs", "contains")])
def test_test_py_refuses_an_output_folder_overlapping_its_inputs(setup, capsys, where, relation):
    root, lr, hr, ckpt = setup
    out = root / where
    before = file_hashes(root)
    line = refused(sr_main, sr_args(lr, ckpt, out, "--hr_dir", hr), capsys)
    flag, folder = ("--hr_dir", hr) if where == "inputs/hr" else ("--dataroot", lr)
    assert line == (f"error: --save_as_dir {out} {relation} the input folder {flag} {folder}; choose a separate "
                    f"output folder so that no input is overwritten")
    assert_unchanged(before, file_hashes(root))
    assert not out.exists() or out in (lr, hr, root / "inputs")


def corrupt_tensor_bytes(path, tensor):
    """Flip one low mantissa bit in the middle of ``tensor``'s bytes inside the file (a still-finite value)."""
    data = bytearray(path.read_bytes())
    start = data.find(tensor.numpy().tobytes())
    assert start > 0
    data[start + tensor.numel() * tensor.element_size() // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["nan", "flipped", "overflow"])
def test_damaged_weights_stop_test_py_before_any_output(setup, tiny_weights, capsys, damage):
    root, lr, _, ckpt = setup
    state = {k: v.clone() for k, v in tiny_weights.items()}
    if damage == "nan":
        state["enc0.blocks.0.norm1.weight"][1] = float("nan")
        state["reconstruct.0.bias"][0] = float("inf")
    elif damage == "overflow":  # finite weights whose output is not
        state["reconstruct.0.weight"].fill_(3e38)
    save_checkpoint(ckpt, {"model": state, "iteration": 1})
    if damage == "flipped":
        corrupt_tensor_bytes(ckpt, state["enc0.blocks.0.lem.mlp.0.weight"])
    assert torch.load(ckpt, weights_only=True)["iteration"] == 1  # the plain safe loader still reads the file
    out = root / "sr"
    line = refused(sr_main, sr_args(lr, ckpt, out, *TINY_FLAGS), capsys)
    expected = {
        "nan": f"error: {ckpt}: non-finite values (NaN or inf) in 2 tensor(s): enc0.blocks.0.norm1.weight, "
               f"reconstruct.0.bias; these weights are unusable, use an earlier checkpoint",
        "flipped": f"error: {ckpt}: the 'model' weights do not match the checksum stored with them (the file is "
                   f"damaged); use another checkpoint (e.g. an iter_<N>.pt) or copy it again",
        "overflow": f"error: non-finite output (NaN or inf) for {lr / 'a.png'}, {lr / 'b.png'}: the weights "
                    f"overflow on these inputs; use an earlier checkpoint",
    }[damage]
    assert line == expected
    assert not list(out.glob("*.png")) if out.exists() else True


def test_checkpoint_without_checksum_loads_with_a_notice(tmp_path, tiny_weights, caplog):
    old = tmp_path / "old.pt"
    torch.save({"model": tiny_weights, "iteration": 5}, old)  # as written before checksums were stored
    net = HybriMamba(**TINY)
    with caplog.at_level(logging.WARNING, logger="hybrimamba"):
        assert load_weights(net, old) == f"raw weights from {old} (iteration 5)"
    assert f"notice: {old}: no weights checksum stored (an older checkpoint); damage to it cannot be detected" \
        in caplog.messages
    assert all(torch.equal(net.state_dict()[k], v) for k, v in tiny_weights.items())
    caplog.clear()
    new = tmp_path / "new.pt"
    save_checkpoint(new, {"model": tiny_weights, "ema": tiny_weights, "iteration": 5})
    with caplog.at_level(logging.WARNING, logger="hybrimamba"):
        load_weights(net, new)
    assert caplog.messages == []
    corrupt_tensor_bytes(new, tiny_weights["shallow.0.weight"])  # the first copy in the file: the raw weights
    with pytest.raises(UserError, match="the 'model' weights do not match the checksum"):
        load_checkpoint(new)


def test_test_py_on_a_full_disk_is_one_line_and_leaves_no_temp_file(setup, capsys, monkeypatch):
    root, lr, _, ckpt = setup
    real_open = pathlib.Path.open

    def disk_fills_up(self, mode="r", *args, **kwargs):
        f = real_open(self, mode, *args, **kwargs)
        if not set(mode) & {"w", "x"}:
            return f
        write = f.write

        def half_then_enospc(data):
            write(bytes(memoryview(data))[:len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        f.write = half_then_enospc
        return f

    monkeypatch.setattr(pathlib.Path, "open", disk_fills_up)
    out = root / "sr"
    line = refused(sr_main, sr_args(lr, ckpt, out), capsys)
    assert line == (f"error: {out / 'a.png'}: cannot write the file (No space left on device); "
                    f"free disk space or choose another output folder")
    assert sorted(p.name for p in out.iterdir()) == []


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 96.00 GiB"),
                                   RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't "
                                                "allocate memory: you tried to allocate 103079215104 bytes")])
def test_out_of_memory_in_test_py_suggests_a_smaller_size(setup, capsys, monkeypatch, error):
    root, lr, _, ckpt = setup

    def no_memory(self, x):
        raise error

    monkeypatch.setattr(HybriMamba, "forward", no_memory)
    out = root / "sr"
    line = refused(sr_main, sr_args(lr, ckpt, out, "--batch_size", "2"), capsys)
    assert line == (f"error: out of memory running 2 image(s) of {SIZE}x{SIZE} on cpu; lower --batch_size "
                    f"(now 2) or --load_size (now {SIZE})")
    assert not list(out.glob("*.png")) if out.exists() else True


def test_test_py_checks_every_input_before_writing(setup, capsys, caplog):
    root, lr, _, ckpt = setup
    (lr / "z.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # sorts last: a lazy reader writes a, b first
    out = root / "sr"
    before = file_hashes(root)
    line = refused(sr_main, sr_args(lr, ckpt, out), capsys)
    assert line == (f"error: {lr / 'z.png'}: not a readable image (corrupt or unsupported format); re-export or "
                    f"remove it (or pass --skip_bad_images to leave out the 1 unreadable input(s))")
    assert_unchanged(before, file_hashes(root))
    with caplog.at_level(logging.WARNING, logger="hybrimamba"):
        run_cli(sr_main, [str(a) for a in sr_args(lr, ckpt, out, "--skip_bad_images")])
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "b.png"]
    assert f"notice: skipping 1 unreadable input(s): {lr / 'z.png'}" in caplog.messages


def test_non_square_or_off_size_inputs_are_resized_with_a_notice(setup, caplog):
    root, lr, _, ckpt = setup
    random_images(lr, ["c.png"], (6, 4), seed=3)
    random_images(lr, ["d.png"], 5, seed=4)
    out = root / "sr"
    with caplog.at_level(logging.WARNING, logger="hybrimamba"):
        run_cli(sr_main, [str(a) for a in sr_args(lr, ckpt, out)])
    assert f"notice: {lr / 'c.png'} is 6x4, not square: stretched to {SIZE}x{SIZE} (1 such input(s))" \
        in caplog.messages
    assert (f"notice: {lr / 'd.png'} is 5x5, neither the LR size 4x4 (--load_size {SIZE} / --scale_factor 4) nor "
            f"{SIZE}x{SIZE}: resized to {SIZE}x{SIZE} (1 such input(s))") in caplog.messages
    assert all(np.asarray(Image.open(p)).shape == (SIZE, SIZE, 3) for p in out.glob("*.png"))


def test_psnr_ssim_reports_identical_pairs_apart_from_the_mean(tmp_path, capsys):
    gt = random_images(tmp_path / "gt", ["a.png", "b.png", "c.png"], 24)
    sr = tmp_path / "sr"
    shutil.copytree(gt, sr)
    rng = np.random.default_rng(5)
    for name in ("b.png", "c.png"):
        img = np.asarray(Image.open(gt / name)).astype(int)
        Image.fromarray(np.clip(img + rng.integers(-9, 10, img.shape), 0, 255).astype(np.uint8)).save(sr / name)
    psnr_ssim.main([str(gt), str(sr)])
    printed = capsys.readouterr().out
    scores = [reference_metrics(np.asarray(Image.open(gt / n)), np.asarray(Image.open(sr / n)))
              for n in ("b.png", "c.png")]
    assert f"PSNR: {np.mean([p for p, _ in scores]):.4f} dB (Y truncate) over 2 pair(s); 1 identical pair(s) " \
           f"left out (their PSNR is infinite)" in printed
    assert f"SSIM: {np.mean([s for _, s in scores] + [1.0]):.4f} (Y truncate)" in printed
    assert "inf" not in printed.replace("infinite", "")


# ------------------------------------------------------------------ other scripts
@pytest.mark.parametrize("argv, message", [
    (["--size", "0", "0"], "--size: must be > 0, got 0"),
    (["--embed_dim", "0"], "--embed_dim: must be > 0, got 0"),
    (["--repeats", "0"], "--repeats: must be > 0, got 0"),
    (["--device", "cuda"], "--device cuda: CUDA is not available on this machine; use --device cpu"),
    (["--device", "gpu7"], "--device gpu7: not a device torch knows; use cpu or cuda"),
])
def test_param_py_bad_options_are_one_line_errors(capsys, argv, message):
    if argv[-1] == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    line = refused(param.main, [*TINY_FLAGS, *argv, "--no_latency"], capsys)
    assert message in line


def test_prepare_celeba_and_make_lr_bad_paths_are_one_line_errors(tmp_path, capsys):
    src = random_images(tmp_path / "src", ["000001.png"], 16)
    out = tmp_path / "out"
    line = refused(prepare_celeba.main, ["--src", src, "--out", out, "--split", "test", "--partition",
                                          tmp_path / "missing.txt"], capsys)
    assert line == f"error: --partition {tmp_path / 'missing.txt'}: no such file; pass CelebA's list_eval_partition.txt"
    line = refused(prepare_celeba.main, ["--src", src, "--out", out, "--box", "auto", "--size", "0"], capsys)
    assert line == "error: --size 0: must be a positive number of pixels, e.g. 128"
    assert not out.exists()

    target = tmp_path / "notes.txt"
    target.write_text("my notes\n")
    before = file_hashes(tmp_path)
    line = refused(make_lr.main, [src, "--lr_dir", target, "--scale", "2"], capsys)
    assert line == f"error: --lr_dir {target}: is a file, not a folder; choose a folder for the outputs"
    assert_unchanged(before, file_hashes(tmp_path))


# ------------------------------------------------------------------ train.py
def make_faces(folder, count=4):
    return random_images(folder, [f"f{i}.png" for i in range(count)], SIZE, seed=7)


def train_args(root, name, *extra):
    return ["--gpus", "0", "--name", name, "--dataroot", root / "faces", "--load_size", SIZE, "--batch_size", "2",
            "--num_threads", "0", "--checkpoints_dir", root / "logs", "--ckpt_dir", root / "ckpt", *TINY_FLAGS,
            *[str(e) for e in extra]]


def run_training(root, name, *extra):
    return train(TrainOptions().parse([str(a) for a in train_args(root, name, *extra)]))


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    make_faces(root / "faces")
    run_training(root, "run", "--max_iters", 2, "--lr", "1e-3")
    return root


@pytest.fixture
def trained(trained_once, tmp_path):
    """A copy of a 2-iteration run 'run' (faces, logs, latest.pt at iteration 2) in its own folder."""
    shutil.copytree(trained_once, tmp_path, dirs_exist_ok=True)
    return tmp_path


def test_restart_is_refused_and_overwrite_moves_the_old_run_aside(trained, capsys, caplog):
    root = trained
    before = file_hashes(root)
    line = refused(train_script.main, train_args(root, "run", "--max_iters", 1), capsys)
    assert line == (f"error: {root / 'ckpt' / 'run'} holds the checkpoints of an earlier run (latest.pt at "
                    f"iteration 2); resume it with --continue_train, choose a new --name, or pass --overwrite "
                    f"to move the earlier run aside")
    assert_unchanged(before, file_hashes(root))

    with caplog.at_level(logging.WARNING, logger="hybrimamba"):
        run_training(root, "run", "--max_iters", 1, "--overwrite")
    after = file_hashes(root)
    moved = {p: h for p, h in after.items() if ".replaced-" in str(p)}
    # every earlier file, byte for byte, under <ckpt_dir|checkpoints_dir>/run.replaced-<time>/
    renamed = {pathlib.Path(str(p).replace(".replaced-" + str(p).split(".replaced-")[1].split("/")[0], "")): h
               for p, h in moved.items()}
    faces = {p: h for p, h in before.items() if root / "faces" in p.parents}
    # the run lock (<ckpt_dir>/.run.lock) belongs to the name, not to the run: it stays
    assert renamed == {p: h for p, h in before.items() if p not in faces and p.name != ".run.lock"}
    assert_unchanged(faces, after, allow_new=True)
    assert load_checkpoint(root / "ckpt" / "run" / "latest.pt")["iteration"] == 1
    assert any(m.startswith("notice: --overwrite: the earlier run moved to ") for m in caplog.messages)


def test_continue_train_on_bare_weights_is_a_one_line_error(tmp_path, tiny_weights, capsys):
    make_faces(tmp_path / "faces")
    latest = tmp_path / "ckpt" / "bare" / "latest.pt"
    save_checkpoint(latest, tiny_weights)
    line = refused(train_script.main, train_args(tmp_path, "bare", "--continue_train", "--max_iters", 1), capsys)
    assert line == (f"error: {latest}: holds network weights only, not a training state; --continue_train needs a "
                    f"latest.pt written by train.py (to start from these weights: --pretrain_model_path {latest} "
                    f"and a new --name)")


def test_divergence_keeps_the_last_sane_checkpoint_and_resume_takes_a_new_lr(trained, caplog):
    root = trained
    sane = load_checkpoint(root / "ckpt" / "run" / "latest.pt")
    with pytest.raises(NonFiniteError) as err:
        run_training(root, "run", "--continue_train", "--lr", "1e6", "--save_latest_freq", 1, "--max_iters", 8)
    message = str(err.value)
    assert "\n" not in message
    assert message.endswith(f"the last sane checkpoint {root / 'ckpt' / 'run' / 'latest.pt'} (iteration 2) is kept; "
                            f"resume it with --continue_train and a lower --lr, or set --grad_clip")
    kept = load_checkpoint(root / "ckpt" / "run" / "latest.pt")
    assert kept["iteration"] == 2
    assert all(torch.equal(kept["model"][k], v) for k, v in sane["model"].items())

    with caplog.at_level(logging.WARNING, logger="hybrimamba"):
        trainer = run_training(root, "run", "--continue_train", "--lr", "5e-4", "--max_iters", 4)
    assert trainer.iteration == 4
    assert "notice: --lr 0.0005 from the command line replaces the checkpoint's 0.001 (learning rate now 0.0005)" \
        in caplog.messages
    latest = load_checkpoint(root / "ckpt" / "run" / "latest.pt")
    assert [g["lr"] for g in latest["optimizer"]["param_groups"]] == [5e-4, 5e-4]
    assert latest["options"]["lr"] == 5e-4


def test_schedule_options_given_on_resume_replace_the_checkpoints(trained, caplog):
    root = trained  # 4 faces, batch 2: 2 iterations per epoch, so latest.pt is 1 epoch in
    with caplog.at_level(logging.WARNING, logger="hybrimamba"):
        trainer = run_training(root, "run", "--continue_train", "--lr_milestones", 1, "--lr_gamma", "0.1",
                               "--weight_decay", "0.5", "--beta1", "0.8", "--max_iters", 3)
    assert trainer.iteration == 3
    groups = trainer.optimizer.param_groups
    assert groups[0]["lr"] == pytest.approx(1e-4)
    assert groups[0]["weight_decay"] == 0.5 and groups[1]["weight_decay"] == 0
    assert all(g["betas"] == (0.8, 0.99) for g in groups)
    assert any("--lr_milestones [1] from the command line replaces the checkpoint's [20, 40, 60, 80]" in m
               for m in caplog.messages)


def test_temp_files_of_an_interrupted_save_are_removed_at_the_next_start(trained, caplog):
    root = trained
    run_dir = root / "ckpt" / "run"
    leftover = run_dir / ".latest.pt.4242.0123abcd.tmp"
    leftover.write_bytes(b"x" * 1000)
    mine = run_dir / "notes.tmp"
    mine.write_text("not ours")
    with caplog.at_level(logging.WARNING, logger="hybrimamba"):
        run_training(root, "run", "--continue_train", "--max_iters", 3)
    assert not leftover.exists() and mine.read_text() == "not ours"
    assert f"notice: removed 1 temporary file(s) of an interrupted save from {run_dir} (0.0 MB)" in caplog.messages


# ------------------------------------------------------------------ kill -9 while saving
HANG_IN_SAVE = """
import io, os, pathlib, runpy, sys, time
import torch
marker, phase = pathlib.Path(sys.argv[1]), sys.argv[2]
real_save, saves = torch.save, [0]

def slow_save(obj, f):
    saves[0] += 1
    if saves[0] < 2:  # the first save of the run completes
        return real_save(obj, f)
    buffer = io.BytesIO()
    real_save(obj, buffer)
    data = buffer.getvalue()
    f.write(data if phase == "written" else data[:len(data) // 2])
    f.flush()
    marker.write_text(phase)
    time.sleep(120)

torch.save = slow_save
sys.argv = ["train.py", *sys.argv[3:]]
runpy.run_path("train.py", run_name="__main__")
"""


def test_kill_9_while_saving_never_breaks_latest_pt(tmp_path):
    make_faces(tmp_path / "faces")
    run_dir = tmp_path / "ckpt" / "k9"
    # This machine's extension folder (not a default one in a home folder that other checkouts may rebuild).
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
           **{k: os.environ[k] for k in ("TORCH_EXTENSIONS_DIR",) if k in os.environ}}
    iteration = 0
    for kill, phase in enumerate(["half", "written", "half"]):
        marker = tmp_path / f"saving{kill}"
        extra = ["--continue_train"] if kill else []
        argv = train_args(tmp_path, "k9", "--save_latest_freq", 1, "--max_iters", 20, *extra)
        proc = subprocess.Popen([sys.executable, "-c", HANG_IN_SAVE, str(marker), phase, *map(str, argv)], cwd=ROOT,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 240
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), proc.stderr.read().decode() if proc.poll() is not None else "timed out"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        iteration += 1  # each run saves one iteration, then is killed while saving the next
        temps = sorted(p.name for p in run_dir.iterdir() if p.name.endswith(".tmp"))
        assert len(temps) == 1 and temps[0].startswith(f".latest.pt.{proc.pid}."), temps  # only this kill's
        assert load_checkpoint(run_dir / "latest.pt")["iteration"] == iteration
    done = subprocess.run([sys.executable, "train.py", *map(str, train_args(tmp_path, "k9", "--continue_train",
                                                                          "--max_iters", 5))],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "removed 1 temporary file(s) of an interrupted save" in done.stdout + done.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == ["latest.pt"]
    assert load_checkpoint(run_dir / "latest.pt")["iteration"] == 5
    assert math.isfinite(float(load_checkpoint(run_dir / "latest.pt")["model"]["shallow.0.weight"].abs().max()))
