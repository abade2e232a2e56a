"""Options: the seed's command lines (read from the scripts themselves) parse and mean what they say."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from options import TestOptions, TrainOptions
from tests.conftest import ROOT, shared_path
from utils.errors import UserError

FAKE_PYTHON = '#!/bin/sh\nprintf "%s\\0" "$@" > "$(mktemp "$CALLS/call.XXXXXX")"\n'


def script_calls(script, tmp_path):
    """Argument lists of every ``python ...`` call that bash makes running ``script`` (python faked)."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir(exist_ok=True)
    calls.mkdir(exist_ok=True)
    fake = bin_dir / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    for old in calls.iterdir():
        old.unlink()
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "CALLS": str(calls)}
    subprocess.run(["bash", "-c", 'source "$0"; wait', str(script)], cwd=tmp_path, env=env, check=True,
                   capture_output=True, timeout=60)
    return [f.read_bytes().decode().split("\0")[:-1] for f in sorted(calls.iterdir())]


def readme_blocks(path, tmp_path):
    """The ```bash blocks of a README as script files."""
    blocks = re.findall(r"```bash\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)
    scripts = []
    for i, block in enumerate(blocks):
        script = tmp_path / f"block{i}.sh"
        script.write_text(block)
        scripts.append(script)
    return scripts


def assert_flags_mean_what_they_say(args, opt):
    """Every ``--flag value`` sets ``opt.flag`` to that value; a bare ``--flag`` sets it True."""
    i = 0
    while i < len(args):
        assert args[i].startswith("--"), args[i]
        name = args[i][2:]
        assert hasattr(opt, name), name
        got = getattr(opt, name)
        if i + 1 < len(args) and not args[i + 1].startswith("--"):
            assert got == type(got)(args[i + 1]), (name, got, args[i + 1])
            i += 2
        else:
            assert got is True, name
            i += 1


def parse_call(call):
    program, args = Path(call[0]).name, call[1:]
    options = {"train.py": TrainOptions, "test.py": TestOptions}[program]()
    opt = options.parse(args)
    assert_flags_mean_what_they_say(args, opt)
    return program, args, opt


def test_train_sh_command_parses(tmp_path):
    calls = script_calls(ROOT / "train.sh", tmp_path)
    assert [Path(c[0]).name for c in calls] == ["train.py"]
    _, args, opt = parse_call(calls[0])
    assert opt.gpus == 3 and opt.batch_size == 32 and opt.total_epochs == 100 and opt.lr == 4e-4
    assert opt.save_latest_freq == 500 and opt.save_iter_freq == 5000 and not opt.continue_train
    assert "--dataroot" in args


def test_seed_readme_commands_parse_and_train_sh_keeps_them(tmp_path):
    readme = shared_path("seed", "HybriMamba-README.md")
    calls = [c for s in readme_blocks(readme, tmp_path) for c in script_calls(s, tmp_path)]
    parsed = [parse_call(c) for c in calls if Path(c[0]).name in ("train.py", "test.py")]
    assert sorted(p[0] for p in parsed) == ["test.py", "test.py", "train.py"]
    seed_train = next(args for program, args, _ in parsed if program == "train.py")
    (tmp_path / "ours").mkdir()
    ours = script_calls(ROOT / "train.sh", tmp_path / "ours")[0][1:]
    # The same flags in the same order; only the --dataroot value is a placeholder to edit.
    at = seed_train.index("--dataroot") + 1
    assert ours[:at] + ours[at + 1:] == seed_train[:at] + seed_train[at + 1:]
    for program, _, opt in parsed:
        if program == "test.py":
            assert opt.dataset_name == "single" and opt.pretrain_model_path == "./ckpt/latest_demo_model.pt"


def test_test_sh_commands_parse(tmp_path):
    script = ROOT / "test.sh"
    if not script.exists():
        pytest.skip("test.sh is not in the repository yet")
    calls = [c for c in script_calls(script, tmp_path) if Path(c[0]).name == "test.py"]
    assert calls
    for call in calls:
        parse_call(call)


@pytest.mark.parametrize("options, argv, suggestion", [
    (TrainOptions, ["--dataroot", "x", "--lrr", "1"], "unknown option --lrr; did you mean --lr?"),
    (TrainOptions, ["--dataroot", "x", "--batchsize=4"], "unknown option --batchsize; did you mean --batch_size?"),
    (TrainOptions, ["--dataroot", "x", "--save_as_dir", "r"], "unknown option --save_as_dir; did you mean"),
    (TestOptions, ["--dataroot", "x", "--pretrain_model_path", "m", "--save_as_di", "r"],
     "unknown option --save_as_di; did you mean --save_as_dir?"),
    (TestOptions, ["--dataroot", "x", "--pretrain_model_path", "m", "--zzzzzz"], "unknown option --zzzzzz; see --help"),
])
def test_unknown_flag_names_the_closest_valid_one(options, argv, suggestion):
    with pytest.raises(UserError) as err:
        options().parse(argv)
    assert str(err.value).startswith(suggestion)


def test_unknown_flag_from_the_command_line_is_one_line_and_exit_2(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), "--dataroot", "x", "--batch_sise", "4"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: unknown option --batch_sise; did you mean --batch_size?"


@pytest.mark.parametrize("argv, message", [
    (["--load_size", "100"], "--load_size 100 is not divisible by --scale_factor 8"),
    (["--load_size", "18", "--scale_factor", "3"], "--load_size 18 must be a multiple of 4"),
    (["--continue_train", "--pretrain_model_path", "w.pt"], "pass only one of them"),
    (["--continue_train", "yes"], "--continue_train: 'yes' is not a mode; use --continue_train alone or"),
    (["--ema", "1"], "--ema 1.0: the decay must be in [0, 1)"),
    (["--lr", "0"], "argument --lr: must be > 0"),
    (["--name", "a/b"], "must be a plain folder name"),
    (["--amp", "fp8"], "argument --amp: invalid choice"),
    (["--model", "SPARNet"], "argument --model: invalid choice"),
])
def test_invalid_train_options_are_one_line_errors(argv, message):
    with pytest.raises(UserError, match=re.escape(message)):
        TrainOptions().parse(["--dataroot", "x", *argv])


def test_continue_train_alone_or_auto(tmp_path):
    parse = TrainOptions().parse
    assert parse(["--dataroot", "x"]).continue_train is False
    run = ["--dataroot", "x", "--ckpt_dir", str(tmp_path), "--name", "run"]
    latest = tmp_path / "run" / "latest.pt"
    # without a latest.pt the message names the file and the flags that locate it (not --pretrain_model_path)
    with pytest.raises(UserError) as err:
        parse([*run, "--continue_train"])
    assert str(err.value) == (f"--continue_train: {latest} does not exist, so there is no run to resume; check "
                              f"--ckpt_dir and --name, or start without --continue_train (--continue_train auto "
                              f"resumes only when it exists)")
    latest.parent.mkdir()
    latest.write_bytes(b"")
    assert parse([*run, "--continue_train", "--max_iters", "3"]).continue_train is True
    # auto resumes a run or starts one, from given weights if any
    opt = parse(["--dataroot", "x", "--continue_train", "auto", "--pretrain_model_path", "w.pt"])
    assert opt.continue_train == "auto" and opt.pretrain_model_path == "w.pt"


def test_test_options_requirements():
    base = ["--dataroot", "lr"]
    with pytest.raises(UserError, match="--pretrain_model_path is required"):
        TestOptions().parse(base)
    with pytest.raises(UserError, match="--lpips needs --hr_dir"):
        TestOptions().parse([*base, "--pretrain_model_path", "m.pt", "--lpips"])
    with pytest.raises(UserError, match="paired needs --hr_dir"):
        TestOptions().parse([*base, "--pretrain_model_path", "m.pt", "--dataset_name", "paired"])
    options = TestOptions()
    paired = options.parse([*base, "--pretrain_model_path", "m.pt", "--dataset_name", "paired", "--hr_dir", "hr"])
    assert options.notices(paired) == ["--dataset_name paired does nothing beyond --hr_dir (the outputs are paired "
                                       "with it by file stem); drop it"]
    assert options.notices(options.parse([*base, "--pretrain_model_path", "m.pt", "--hr_dir", "hr"])) == []
    opt = TestOptions().parse([*base, "--pretrain_model_path", "m.pt", "--name", "run1", "--no_ema",
                               "--y_convention", "round", "--batch_size", "3", "--scan_backend", "ref"])
    assert opt.save_as_dir == "result/run1" and opt.no_ema and opt.y_convention == "round"
    assert opt.batch_size == 3 and opt.scan_backend == "ref" and opt.backbone_weights is None
    # test.py pads any size, so sizes training refuses are fine here
    assert TestOptions().parse([*base, "--pretrain_model_path", "m.pt", "--load_size", "30"]).load_size == 30


def test_compatibility_flag_notice_only_when_changed():
    options = TrainOptions()
    assert options.notices(options.parse(["--dataroot", "x", "--Gnorm", "bn"])) == []
    assert options.notices(options.parse(["--dataroot", "x", "--Gnorm", "in"])) == [
        "--Gnorm in has no effect: HybriMamba uses LayerNorm/RMSNorm"]


def test_help_is_grouped_with_examples(capsys):
    with pytest.raises(SystemExit) as done:
        TrainOptions().parse(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for heading in ("experiment:", "hardware:", "network:", "optimisation:", "checkpoints:", "examples:"):
        assert heading in text
    assert re.search(r"--Gnorm GNORM\s+accepted for compatibility.*has\s+no\s+effect", text, flags=re.S)


def test_resolved_options_saved_with_defaults_marked(tmp_path):
    options = TrainOptions()
    opt = options.parse(["--dataroot", "faces", "--lr", "0.001", "--name", "exp", "--checkpoints_dir",
                         str(tmp_path / "cp")])
    path = options.save(opt)
    assert path == tmp_path / "cp" / "exp" / "train_opt.txt"
    lines = path.read_text().splitlines()
    assert "lr: 0.001\t[default: 0.0004]" in [ln.strip() for ln in lines]
    assert "batch_size: 32" in [ln.strip() for ln in lines]


@pytest.mark.parametrize("cpus, workers", [(1, 1), (2, 2), (16, 4)])
def test_default_loader_workers_fit_the_cpus(monkeypatch, cpus, workers):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    opt = TestOptions().parse(["--dataroot", "lr", "--pretrain_model_path", "m.pt"])
    assert opt.num_threads == workers
    opt = TestOptions().parse(["--dataroot", "lr", "--pretrain_model_path", "m.pt", "--num_threads", "6"])
    assert opt.num_threads == 6
