"""HybriMambaConfig: one definition of the network's configuration, the same from every path that
builds the network (command line, training checkpoint, exported file, param.py), and one-line errors
for values no network can have."""
import json
import math
import subprocess
import sys

import pytest

from models import HybriMamba
from models.checkpoint import load_checkpoint, save_checkpoint, stored_config
from models.config import SCAN_BACKENDS, HybriMambaConfig
from options import TestOptions, TrainOptions, network_config
from tests.conftest import ROOT
from tests.test_train import make_faces, run_training
from utils.errors import UserError
from utils.evaluation.inference import build_model
from utils.training.export_model import export_model

# Every option field away from its default, so that a path that drops or defaults one is caught.
CUSTOM = HybriMambaConfig(embed_dim=4, depth=1, n_layers=3, expand=1.25, d_state=3, mlp_ratio=1.5)
FLAGS = CUSTOM.flags().split()


def test_defaults_are_the_papers_and_every_field_but_in_chans_is_an_option():
    assert HybriMambaConfig().to_dict() == {"in_chans": 3, "embed_dim": 32, "depth": 2, "n_layers": 2, "expand": 1.5,
                                            "d_state": 8, "mlp_ratio": 2.0}
    assert [f.name for f in HybriMambaConfig.option_fields()] == ["embed_dim", "depth", "n_layers", "expand",
                                                                   "d_state", "mlp_ratio"]
    assert all(getattr(CUSTOM, f.name) != f.default for f in HybriMambaConfig.option_fields())


def test_the_network_is_built_from_the_config_or_its_fields():
    model = HybriMamba(CUSTOM)
    assert model.config == CUSTOM == HybriMamba(**CUSTOM.to_dict()).config
    assert model.enc0.blocks[0].mixer[2].block.ssm.d_state == 3 and len(model.enc0.blocks[0].mixer) == 3
    assert model.enc0.blocks[0].lem.mlp[1].out_features == 6  # int(1.5 * 4)
    with pytest.raises(TypeError, match="not both"):
        HybriMamba(CUSTOM, embed_dim=8)


@pytest.mark.parametrize("options", [TrainOptions, TestOptions])
def test_the_scripts_flags_are_the_config_fields(options):
    parser = options().parser
    for f in HybriMambaConfig.option_fields():
        action = parser._option_string_actions[f"--{f.name}"]
        assert (action.default, action.help) == (f.default, f.metadata["help"])
    assert parser._option_string_actions["--scan_backend"].choices == SCAN_BACKENDS


def test_command_line_checkpoint_export_and_param_py_give_one_config(tmp_path):
    opt = TrainOptions().parse(["--dataroot", "x", *FLAGS])
    assert network_config(opt) == CUSTOM

    # A training checkpoint stores the options; test.py rebuilds the network from them alone.
    faces = make_faces(tmp_path / "faces", 2)
    run_training(tmp_path, faces, "cfg", "--max_iters", "1", *FLAGS)
    latest = tmp_path / "ckpt" / "cfg" / "latest.pt"
    assert stored_config(load_checkpoint(latest), latest) == CUSTOM
    exported = tmp_path / "exported.pt"
    export_model(latest, exported)
    for path in (latest, exported):
        test_opt = TestOptions().parse(["--dataroot", "x", "--pretrain_model_path", str(path), "--gpus", "0"])
        model, what = build_model(test_opt, "cpu")
        assert model.config == CUSTOM, path
        assert what.endswith("network embed_dim 4 depth 1 n_layers 3 expand 1.25 d_state 3 mlp_ratio 1.5")

    done = subprocess.run([sys.executable, "param.py", *FLAGS, "--size", "8", "8", "--no_latency", "--json",
                           "--device", "cpu", "--scan_backend", "torch"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert HybriMambaConfig.from_dict(json.loads(done.stdout)["config"], "param.py") == CUSTOM


def test_old_checkpoints_without_a_later_field_take_its_default(tmp_path):
    # Options saved by train.py before a field existed: the field's default is what the network had then.
    options = {k: v for k, v in CUSTOM.to_dict().items() if k not in ("in_chans", "mlp_ratio")}
    path = tmp_path / "old.pt"
    save_checkpoint(path, {"model": HybriMamba(CUSTOM).state_dict(), "options": {**options, "lr": 4e-4}})
    assert stored_config(load_checkpoint(path), path) == HybriMambaConfig(**{**options, "mlp_ratio": 2.0})
    # A bare state_dict, or options without any network option, name no config.
    assert stored_config({"w": 1}, path) is None and stored_config({"options": {"lr": 1}}, path) is None


@pytest.mark.parametrize("values, message", [
    ({"embed_dim": 100000}, "embed_dim = 100000 must be <= 1024"),
    ({"embed_dim": "32"}, "embed_dim = '32' must be an integer"),
    ({"depth": 2.0}, "depth = 2.0 must be an integer"),
    ({"depth": True}, "depth = True must be an integer"),
    ({"n_layers": 0}, "n_layers = 0 must be > 0"),
    ({"expand": math.nan}, "expand = nan must be a finite number"),
    ({"mlp_ratio": math.inf}, "mlp_ratio = inf must be a finite number"),
    ({"expand": None}, "expand = None must be a number"),
    ({"expand": 0.01}, "expand = 0.01 gives the first stage (embed_dim 32) a width of 0"),
    ({"embed_dim": 2, "mlp_ratio": 0.25}, "mlp_ratio = 0.25 gives the first stage (embed_dim 2) a width of 0"),
    ({"d_state": -8}, "d_state = -8 must be > 0"),
    ({"width": 8}, "unknown network option(s) width; the network's options are in_chans, embed_dim"),
])
def test_bad_values_are_one_line_errors_naming_the_source_and_the_key(values, message):
    with pytest.raises(UserError) as err:
        HybriMambaConfig.from_dict(values, "ckpt/run/latest.pt")
    assert str(err.value).startswith("ckpt/run/latest.pt: ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_a_checkpoint_with_absurd_options_is_refused_before_a_network_is_built(tmp_path):
    path = tmp_path / "absurd.pt"
    save_checkpoint(path, {"model": HybriMamba(CUSTOM).state_dict(), "options": {**CUSTOM.to_dict(),
                                                                                 "embed_dim": 100000}})
    opt = TestOptions().parse(["--dataroot", "x", "--pretrain_model_path", str(path)])
    with pytest.raises(UserError, match=f"^{path}: network option embed_dim = 100000 must be <= 1024"):
        build_model(opt, "cpu")


@pytest.mark.parametrize("argv, message", [
    (["--embed_dim", "0"], "argument --embed_dim: must be > 0, got 0"),
    (["--embed_dim", "4096"], "argument --embed_dim: must be <= 1024"),
    (["--expand", "nan"], "argument --expand: must be a finite number, got nan"),
    (["--depth", "1.5"], "argument --depth: invalid int value: '1.5'"),
    (["--expand", "0.01"], "command line: network option expand = 0.01 gives the first stage"),
])
def test_bad_network_flags_are_one_line_errors(argv, message):
    with pytest.raises(UserError) as err:
        TrainOptions().parse(["--dataroot", "x", *argv])
    assert str(err.value).startswith(message)
