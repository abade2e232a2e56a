"""One rule for every file the project writes (utils/output_files.py), run as users run the scripts: a file
the project did not write for the same purpose is never replaced without --overwrite, and every output path
is checked before any work. Each refusal: exit code 2, one 'error:' line naming the file and the fix, and
every file that existed before byte-identical afterwards."""
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import test as test_script
from data import prepare_celeba
from models import HybriMamba
from models.checkpoint import load_checkpoint, save_checkpoint
from options import TrainOptions
from tests.conftest import ROOT, file_hashes
from tests.test_eval_scripts import assert_one_line_error, face_like, noisy, save
from tests.test_safety import assert_unchanged
from tests.test_safety import refused as refused_in_process
from utils import output_files
from utils.errors import UserError
from utils.training import export_model

TINY = {"embed_dim": 4, "depth": 1, "n_layers": 1}
TINY_FLAGS = [f for k, v in TINY.items() for f in (f"--{k}", str(v))]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(*args):
    """A script or ``-m module`` from the repository root, one torch thread; returns the CompletedProcess."""
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=ONE_THREAD, capture_output=True,
                          text=True, timeout=300)


def refused(res, *needles):
    """The run exited 2 with one 'error:' line holding every needle; returns the line."""
    assert_one_line_error(res, *map(str, needles))
    return next(line for line in res.stderr.splitlines() if line.startswith("error: "))


def in_process(main, argv, capsys):
    """A script's ``main`` run as its ``__main__`` runs it (no interpreter start: torch is loaded once); it
    must exit 2 with one 'error:' line, which is returned."""
    return refused_in_process(main, argv, capsys)


def images(folder, names, side, seed=0):
    for i, name in enumerate(names):
        save(folder / name, face_like(side, side, seed + i))
    return folder


@pytest.fixture
def faces(tmp_path):
    """HR (32x32), SR (noisy HR) and LR (4x4) folders of two faces, a user's notes and photo beside them."""
    hr = images(tmp_path / "HR", ["a.png", "b.png"], 32)
    sr = tmp_path / "SR"
    for i, name in enumerate(["a.png", "b.png"]):
        save(sr / name, noisy(face_like(32, 32, i), i))
    lr = images(tmp_path / "LR", ["a.png", "b.png"], 4, seed=5)
    (tmp_path / "notes.txt").write_text("my notes\n")
    save(tmp_path / "photo.png", face_like(8, 8, 9))
    return tmp_path, hr, sr, lr


@pytest.fixture(scope="module")
def training_run(tmp_path_factory):
    """A run folder A/ as train.py leaves it: latest.pt and best.pt, training states of a tiny network."""
    folder = tmp_path_factory.mktemp("A")
    torch.manual_seed(0)
    raw = HybriMamba(**TINY).state_dict()
    ema = {k: v + 0.01 for k, v in raw.items()}
    options = dict(vars(TrainOptions().parse(["--dataroot", "unused", "--load_size", "16", "--scale_factor", "4",
                                              *TINY_FLAGS])))
    for name, iteration in (("latest.pt", 20), ("best.pt", 10)):
        save_checkpoint(folder / name, {"model": raw, "ema": ema, "optimizer": {"state": {}, "param_groups": []},
                                        "options": options, "iteration": iteration})
    return folder


# ------------------------------------------------------------------ item 1: the export
def test_export_never_replaces_a_file_it_did_not_export(training_run, faces, capsys):
    root, hr, _, _ = faces
    latest, best = training_run / "latest.pt", training_run / "best.pt"
    before = file_hashes(training_run, root)
    line = refused(run("-m", "utils.training.export_model", latest, best), f"{best}:", "--overwrite")
    assert line == (f"error: OUT {best}: exists and is not a file HybriMamba wrote for this purpose (exported "
                    f"model), or was changed since; pass --overwrite to replace it, or choose another path")
    export = export_model.main
    assert in_process(export, [latest, hr / "a.png"], capsys).startswith(f"error: OUT {hr / 'a.png'}: exists")
    assert in_process(export, [latest, hr], capsys) == f"error: OUT {hr}: is a folder; name the file to write"
    assert in_process(export, [latest, latest], capsys).startswith(f"error: OUT {latest}: is the input")
    assert_unchanged(before, file_hashes(training_run, root))
    assert load_checkpoint(best)["iteration"] == 10 and "optimizer" in load_checkpoint(best)

    out = root / "exported" / "model.pt"
    for _ in range(2):  # a second export replaces the first: the project wrote it, for this purpose
        assert export_model.main([str(latest), str(out)]) == 0
    assert load_checkpoint(out)["iteration"] == 20
    assert export_model.main([str(latest), str(best), "--overwrite"]) == 0
    assert "optimizer" not in load_checkpoint(best)


