"""Checkpoint files: atomic save, safe load, and weights loading across wrappers and mismatches."""
import os

import pytest
import torch

from models import HybriMamba
from models.checkpoint import load_checkpoint, load_weights, save_checkpoint, strip_module_prefix
from utils.errors import UserError

TINY = dict(embed_dim=8, depth=1, n_layers=1)


class Payload:
    """An arbitrary Python object: unpickling it could run code, so the safe loader must refuse it."""


def tiny_net(seed, **kwargs):
    torch.manual_seed(seed)
    return HybriMamba(**{**TINY, **kwargs})


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:  # on CPU: with one GPU, DataParallel moves its module there
        assert torch.equal(sa[key].cpu(), sb[key].cpu()), key


def test_save_and_load_roundtrip_plain_types(tmp_path):
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "iteration": 7, "options": {"lr": 4e-4, "name": "x"},
             "rng": [{"python": [3, list(range(5)), None]}]}
    path = tmp_path / "sub" / "c.pt"
    save_checkpoint(path, state)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert loaded["iteration"] == 7 and loaded["options"] == state["options"] and loaded["rng"] == state["rng"]
    assert os.listdir(path.parent) == ["c.pt"]  # no temp file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # shareable like any other file, not 0600


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "latest.pt"
    save_checkpoint(path, {"iteration": 1, "w": torch.ones(1000)})
    real_save = torch.save

    def half_written_then_crash(obj, f):
        real_save(obj, f)
        f.seek(f.tell() // 2)
        f.truncate()
        raise RuntimeError("simulated crash while writing")

    monkeypatch.setattr(torch, "save", half_written_then_crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        save_checkpoint(path, {"iteration": 2, "w": torch.zeros(1000)})
    monkeypatch.undo()
    loaded = load_checkpoint(path)
    assert loaded["iteration"] == 1 and torch.equal(loaded["w"], torch.ones(1000))
    assert os.listdir(tmp_path) == ["latest.pt"]


def test_disk_full_is_a_one_line_error(tmp_path, monkeypatch):
    def no_space(obj, f):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(UserError, match="latest.pt: cannot write the checkpoint .No space left on device"):
        save_checkpoint(tmp_path / "latest.pt", {"iteration": 1})
    assert os.listdir(tmp_path) == []


def test_unsafe_or_broken_files_are_refused(tmp_path):
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"model": Payload()}, unsafe)
    with pytest.raises(UserError, match=r"unsafe.pt: refused by the safe loader .*Payload"):
        load_checkpoint(unsafe)
    truncated = tmp_path / "truncated.pt"
    save_checkpoint(truncated, {"w": torch.ones(10000)})
    truncated.write_bytes(truncated.read_bytes()[:20000])
    with pytest.raises(UserError, match="truncated.pt: not a PyTorch checkpoint"):
        load_checkpoint(truncated)
    with pytest.raises(UserError, match="missing.pt: no such checkpoint file"):
        load_checkpoint(tmp_path / "missing.pt")


def test_strip_module_prefix_only_strips_the_leading_wrapper_name():
    sd = {"module.a.weight": 1, "b.module.c": 2, "d": 3}
    assert strip_module_prefix(sd) == {"a.weight": 1, "b.module.c": 2, "d": 3}


def test_load_weights_prefers_ema_and_reads_every_layout(tmp_path):
    raw, ema, target = tiny_net(0), tiny_net(1), tiny_net(2)
    full = tmp_path / "full.pt"
    save_checkpoint(full, {"model": raw.state_dict(), "ema": ema.state_dict(), "iteration": 40})
    assert load_weights(target, full) == f"EMA weights from {full} (iteration 40)"
    assert_same_weights(target, ema)
    assert load_weights(target, full, prefer_ema=False).startswith("raw weights")
    assert_same_weights(target, raw)

    # DataParallel's "module." keys (as written by code that saved the wrapper) and a bare state_dict.
    wrapped = tmp_path / "wrapped.pt"
    save_checkpoint(wrapped, torch.nn.DataParallel(ema).state_dict())
    assert next(iter(torch.load(wrapped, weights_only=True))).startswith("module.")
    assert load_weights(target, wrapped).startswith("bare state_dict")
    assert_same_weights(target, ema)

    # Loading into a DataParallel-wrapped network fills the inner one.
    wrapped_target = torch.nn.DataParallel(tiny_net(3))
    load_weights(wrapped_target, full, prefer_ema=False)
    assert_same_weights(wrapped_target.module, raw)


def test_mismatch_lists_keys_and_names_the_needed_config(tmp_path):
    path = tmp_path / "c.pt"
    options = {"embed_dim": 8, "depth": 1, "n_layers": 1, "expand": 1.5, "d_state": 8, "mlp_ratio": 2.0, "lr": 1e-3}
    save_checkpoint(path, {"model": tiny_net(0).state_dict(), "options": options})
    wider = tiny_net(0, embed_dim=12)
    before = {k: v.clone() for k, v in wider.state_dict().items()}
    with pytest.raises(UserError) as err:
        load_weights(wider, path)
    message = str(err.value)
    assert "\n" not in message
    assert "shape (file vs network): shallow.0.weight (8, 3, 3, 3) vs (12, 3, 3, 3)" in message
    assert "--embed_dim 8 --depth 1 --n_layers 1 --expand 1.5 --d_state 8 --mlp_ratio 2.0" in message
    assert all(torch.equal(before[k], v) for k, v in wider.state_dict().items())  # nothing half-loaded

    deeper = tiny_net(0, depth=2)
    with pytest.raises(UserError, match=r"missing: enc0\.blocks\.1\.norm1\.weight, .*\(\+\d+ more\)"):
        load_weights(deeper, path)
    bare = tmp_path / "bare.pt"
    save_checkpoint(bare, {"extra.weight": torch.zeros(1), **tiny_net(0).state_dict()})
    with pytest.raises(UserError, match=r"unexpected: extra\.weight"):
        load_weights(tiny_net(0), bare)
    empty = tmp_path / "empty.pt"
    save_checkpoint(empty, {"iteration": 3})
    with pytest.raises(UserError, match="neither a training checkpoint"):
        load_weights(tiny_net(0), empty)
