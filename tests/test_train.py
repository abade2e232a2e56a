"""Training: a short run learns and writes logs/checkpoints, exact resume, DDP, non-finite loss, devices."""
import os
import random
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import utils.training.trainer as trainer_module
from data.image_tensor import to_tensor, to_uint8
from models import HybriMamba, image_ssm
from models.checkpoint import load_checkpoint, load_weights, save_checkpoint
from models.device import unwrap
from options import TrainOptions
from tests import network_oracle
from tests.conftest import ROOT
from utils.errors import UserError
from utils.evaluation.metrics import evaluate_pair
from utils.image_io import read_rgb
from utils.training.data import ResumableSampler, SeededSamples
from utils.training.distributed import plan_devices
from utils.training.ema import ModelEMA
from utils.training.logger import image_grid
from utils.training.state import rng_state, set_rng_state
from utils.training.trainer import NonFiniteError, Trainer, train

SIZE = 16
TINY = ["--embed_dim", "8", "--depth", "1", "--n_layers", "1"]


def make_faces(folder, count, seed=0):
    """Small face-like RGB images: skin ellipse, dark eyes and mouth, textured background, noise."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1)
    for i in range(count):
        cx, cy = 0.5 + rng.uniform(-0.08, 0.08), 0.5 + rng.uniform(-0.08, 0.08)
        img = np.stack([60 + 80 * x, 90 + 60 * y, 140 + 50 * np.sin(6 * x + i)], axis=-1)
        face = ((x - cx) / 0.33) ** 2 + ((y - cy) / 0.42) ** 2 < 1
        img[face] = rng.uniform(170, 230) * np.array([1.0, 0.8, 0.65])
        for ex in (cx - 0.14, cx + 0.14):
            img[((x - ex) / 0.07) ** 2 + ((y - cy + 0.1) / 0.05) ** 2 < 1] = (40, 30, 30)
        img[(np.abs(x - cx) < 0.15) & (np.abs(y - cy - 0.2) < 0.03)] = (150, 50, 60)
        img += rng.normal(0, 6, img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"face_{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def faces6(tmp_path_factory):
    return make_faces(tmp_path_factory.mktemp("faces6"), 6)


def train_argv(tmp_path, dataroot, name, *extra):
    return ["--gpus", "0", "--name", name, "--dataroot", str(dataroot), "--load_size", str(SIZE),
            "--checkpoints_dir", str(tmp_path / "check_points"), "--ckpt_dir", str(tmp_path / "ckpt"),
            "--batch_size", "2", "--num_threads", "0", *TINY, *extra]


def run_training(tmp_path, dataroot, name, *extra):
    return train(TrainOptions().parse(train_argv(tmp_path, dataroot, name, *extra)))


def tensor_leaves(obj, prefix=""):
    """Every tensor of a nested dict/list structure, keyed by its path."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else []
    return {k: v for key, value in items for k, v in tensor_leaves(value, f"{prefix}/{key}").items()}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ a short run