# ------------------------------------------------------------------ item 2: --csv, tables and pictures
def test_metric_csv_table_and_picture_never_replace_a_users_file(faces):
    root, hr, sr, lr = faces
    target, notes = hr / "a.png", root / "notes.txt"
    before = file_hashes(root)
    line = refused(run("psnr_ssim.py", hr, sr, "--csv", target), f"--csv {target}")
    assert line == f"error: --csv {target}: lies inside the input folder GT_DIR {hr}; choose a path outside the inputs"
    refused(run("-m", "utils.evaluation.results_table", "--hr_dir", hr, sr, "--out", target),
            f"--out {target}: lies inside the input folder --hr_dir")
    refused(run("-m", "utils.evaluation.side_by_side", "--lr", lr, "--sr", sr, "--hr", hr, "--out", target),
            f"--out {target}: lies inside the input folder --hr")
    for command, mine in ((("psnr_ssim.py", hr, sr, "--csv"), notes),
                          (("-m", "utils.evaluation.results_table", "--hr_dir", hr, sr, "--out"), notes),
                          (("-m", "utils.evaluation.side_by_side", "--lr", lr, "--sr", sr, "--hr", hr, "--out"),
                           root / "photo.png")):
        refused(run(*command, mine), f"{command[-1]} {mine}: exists and is not a file HybriMamba wrote",
                "pass --overwrite")
    assert_unchanged(before, file_hashes(root))


def test_reruns_replace_their_own_outputs_and_overwrite_forces(faces):
    root, hr, sr, lr = faces
    out = root / "out"
    commands = [("psnr_ssim.py", hr, sr, "--csv", out / "metrics.csv"),
                ("-m", "utils.evaluation.results_table", "--hr_dir", hr, sr, "--out", out / "table.md"),
                ("-m", "utils.evaluation.side_by_side", "--lr", lr, "--sr", sr, "--hr", hr, "--out", out / "fig.png")]
    for command in commands * 2:
        done = run(*command)
        assert done.returncode == 0, done.stderr
    written = file_hashes(out)
    # each output written for one purpose is not replaced by a tool writing another
    refused(run("psnr_ssim.py", hr, sr, "--csv", out / "table.md"), f"--csv {out / 'table.md'}")
    (out / "metrics.csv").write_text((out / "metrics.csv").read_text() + "my remark\n")  # edited by the user
    refused(run(*commands[0]), f"--csv {out / 'metrics.csv'}", "--overwrite")
    assert_unchanged({**written, out / "metrics.csv": file_hashes(out)[out / "metrics.csv"]}, file_hashes(out))
    done = run(*commands[0], "--overwrite")
    assert done.returncode == 0, done.stderr
    assert "my remark" not in (out / "metrics.csv").read_text()


# ------------------------------------------------------------------ item 3: the demo
def test_demo_refuses_input_faces_inside_its_output_folder(tmp_path):
    from utils.demo.pipeline import prepare_out_dir

    demo = tmp_path / "D"
    prepare_out_dir(demo)  # an earlier demo's folder
    faces = images(demo / "results" / "myfaces", [f"{i:02d}.png" for i in range(40)], 32)
    before = file_hashes(tmp_path)
    line = refused(run("-m", "utils.demo", "--out", demo, "--dataroot", faces), f"--out {demo}",
                   f"--dataroot {faces}")
    assert "contains" in line
    assert_unchanged(before, file_hashes(tmp_path))


