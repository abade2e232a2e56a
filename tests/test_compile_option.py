"""--compile (train.py, test.py): parsed by both, and applied to the network by training and testing.

Running a compiled network is not tested on the CPU: even Dynamo's capture alone (backend 'eager',
no Inductor code generation) of a 2-step tiny training run took 1.5 CPU-minutes, as it unrolls the
chunked scan's Python loops. tests/test_triton_scan.py compiles the network with Inductor on a GPU.
"""
import pytest
import torch

from options import TestOptions, TrainOptions
from tests.test_train import load_checkpoint, make_faces, run_training
from utils.evaluation.inference import build_model


@pytest.mark.parametrize("options, argv", [
    (TrainOptions, ["--dataroot", "x"]),
    (TestOptions, ["--dataroot", "x", "--pretrain_model_path", "m"]),
])
def test_compile_option_parses(options, argv):
    assert options().parse(argv + ["--compile"]).compile is True
    assert options().parse(argv).compile is False


def test_training_and_testing_compile_the_network_in_place(tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda module, **kwargs: compiled.append(type(module).__name__))
    faces = make_faces(tmp_path / "faces", 2)
    trainer = run_training(tmp_path, faces, "compiled", "--compile", "--max_iters", "1")
    assert compiled == ["HybriMamba"] and trainer.iteration == 1
    # In place: the checkpoint keeps the plain parameter names.
    latest = tmp_path / "ckpt" / "compiled" / "latest.pt"
    assert "shallow.0.weight" in load_checkpoint(latest)["model"]
    for flags, expected in (([], 1), (["--compile"], 2)):
        opt = TestOptions().parse(["--dataroot", str(faces), "--pretrain_model_path", str(latest), *flags])
        build_model(opt, torch.device("cpu"))
        assert len(compiled) == expected