def test_short_run_learns_and_writes_logs_visuals_and_checkpoints(tmp_path):
    faces = make_faces(tmp_path / "faces", 2, seed=1)
    trainer = run_training(tmp_path, faces, "short", "--max_iters", "30", "--lr", "2e-3", "--lr_milestones", "100",
                           "--print_freq", "1", "--visual_freq", "10", "--save_latest_freq", "10",
                           "--save_iter_freq", "15", "--val_dataroot", str(faces), "--val_freq", "15",
                           "--ema", "0.8")
    exp, ckpt = tmp_path / "check_points" / "short", tmp_path / "ckpt" / "short"
    assert sorted(p.name for p in ckpt.iterdir()) == ["best.pt", "iter_15.pt", "iter_30.pt", "latest.pt"]
    latest = load_checkpoint(ckpt / "latest.pt")
    assert latest["iteration"] == 30 and latest["epoch"] == 30 and latest["batch_in_epoch"] == 0
    assert not any(k.startswith("module.") for k in latest["model"])
    assert set(latest) >= {"model", "ema", "optimizer", "scheduler", "scaler", "epoch", "iteration", "rng", "options"}

    events = EventAccumulator(str(exp / "tb")).Reload()
    losses = {e.step: e.value for e in events.Scalars("train/loss_l1")}
    assert sorted(losses) == list(range(1, 31))
    # From the init's residual (std about 1, docs/architecture.md §3.6) the loss falls within a few steps.
    assert np.mean([losses[i] for i in range(26, 31)]) < 0.8 * losses[1]
    assert {e.step for e in events.Scalars("train/lr")} == set(losses)

    # Validation: recompute PSNR/SSIM-Y of best.pt's EMA weights on the un-augmented pairs, LR made with PIL here.
    val = {e.step: e.value for e in events.Scalars("val/psnr_y")}
    assert sorted(val) == [15, 30]
    best = load_checkpoint(ckpt / "best.pt")
    assert best["best"]["psnr"] == pytest.approx(max(val.values()), abs=1e-4)
    net = HybriMamba(embed_dim=8, depth=1, n_layers=1)
    load_weights(net, ckpt / "best.pt")
    hrs = [Image.open(path).convert("RGB") for path in sorted(faces.iterdir())]
    lr_up = [hr.resize((2, 2), Image.BICUBIC).resize((SIZE, SIZE), Image.BICUBIC) for hr in hrs]
    with torch.no_grad():
        sr = net(torch.stack([to_tensor(np.asarray(im)) for im in lr_up]))
    scores = [evaluate_pair(np.asarray(hr), out) for hr, out in zip(hrs, to_uint8(sr))]
    assert np.mean([s[0] for s in scores]) == pytest.approx(best["best"]["psnr"], abs=1e-6)
    assert np.mean([s[1] for s in scores]) == pytest.approx(best["best"]["ssim"], abs=1e-9)

    # LR|SR|HR grids of the first (up to 4) samples of the batch, as PNG.
    assert sorted(p.name for p in (exp / "visuals").glob("*.png")) == [f"iter_{i:08d}.png" for i in (10, 20, 30)]
    assert read_rgb(exp / "visuals" / "iter_00000030.png").shape == (2 * SIZE, 3 * SIZE, 3)
    log_text = (exp / "train_log.txt").read_text()
    assert "iteration 30: loss" in log_text and "validation at iteration 30" in log_text
    assert "lr: 0.002\t[default: 0.0004]" in (exp / "train_opt.txt").read_text()
    assert trainer.iteration == 30


def test_image_grid_layout():
    lr, sr, hr = (torch.rand(5, 3, 4, 6) * 2 - 1 for _ in range(3))
    grid = image_grid(lr, sr, hr)
    assert grid.shape == (4 * 4, 3 * 6, 3) and grid.dtype == np.uint8
    for row in range(4):
        for col, batch in enumerate((lr, sr, hr)):
            np.testing.assert_array_equal(grid[4 * row:4 * row + 4, 6 * col:6 * col + 6], to_uint8(batch[row]))


# ------------------------------------------------------------------ exact resume
def record_steps(monkeypatch):
    """Make every training step draw from ``random``, ``numpy.random`` and ``torch`` (as a dropout layer
    or a user's augmentation would) and record those draws with the batch the step trained on, as
    {run name: {iteration: record}}."""
    steps = {}
    train_step = Trainer.train_step

    def drawing_step(self, batch):
        steps.setdefault(self.opt.name, {})[self.iteration + 1] = {
            "random": random.random(), "numpy": np.random.random(), "torch": torch.rand(3),
            "HR": batch["HR"].clone(), "LR": batch["LR"].clone()}
        return train_step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", drawing_step)
    return steps


def assert_same_steps(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].keys() == b[key].keys()
        for what, value in a[key].items():
            other = b[key][what]
            same = torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other
            assert same, f"step {key}: {what} differs"