# ------------------------------------------------------------------ item 4: make_lr's two folders
def test_make_lr_refuses_one_folder_for_both_outputs(faces):
    root, hr, _, lr = faces
    before = file_hashes(root)
    refused(run("-m", "data.make_lr", hr, "--lr_dir", lr, "--lr_up_dir", lr, "--scale", 8),
            f"--lr_dir {lr}", f"--lr_up_dir {lr}")
    assert_unchanged(before, file_hashes(root))
    # and its outputs replace only the files it wrote for the same folder role
    out = root / "made"
    for _ in range(2):
        assert run("-m", "data.make_lr", hr, "--lr_dir", out / "lr", "--lr_up_dir", out / "up", "--scale", 8
                   ).returncode == 0
    made = file_hashes(out)
    refused(run("-m", "data.make_lr", hr, "--lr_dir", out / "up", "--lr_up_dir", out / "lr", "--scale", 8),
            "--overwrite")
    assert_unchanged(made, file_hashes(out))


# ------------------------------------------------------------------ item 17: output paths checked first
def read_only_folder(tmp_path):
    """A folder nothing can be created in: chmod 555, or /sys for root (which ignores file modes)."""
    if os.geteuid() == 0:
        if not Path("/sys/kernel").is_dir():
            pytest.skip("no /sys here to stand in for a read-only folder")
        return Path("/sys/kernel")
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


def test_bad_output_paths_are_one_line_errors_before_any_work(faces):
    root, hr, sr, lr = faces
    notes = root / "notes.txt"
    read_only = read_only_folder(root)
    before = file_hashes(root)
    refused(run("psnr_ssim.py", hr, sr, "--csv", root), f"--csv {root}: is a folder")
    refused(run("psnr_ssim.py", hr, sr, "--csv", notes / "m.csv"), f"{notes} is a file")
    refused(run("psnr_ssim.py", hr, sr, "--csv", read_only / "m.csv"), f"--csv {read_only / 'm.csv'}",
            "cannot write")
    refused(run("-m", "utils.evaluation.results_table", "--hr_dir", hr, sr, "--out", notes / "t.md"),
            f"{notes} is a file")
    refused(run("-m", "utils.evaluation.results_table", "--hr_dir", hr, sr, "--out", read_only / "t.md"),
            "cannot write")
    side_by_side = ("-m", "utils.evaluation.side_by_side", "--lr", lr, "--sr", sr, "--hr", hr)
    refused(run(*side_by_side, "--out", root / "x.jpgg"), f"--out {root / 'x.jpgg'}", ".png")
    refused(run(*side_by_side, "--zoom", 1000, "--out", root / "x.png"), "--zoom 1000")
    assert_unchanged(before, file_hashes(root))


def test_test_py_output_folder_through_a_file_is_refused(faces, training_run, capsys):
    root, _, _, lr = faces
    before = file_hashes(root)
    out = root / "notes.txt" / "out"
    line = in_process(test_script.main, ["--gpus", 0, "--dataroot", lr, "--pretrain_model_path",
                                         training_run / "latest.pt", "--save_as_dir", out], capsys)
    assert line == (f"error: --save_as_dir {out}: {root / 'notes.txt'} is a file, so nothing can be created inside "
                    f"it; choose another path")
    assert_unchanged(before, file_hashes(root))


@pytest.mark.parametrize("script", ["train.py", "test.py", "param.py"])
@pytest.mark.parametrize("flags, message", [
    (["--expand", "inf"], "--expand: must be a finite number"),
    (["--mlp_ratio", "inf"], "--mlp_ratio: must be a finite number"),
    (["--expand", "0.01"], "expand = 0.01 gives the first stage (embed_dim 32) a width of 0"),
    (["--embed_dim", "100000"], "--embed_dim: must be <= 1024"),
])
def test_absurd_network_flags_are_one_line_errors(script, flags, message):
    extra = {"train.py": ["--dataroot", "x"], "test.py": ["--dataroot", "x", "--pretrain_model_path", "x.pt"],
             "param.py": ["--no_latency"]}[script]
    refused(run(script, *extra, *flags), message)