@pytest.mark.parametrize("workers", ["0", "1"])
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, faces6, workers, monkeypatch):
    # 6 images, batch 2: 3 iterations per epoch. Stop mid-epoch (4), cross LR milestones, EMA and clipping on.
    common = ("--num_threads", workers, "--lr_milestones", "1", "2", "--ema", "0.9", "--grad_clip", "0.5",
              "--lr", "1e-3", "--seed", "7")
    steps = record_steps(monkeypatch)
    run_training(tmp_path, faces6, "straight", *common, "--max_iters", "8")
    run_training(tmp_path, faces6, "resumed", *common, "--max_iters", "4")
    first_half = load_checkpoint(tmp_path / "ckpt" / "resumed" / "latest.pt")
    assert (first_half["iteration"], first_half["epoch"], first_half["batch_in_epoch"]) == (4, 1, 1)
    run_training(tmp_path, faces6, "resumed", *common, "--max_iters", "8", "--continue_train")

    # The draws of the global RNGs, the data order and the augmentation after the resume are the
    # uninterrupted run's; a fresh seed would repeat the first steps' draws instead.
    straight, resumed = steps["straight"], steps["resumed"]
    assert sorted(straight) == sorted(resumed) == list(range(1, 9))
    assert_same_steps(resumed, straight)
    assert straight[5]["random"] != straight[1]["random"] and not torch.equal(straight[5]["HR"], straight[2]["HR"])

    a = load_checkpoint(tmp_path / "ckpt" / "straight" / "latest.pt")
    b = load_checkpoint(tmp_path / "ckpt" / "resumed" / "latest.pt")
    ta, tb = tensor_leaves({k: a[k] for k in ("model", "ema", "optimizer", "rng")}), \
        tensor_leaves({k: b[k] for k in ("model", "ema", "optimizer", "rng")})
    assert ta.keys() == tb.keys() and len(ta) > 100
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert different == []
    assert a["scheduler"] == b["scheduler"] and a["scheduler"]["last_epoch"] == 2
    assert (a["iteration"], a["epoch"], a["batch_in_epoch"]) == (b["iteration"], b["epoch"], b["batch_in_epoch"])
    # The weights did move during the second half (the comparison is not between two unchanged copies).
    assert not torch.equal(a["model"]["shallow.0.weight"], first_half["model"]["shallow.0.weight"])