# ------------------------------------------------------------------ the rule itself
def test_a_file_is_replaced_only_when_the_project_wrote_its_bytes_for_that_purpose(tmp_path):
    path = tmp_path / "out" / "table.md"
    output_files.write_output(path, b"first", "results table")
    output_files.check_output_file("--out", path, "results table")  # a rerun: fine
    output_files.write_output(path, b"second", "results table")
    assert path.read_bytes() == b"second"
    # refused: another purpose's file, then this purpose's file changed since
    for purpose, content in (("per-image metrics CSV", None), ("results table", b"edited by hand")):
        if content:
            path.write_bytes(content)
        with pytest.raises(UserError, match=re.escape(f"--out {path}: exists and is not a file HybriMamba wrote for "
                                                      f"this purpose ({purpose})")):
            output_files.check_output_file("--out", path, purpose)
        output_files.check_output_file("--out", path, purpose, overwrite=True)
    link = tmp_path / "out" / "link.md"  # a link is never the project's, whatever it points at
    link.symlink_to(path)
    output_files.record_output(link, "results table")
    assert not output_files.written_for(link, "results table")
    assert sorted(p.name for p in path.parent.iterdir()) == [output_files.MANIFEST, "link.md", "table.md"]


def test_the_manifest_survives_a_kill_mid_append_and_stays_small(tmp_path):
    path = tmp_path / "a.csv"
    output_files.write_output(path, b"one", "per-image metrics CSV")
    with open(tmp_path / output_files.MANIFEST, "a") as f:
        f.write('\n{"name": "b.csv", "purp')  # a record cut short by a kill
    output_files.write_output(tmp_path / "b.csv", b"two", "per-image metrics CSV")
    assert output_files.written_for(path, "per-image metrics CSV")
    assert output_files.written_for(tmp_path / "b.csv", "per-image metrics CSV")
    for i in range(60):  # reruns append a record each; a check at the next start compacts
        output_files.write_output(path, str(i).encode(), "per-image metrics CSV")
    output_files.check_output_file("--csv", path, "per-image metrics CSV")
    records = output_files.manifest_records(tmp_path)
    assert len(records["a.csv"]) == output_files.KEPT and len(records["b.csv"]) == 1
    assert output_files.written_for(path, "per-image metrics CSV")


def test_parallel_writers_share_a_manifest(tmp_path, celeba_dir):
    """prepare_celeba's worker processes record into one manifest at once; a rerun finds every file theirs."""
    src = tmp_path / "src"
    src.mkdir()
    for path in sorted((celeba_dir / "val").glob("*.jpg"))[:24]:
        (src / path.name).symlink_to(path)
    argv = ["--src", str(src), "--out", str(tmp_path / "out"), "--size", "32", "--make_test_lr", "--workers", "2"]
    prepare_celeba.main(argv)
    for folder in ("HR", "LR", "LR_bicubic"):
        records = output_files.manifest_records(tmp_path / "out" / folder)
        assert sorted(records) == sorted(f"{p.stem}.png" for p in src.iterdir())
    prepare_celeba.main(argv)  # nothing to refuse: every file is the project's, for its purpose


def test_temporary_files_of_killed_writes_are_removed_at_the_next_start(faces, training_run, caplog):
    root, _, _, lr = faces
    out = root / "sr"
    out.mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = out / f".a.png.{int(gone.stdout)}.0123abcd.tmp"  # what write_output leaves when killed mid-write
    alive = out / ".b.png.1.0123abcd.tmp"  # pid 1 lives: maybe a writer at work now
    mine = out / "a.png.tmp"
    for path in (dead, alive, mine):
        path.write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="hybrimamba"):
        test_script.main(["--gpus", "0", "--num_threads", "0", "--dataroot", str(lr), "--pretrain_model_path",
                          str(training_run / "latest.pt"), "--save_as_dir", str(out)])
    assert not dead.exists() and alive.exists() and mine.exists()
    assert f"notice: removed 1 temporary file(s) of an interrupted write from {out}" in caplog.messages