def test_activation_checkpointing_trains_the_same_weights(tmp_path, faces6):
    common = ("--max_iters", "3", "--seed", "3", "--lr", "1e-3")
    run_training(tmp_path, faces6, "stored", *common)
    trainer = run_training(tmp_path, faces6, "recomputed", *common, "--activation_checkpointing")
    assert all(stage.activation_checkpointing for stage in (trainer.model.enc0, trainer.model.dec3))
    a = load_checkpoint(tmp_path / "ckpt" / "stored" / "latest.pt")["model"]
    b = load_checkpoint(tmp_path / "ckpt" / "recomputed" / "latest.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_on_fewer_gpus_restores_the_cuda_rng_states_it_can(monkeypatch):
    state = rng_state()
    state["cuda"] = [torch.full((16,), i, dtype=torch.uint8) for i in range(3)]  # saved on 3 GPUs
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    set_rng_state(state)
    assert [s[0].item() for s in restored[0]] == [0, 1]


def record_precision(monkeypatch):
    """Record what a training run computes in which dtype: the output dtypes of the nn.Linear and
    nn.Conv2d modules (by name), the input dtypes of the FFTs, the first Image-SSM scan call
    (arguments and result) and the loss of each step. ``take(record)`` returns what the last run
    recorded and clears it."""
    record = {"layers": {}, "fft": set(), "scan": [], "loss": []}
    build, scan, step = trainer_module.HybriMamba, image_ssm.image_selective_scan, Trainer.train_step

    def network(*args, **kwargs):
        net = build(*args, **kwargs)
        with torch.no_grad():
            # D = 0: the scan's output is then its recurrence alone, which the skip term D*u
            # would otherwise swamp at bf16 resolution.
            for name, p in net.named_parameters():
                if name.endswith("Ds"):
                    p.zero_()
        for name, module in net.named_modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                module.register_forward_hook(
                    lambda mod, inputs, out, name=name: record["layers"].setdefault(name, set()).add(out.dtype))
        return net

    def recording_scan(*args, **kwargs):
        y = scan(*args, **kwargs)
        if not record["scan"]:
            # Copies: the dt projection and bias are parameters that the optimizer step updates.
            call = dict(zip(("x", "x_dbl", "dt_proj_weight", "dt_proj_bias", "A", "D"), args), y=y)
            record["scan"].append({k: v.detach().clone() for k, v in call.items()})
        return y

    def recording_fft(transform):
        return lambda x, *args, **kwargs: record["fft"].add(x.dtype) or transform(x, *args, **kwargs)

    def recording_step(self, batch):
        loss, sr = step(self, batch)
        record["loss"].append(loss)
        return loss, sr

    monkeypatch.setattr(trainer_module, "HybriMamba", network)
    monkeypatch.setattr(image_ssm, "image_selective_scan", recording_scan)
    monkeypatch.setattr(torch.fft, "rfft2", recording_fft(torch.fft.rfft2))
    monkeypatch.setattr(torch.fft, "irfft2", recording_fft(torch.fft.irfft2))
    monkeypatch.setattr(Trainer, "train_step", recording_step)
    return record


def take(record):
    taken = {k: v.copy() for k, v in record.items()}
    for value in record.values():
        value.clear()
    return taken


def oracle_image_scan(call):
    """The float64 sequential scans of tests/network_oracle.py in the four directions, merged, on a
    recorded image_selective_scan call (x (Bt, D, H, W), x_dbl (Bt, 4, R+2N, H*W) in row-major order)."""
    x, x_dbl, dt_w, dt_b, a, d = (call[k].double() for k in ("x", "x_dbl", "dt_proj_weight", "dt_proj_bias", "A", "D"))
    bt, channels, h, w = x.shape
    n = a.shape[-1]
    orders = network_oracle.scan_orders(h, w)
    u = x.flatten(2)[:, :, orders].transpose(1, 2)                                    # (Bt, 4, D, L)
    proj = torch.stack([x_dbl[:, k][..., orders[k]] for k in range(4)], dim=1)        # each in its scan order
    dt_low, b, c = proj.split([dt_w.shape[-1], n, n], dim=2)
    dt = network_oracle.softplus(torch.einsum("kdr,bkrl->bkdl", dt_w, dt_low) + dt_b[..., None])
    ys = network_oracle.sequential_scan(u, dt, a.view(4, channels, n), b, c, d.view(4, channels))
    y = torch.zeros(bt, channels, h * w, dtype=torch.float64)
    for k in range(4):
        y[..., orders[k]] += ys[:, k]
    return y.view(bt, channels, h, w)


def test_bf16_autocast_computes_layers_in_bf16_and_the_scan_and_fft_in_float32(tmp_path, faces6, monkeypatch):
    record = record_precision(monkeypatch)
    run_training(tmp_path, faces6, "fp32", "--max_iters", "1")
    fp32 = take(record)
    trainer = run_training(tmp_path, faces6, "bf16", "--amp", "bf16", "--max_iters", "1", "--ema", "0.5")
    bf16 = take(record)
    # Every convolution and linear layer in bf16, except the 1x1 convs on the FFT's amplitudes.
    assert fp32["layers"].keys() == bf16["layers"].keys() and len(fp32["layers"]) > 20
    assert all(dtypes == {torch.float32} for dtypes in fp32["layers"].values())
    assert all(dtypes == {torch.float32 if ".fourier." in name else torch.bfloat16}
               for name, dtypes in bf16["layers"].items())
    assert fp32["fft"] == bf16["fft"] == {torch.float32, torch.complex64}
    # The same weights and batch: bf16 moves the loss by more than float32 rounding could, and by
    # less than bf16's 8-bit mantissa allows.
    assert 1e-5 < abs(bf16["loss"][0] / fp32["loss"][0] - 1) < 2 ** -8

    # The scan gets bf16 activations and projections and accumulates in float32: its merged result is
    # the float32 scan of those inputs (float32 rounding, about 1e-6 of the largest value), not the
    # drift of a bf16 recurrence (about 1e-2).
    call = bf16["scan"][0]
    y = call["y"]
    assert call["x"].dtype == call["x_dbl"].dtype == torch.bfloat16 and y.dtype == torch.float32
    exact = oracle_image_scan(call)
    assert (y.double() - exact).abs().max().item() / exact.abs().max().item() < 1e-4

    state = load_checkpoint(tmp_path / "ckpt" / "bf16" / "latest.pt")
    assert state["iteration"] == 1 and state["options"]["amp"] == "bf16"
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in state["model"].values()
               if v.is_floating_point())
    assert trainer.amp_dtype == torch.bfloat16


def test_fp16_needs_cuda(tmp_path, faces6):
    with pytest.raises(UserError, match="--amp fp16 needs CUDA"):
        run_training(tmp_path, faces6, "fp16", "--amp", "fp16", "--max_iters", "1")


def test_continue_train_without_checkpoint_is_a_user_error(tmp_path, faces6):
    with pytest.raises(UserError, match="latest.pt does not exist, so there is no run to resume"):
        run_training(tmp_path, faces6, "nothing", "--continue_train", "--max_iters", "1")


def test_pretrained_weights_initialise_the_network(tmp_path, faces6):
    torch.manual_seed(123)
    source = HybriMamba(embed_dim=8, depth=1, n_layers=1)
    save_checkpoint(tmp_path / "pre.pt", {"model": {k: v + 0.0 for k, v in source.state_dict().items()}})
    trainer = run_training(tmp_path, faces6, "finetune", "--pretrain_model_path", str(tmp_path / "pre.pt"),
                           "--max_iters", "1", "--lr", "1e-12", "--weight_decay", "0")
    for key, value in source.state_dict().items():
        torch.testing.assert_close(unwrap(trainer.model).state_dict()[key], value, rtol=0, atol=1e-9)


def test_data_order_and_augmentation_depend_only_on_seed_epoch_index(faces6):
    from data import CelebADataset
    dataset = SeededSamples(CelebADataset(faces6, load_size=SIZE), seed=3)
    first = dataset[(2, 4)]
    torch.rand(5)  # consuming global randomness in between must not matter
    state = torch.get_rng_state()
    again = dataset[(2, 4)]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is left as it was
    assert torch.equal(first["HR"], again["HR"]) and torch.equal(first["LR"], again["LR"])
    others = [dataset[(e, 4)]["HR"] for e in range(8)]
    assert any(not torch.equal(others[0], o) for o in others[1:])  # epochs draw different augmentations

    full = list(ResumableSampler(dataset, num_replicas=2, rank=1, seed=3))
    sampler = ResumableSampler(dataset, num_replicas=2, rank=1, seed=3)
    sampler.set_position(0, 2)
    assert list(sampler) == full[2:] and len(sampler) == len(full) - 2
    ranks = [list(ResumableSampler(dataset, num_replicas=2, rank=r, seed=3)) for r in (0, 1)]
    assert sorted(i for r in ranks for _, i in r) == list(range(6))


def test_ema_update_is_the_moving_average():
    net = torch.nn.Linear(3, 2)
    ema = ModelEMA(net, decay=0.75)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema.update(net)
    for key, value in ema.state_dict().items():
        torch.testing.assert_close(value, 0.75 * start[key] + 0.25 * (start[key] + 1.0))


# ------------------------------------------------------------------ failure handling
def test_non_finite_loss_stops_without_saving(tmp_path, faces6):
    # A learning rate of 1e30 blows the weights up; the loss turns non-finite a step later, before any save.
    # (A save of such weights is refused too: tests/test_safety.py keeps the last sane checkpoint.)
    with pytest.raises(NonFiniteError) as err:
        run_training(tmp_path, faces6, "diverge", "--lr", "1e30", "--save_latest_freq", "100", "--max_iters", "8")
    message = str(err.value)
    assert "\n" not in message
    assert re.match(r"non-finite loss \((nan|inf)\) at iteration [2-8] \(epoch \d+\); stopped without saving, no "
                    r"checkpoint had been written yet; start again with a lower --lr or set --grad_clip$", message)
    assert not (tmp_path / "ckpt" / "diverge").exists()


# ------------------------------------------------------------------ devices
def test_device_plans():
    plan = plan_devices(3, env={}, cuda_available=False, device_count=0)
    assert plan.device.type == "cpu" and plan.data_parallel_ids is None
    assert plan.notices == ["--gpus 3 but CUDA is not available: training on the CPU"]
    plan = plan_devices(3, env={}, cuda_available=True, device_count=4)
    assert plan.device == torch.device("cuda", 0) and plan.data_parallel_ids == [0, 1, 2]
    assert plan_devices(1, env={}, cuda_available=True, device_count=4).data_parallel_ids is None
    assert plan_devices(0, env={}, cuda_available=True, device_count=4).device.type == "cpu"
    with pytest.raises(UserError, match="--gpus 3 but only 2 GPU"):
        plan_devices(3, env={}, cuda_available=True, device_count=2)
    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}
    plan = plan_devices(1, env=env, cuda_available=True, device_count=2)
    assert (plan.device, plan.backend, plan.rank, plan.world_size) == (torch.device("cuda", 1), "nccl", 3, 4)
    plan = plan_devices(0, env=env, cuda_available=True, device_count=2)
    assert (plan.device.type, plan.backend) == ("cpu", "gloo") and plan.distributed and not plan.is_main


def _ddp_rank(rank, argv, port, out_dir):
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    trainer = train(TrainOptions().parse(argv))
    torch.save(unwrap(trainer.model).state_dict(), out_dir / f"rank{rank}.pt")


def test_ddp_ranks_agree_and_the_checkpoint_loads_in_one_process(tmp_path, faces6):
    argv = train_argv(tmp_path, faces6, "ddp", "--batch_size", "1", "--max_iters", "2", "--seed", "5")
    mp.start_processes(_ddp_rank, args=(argv, free_port(), tmp_path), nprocs=2, start_method="fork")
    w0, w1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    latest = load_checkpoint(tmp_path / "ckpt" / "ddp" / "latest.pt")
    assert latest["world_size"] == 2 and len(latest["rng"]) == 2 and latest["iteration"] == 2
    assert all(torch.equal(latest["model"][k], w0[k]) for k in w0)
    torch.manual_seed(99)
    fresh = HybriMamba(embed_dim=8, depth=1, n_layers=1)
    assert not torch.equal(fresh.state_dict()["shallow.0.weight"], w0["shallow.0.weight"])
    load_weights(fresh, tmp_path / "ckpt" / "ddp" / "latest.pt")
    assert all(torch.equal(fresh.state_dict()[k], w0[k]) for k in w0)
    # A single process resumes the DDP run (with a notice that the process count changed).
    trainer = train(TrainOptions().parse(train_argv(tmp_path, faces6, "ddp", "--batch_size", "1", "--max_iters", "3",
                                                    "--seed", "5", "--continue_train")))
    assert trainer.iteration == 3 and load_checkpoint(tmp_path / "ckpt" / "ddp" / "latest.pt")["world_size"] == 1
    assert "1 process(es) (was 2)" in (tmp_path / "check_points" / "ddp" / "train_log.txt").read_text()


def test_torchrun_two_cpu_processes(tmp_path, faces6):
    argv = train_argv(tmp_path, faces6, "torchrun", "--batch_size", "1", "--max_iters", "2", "--print_freq", "1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(ROOT / "train.py"), *argv], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    latest = load_checkpoint(tmp_path / "ckpt" / "torchrun" / "latest.pt")
    assert latest["world_size"] == 2 and latest["iteration"] == 2
    log_text = (tmp_path / "check_points" / "torchrun" / "train_log.txt").read_text()
    assert "DistributedDataParallel, 2 processes (gloo)" in log_text
    assert log_text.count("iteration 2: loss") == 1  # only rank 0 logs
