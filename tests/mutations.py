"""Mutation check: realistic one-line bugs, each applied to a temporary copy of the repository,
where the tests that guard against it must then fail.

    python tests/mutations.py           # every mutation (a few minutes on two cores)
    python tests/mutations.py --list
    python tests/mutations.py gate_sigmoid resume_rng

It runs only each mutation's guarding tests (they pass on the unmutated tree: `make test` runs
first in .ci/run). A mutation whose text is no longer in its file is reported as stale: the code
moved on, so update the mutation's text rather than dropping it. Exit status 1 if any mutation
survives or is stale.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.conftest import SHARED  # noqa: E402  (needs the repository root on sys.path)

ORACLE = ("tests/test_network_oracle.py",)
RESUME = ("tests/test_train.py::test_resume_is_bit_identical_to_an_uninterrupted_run[0]",)
PHOTO_PARTS = ("tests/test_photo_parts.py",)
PHOTO_DETECTOR = ("tests/test_photo.py::test_detector_coordinates_do_not_drift_with_size",
                  "tests/test_photo.py::test_alignment_puts_the_eyes_where_the_training_framing_has_them")
OUTPUTS = "tests/test_outputs.py::"
INPUTS = "tests/test_inputs.py::"
BF16 = ("tests/test_train.py::test_bf16_autocast_computes_layers_in_bf16_and_the_scan_and_fft_in_float32",)
IMAGE_SCAN = ("tests/test_image_scan.py::test_cpp_matches_the_unfused_reference_float64",)
# The unfused path, the fused one's reference, is checked against it (the oracle runs the default, fused).
FUSED_NETWORK = ("tests/test_image_scan.py::test_fused_network_matches_the_unfused_path_float64[tiny-odd-quarter]",)
FUSED_MODULES = ("tests/test_fused_training.py",)
TRITON_IMAGE = ("tests/test_triton_scan.py::test_interpreter_suite[image-scan]",)
TRITON_IMAGE_KERNELS = "models/selective_scan/triton_image_kernels.py"
GROUP_SIGTERM = ("tests/test_preemption.py::test_group_sigterm_while_workers_start_saves_every_time",)
RUN_LOCK = ("tests/test_training_safety.py::test_a_second_run_is_refused_while_the_first_lives_and_starts_once_it_is_"
            "killed",)


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    old: str
    new: str
    tests: tuple
    bug: str


MUTATIONS = (
    Mutation("gate_sigmoid", "models/mamba_block.py", "self.out_norm(y.permute(0, 2, 3, 1)) * F.silu(z)",
             "self.out_norm(y.permute(0, 2, 3, 1)) * F.sigmoid(z)", ORACLE,
             "the Mamba block's gate SiLU(z) becomes sigmoid(z)"),
    Mutation("decoder_skip", "models/hybrimamba.py", "torch.cat((self.up1(d), s1), dim=1)",
             "torch.cat((self.up1(d), self.up1(d)), dim=1)", ORACLE,
             "the second decoder stage gets up1(d) twice instead of (up1(d), s1)"),
    Mutation("fwm_input_twice", "models/fwm.py", "return x + self.fourier(x) + self.wavelet(x)",
             "return 2 * x + self.fourier(x) + self.wavelet(x)", ORACLE,
             "FWM adds its input twice (the authors' code)"),
    Mutation("symmetry_vertical", "models/image_ssm.py", "mirrored = (y + y.flip(-1)) * 0.5",
             "mirrored = (y + y.flip(-2)) * 0.5", FUSED_NETWORK, "the unfused symmetry term mirrors vertically"),
    Mutation("fused_symmetry_vertical", "models/image_ssm.py", "y.flip(-1), c)", "y.flip(-2), c)", ORACLE,
             "the fused symmetry term mirrors vertically"),
    Mutation("fourier_adjoint_columns", "models/fwm.py", "grad[..., 1:width - spec.shape[-1] + 1] *= 2",
             "grad[..., 1:width - spec.shape[-1]] *= 2", FUSED_MODULES,
             "the Fourier branch's gradient doubles one spectrum column too few"),
    Mutation("haar_adjoint_uncropped", "models/haar.py", "return haar_idwt(grad_ll, grad_highs)[..., :h, :w]",
             "return haar_idwt(grad_ll, grad_highs)", FUSED_MODULES,
             "the Haar transform's backward forgets to crop the padding of odd sides"),
    Mutation("mamba_layer_keeps_everything", "models/mamba_block.py", "if self.fused and torch.is_grad_enabled():",
             "if False:", FUSED_MODULES, "training no longer recomputes the Mamba layer's cheap activations"),
    Mutation("merge_columns", "models/selective_scan/image_scan.py", "cols.view(b, d, w, h).transpose(2, 3)",
             "cols.view(b, d, h, w)", ORACLE, "column-major scans merged back without the transpose"),
    Mutation("haar_pads_first", "models/haar.py", "F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))",
             "F.pad(x, (x.shape[-1] % 2, 0, x.shape[-2] % 2, 0))", ORACLE,
             "odd sides zero-padded at the start instead of the end"),
    Mutation("leaky_slope", "models/hybrimamba.py", "LEAKY_SLOPE = 0.01", "LEAKY_SLOPE = 0.2", ORACLE,
             "LeakyReLU slope 0.2 instead of PyTorch's default 0.01"),
    Mutation("resume_rng", "utils/training/state.py", "        set_rng_state(rngs[self.plan.rank % len(rngs)])\n", "",
             RESUME, "resume no longer restores the RNG states"),
    Mutation("autocast_off", "utils/training/trainer.py", "enabled=self.amp_dtype is not None)", "enabled=False)", BF16,
             "--amp bf16 with autocast disabled inside the trainer"),
    Mutation("scan_in_bf16", "models/selective_scan/layout.py",
             "return torch.float64 if u.dtype == torch.float64 else torch.float32", "return u.dtype", BF16,
             "the scan accumulates in its inputs' dtype (bf16 under autocast)"),
    Mutation("y_float_truncation", "utils/evaluation/metrics.py", "return (numer // _Y_DENOM).astype(np.float64)",
             "return np.floor(16 + img.astype(np.float64) @ np.array([65.481, 128.553, 24.966]) / 255)",
             ("tests/test_eval_scripts.py::test_psnr_ssim_cli_pairs_by_stem_across_extensions",),
             "Y truncated from the float formula instead of the exact integers"),
    Mutation("y_round_half_even", "utils/evaluation/metrics.py",
             "return ((numer + _Y_DENOM // 2) // _Y_DENOM).astype(np.float64)", "return np.round(numer / _Y_DENOM)",
             ("tests/test_metric_conventions.py::test_the_float_tools_depart_from_exact_y_only_at_ties",),
             "Y rounded half to even (numpy) instead of halves up (MATLAB): 80 colours one lower"),
    Mutation("round_named_basicsr", "utils/y_conventions.py", '"MATLAB\'s rgb2ycbcr on uint8 images"',
             '"MATLAB\'s rgb2ycbcr and BasicSR"',
             ("tests/test_metric_conventions.py::test_each_tool_is_named_by_the_one_convention_that_reproduces_it",),
             "--y_convention round claims BasicSR's numbers, which only float reproduces"),
    Mutation("csv_without_convention", "utils/evaluation/folder_eval.py",
             '            row["convention"] = metric_tag(convention, rgb)\n', "",
             ("tests/test_eval_scripts.py::test_psnr_ssim_cli_pairs_by_stem_across_extensions",),
             "per-image CSVs no longer name the convention of their PSNR/SSIM"),
    Mutation("scan_flops", "models/complexity.py", "scan = 9 * b * length * k * d * n",
             "scan = 8 * b * length * k * d * n",
             ("tests/test_param.py::test_complexity_totals_by_hand",), "param.py counts 8 FLOPs per scan step, not 9"),
    Mutation("projection_direction", "models/selective_scan/image_scan.py", "w = weight.expand(b, *weight.shape)",
             "w = weight.flip(0).expand(b, *weight.shape)", ORACLE,
             "each direction projected with another direction's x_proj / dt_proj weights"),
    Mutation("image_scan_not_reversed", "models/selective_scan/cpu_scan.cpp",
             "const int64_t s = k >= 2 ? height * width - 1 - t : t;",
             "const int64_t s = k > 2 ? height * width - 1 - t : t;", IMAGE_SCAN,
             "the fused scan reads direction 2 forwards instead of backwards"),
    Mutation("image_scan_columns_transposed", "models/selective_scan/cpu_scan.cpp",
             "return k % 2 == 0 ? s : s % height * width + s / height;",
             "return k % 2 == 0 ? s : s % width * height + s / width;", IMAGE_SCAN,
             "the fused scan's column-major order with height and width swapped (right only on squares)"),
    Mutation("image_merge_drops_direction", "models/selective_scan/cpu_scan.cpp",
             "scatter_tile<T>(out.data(), bl, pixels, len, y_b, k > 0);",
             "scatter_tile<T>(out.data(), bl, pixels, len, y_b, k > 1);", IMAGE_SCAN,
             "the fused merge overwrites direction 0 with direction 1 instead of adding them"),
    Mutation("config_no_upper_bound", "models/config.py", 'if value > f.metadata["high"]:', "if False:",
             ("tests/test_config.py::test_bad_values_are_one_line_errors_naming_the_source_and_the_key",),
             "an absurd network size (embed_dim 100000) passes the config's checks"),
    Mutation("stored_config_default", "models/checkpoint.py",
             "    return HybriMambaConfig.from_options(options, source)\n", "    return HybriMambaConfig()\n",
             ("tests/test_config.py::test_command_line_checkpoint_export_and_param_py_give_one_config",),
             "test.py rebuilds a checkpoint's network with the paper's config instead of the stored one"),
    Mutation("overwrite_check_skipped", "utils/output_files.py",
             "        if not (path.exists() or path.is_symlink()) or overwrite:\n",
             "        if True:\n", (OUTPUTS + "test_export_never_replaces_a_file_it_did_not_export",),
             "an existing output is replaced without checking whose it is"),
    Mutation("purpose_ignored", "utils/output_files.py", "for p, sha in entries.get(path.name, ()) if p == purpose]",
             "for p, sha in entries.get(path.name, ())]",
             (OUTPUTS + "test_a_file_is_replaced_only_when_the_project_wrote_its_bytes_for_that_purpose",),
             "a file the project wrote for one purpose is replaced by a tool writing another"),
    Mutation("content_ignored", "utils/output_files.py", "return bool(entries) and file_sha256(path) in entries",
             "return bool(entries)", (OUTPUTS + "test_reruns_replace_their_own_outputs_and_overwrite_forces",),
             "an output the user edited since is replaced as if unchanged"),
    Mutation("output_inside_input", "utils/output_files.py", "        if src in out.parents:\n",
             "        if False:\n", (OUTPUTS + "test_metric_csv_table_and_picture_never_replace_a_users_file",),
             "an output file may lie inside an input folder (--csv HR/x.png)"),
    Mutation("writable_not_probed", "utils/output_files.py", "        os.close(fd)\n        os.unlink(probe)\n",
             "        os.close(fd)\n        os.unlink(probe)\n        raise OSError\n", ("tests/test_outputs.py",),
             "no folder counts as writable (the probe always fails)"),
    Mutation("make_lr_same_folders", "data/make_lr.py", "    check_distinct(dict(zip(flags, (lr_dir, up_dir))))\n",
             "", (OUTPUTS + "test_make_lr_refuses_one_folder_for_both_outputs",),
             "make_lr writes the LR and the bicubic files into one folder (one replaces the other)"),
    Mutation("demo_deletes_everything", "utils/demo/pipeline.py", "        if written_for(path, PURPOSE):\n",
             "        if True:\n", ("tests/test_demo.py::test_output_folder_is_reused_only_when_the_demo_made_it",),
             "a demo rerun deletes files the demo did not write"),
    Mutation("temp_files_kept", "utils/output_files.py", "not _alive(int(found[\"pid\"]))", "False",
             (OUTPUTS + "test_temporary_files_of_killed_writes_are_removed_at_the_next_start",),
             "temporary files of a killed write stay in the output folder"),
    Mutation("checkpoint_task_ignored", "utils/evaluation/inference.py",
             "    taken = [key for key in stored if key not in opt.explicit]\n", "    taken = []\n",
             (INPUTS + "test_test_py_runs_the_task_the_checkpoint_was_trained_for",),
             "test.py runs at 128 px whatever task the checkpoint was trained for"),
    Mutation("export_called_raw", "models/checkpoint.py",
             'return strip_module_prefix(ckpt["model"]), ckpt["weights"] if exported else "raw"',
             'return strip_module_prefix(ckpt["model"]), "raw"',
             (INPUTS + "test_exported_and_shipped_models_are_labelled_with_the_weights_they_hold",),
             "exported EMA weights are reported as raw weights"),
    Mutation("exif_ignored", "utils/image_io.py", "    if orientation != 1:\n", "    if False:\n",
             (INPUTS + "test_exif_orientation_is_applied_as_pil_applies_it",), "JPEGs read sideways (EXIF ignored)"),
    Mutation("gray_sr_unnoticed", "utils/evaluation/folder_eval.py", "is_gray(sr) and not is_gray(gt)", "False",
             (INPUTS + "test_grayscale_outputs_against_colour_ground_truth_are_a_warning",),
             "a grayscale SR folder scored against colour ground truth without a warning"),
    Mutation("heap_trimmed", "utils/host_memory.py", "return bool(mallopt(M_TRIM_THRESHOLD, -1)) and ",
             "return ", ("tests/test_host_memory.py",), "the top of the heap goes back to the kernel when freed"),
    Mutation("block_mappings", "utils/host_memory.py", " and bool(mallopt(M_MMAP_MAX, 0))", "",
             ("tests/test_host_memory.py",), "every large block still gets its own mapping, unmapped on free"),
    Mutation("release_checksum_ignored", "models/pretrained.py", "if weights_checksum(state) != meta.get(",
             "if False and weights_checksum(state) != meta.get(", ("tests/test_release.py",),
             "a release file's weights are loaded without checking them against their checksum"),
    Mutation("export_takes_raw_weights", "models/checkpoint.py",
             "    state, which = select_weights(ckpt, prefer_ema)\n    if state is None or which ==",
             "    state, which = select_weights(ckpt, False)\n    if state is None or which ==",
             ("tests/test_release.py::test_export_tool_writes_the_format_of_the_extension",),
             "the export tool ships the raw weights of a checkpoint that has EMA weights"),
    Mutation("irfft_nyquist_twice", "models/onnx_friendly.py", "twice = ((k > 0) & (2 * k < w)).to(re.dtype) + 1",
             "twice = (k > 0).to(re.dtype) + 1", ("tests/test_onnx.py::test_real_dft_pairs_equal_torch_fft",),
             "the ONNX inverse DFT counts an even width's Nyquist column twice"),
    Mutation("onnx_phase_of_zero_bins", "models/onnx_friendly.py", "torch.where(nonzero, re / safe, 1.0)",
             "torch.where(nonzero, re / safe, 0.0)",
             ("tests/test_onnx.py::test_real_fourier_branch_equals_the_complex_one_with_its_zero_bins",),
             "the ONNX Fourier branch gives zero-magnitude bins a zero phase instead of 1"),
    Mutation("onnx_scan_no_carry", "models/onnx_friendly.py", "h = local + since_start * entering.movedim(0, -1)",
             "h = local + 0 * entering.movedim(0, -1)",
             ("tests/test_onnx.py::test_chunked_scan_equals_the_sequential_float64_oracle",),
             "the ONNX scan drops the state carried into each chunk"),
    Mutation("onnx_scan_carry_after", "models/onnx_friendly.py", "return new, (state if before else new).clone()",
             "return new, new.clone()",
             ("tests/test_onnx.py::test_chunked_scan_equals_the_sequential_float64_oracle",),
             "the ONNX scan carries each chunk's own end state into it instead of the previous chunk's"),
    Mutation("web_shows_bicubic", "utils/web/faces.py", "sr = to_uint8(forward_padded(model, to_tensor(bicubic)",
             "sr = bicubic if True else to_uint8(forward_padded(model, to_tensor(bicubic)",
             ("tests/test_web.py::test_restore_face_runs_the_network_on_the_bicubic_input",
              "tests/test_web.py::test_the_page_in_a_real_browser_shows_the_models_result"),
             "the web page shows the bicubic face as HybriMamba's result"),
    Mutation("web_photo_shows_bicubic", "utils/web/server.py", '"sr": png_data_url(enhanced)',
             '"sr": png_data_url(bicubic)',
             ("tests/test_web.py::test_api_enhances_a_photo_with_faces_and_leaves_the_background_bicubic",),
             "the web page's photo mode shows the bicubic photo as the enhanced one"),
    Mutation("workers_unshielded", "utils/training/data.py",
             "    with workers_start_shielded():\n        iterator = iter(loader)\n", "    iterator = iter(loader)\n",
             GROUP_SIGTERM, "DataLoader workers start with the stop signals unblocked (killed before worker_init_fn)"),
    Mutation("worker_sigterm_unblocked", "utils/training/stop_signals.py",
             "signal.pthread_sigmask(signal.SIG_UNBLOCK, others)",
             "signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)", GROUP_SIGTERM,
             "a worker unblocks SIGTERM too: torch's worker handler ends it on another process's SIGTERM"),
    Mutation("startup_signal_recorded", "utils/training/stop_signals.py",
             "        if first and self.starting:\n            raise StoppedDuringStartup(signum)\n", "",
             ("tests/test_preemption.py::test_a_signal_before_the_network_exists_exits_3_with_nothing_to_save",),
             "a signal before the network exists is only recorded: start-up goes on and writes files"),
    Mutation("run_lock_not_taken", "utils/training/run_lock.py", "fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)",
             "fcntl.lockf(fd, fcntl.LOCK_UN)", RUN_LOCK, "the run lock is never taken: two runs share a folder"),
    Mutation("run_lock_flock", "utils/training/run_lock.py", "fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)",
             "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)", RUN_LOCK,
             "flock instead of lockf: DataLoader workers inherit the lock and hold it after a kill -9 of their run"),
    Mutation("optimizer_not_checksummed", "models/checkpoint.py", 'if k not in (*CHECKSUMMED, "checksums")}',
             'if k not in (*CHECKSUMMED, "checksums", "optimizer")}',
             ("tests/test_training_safety.py::test_damage_anywhere_in_the_training_state_is_refused",),
             "the training state's checksum leaves the optimizer out"),
    Mutation("no_save_on_data_error", "utils/training/trainer.py", "except (DataError, LogWriteError) as err:",
             "except LogWriteError as err:",
             ("tests/test_training_safety.py::test_a_corrupt_image_saves_latest_and_the_resume_can_skip_it",),
             "an unreadable training image stops the run without saving latest.pt"),
    Mutation("ema_dropped_on_resume", "utils/training/state.py", "    opt.ema = float(decay)\n", "",
             ("tests/test_training_safety.py::test_resume_keeps_the_ema_unless_ema_0_is_typed",),
             "a resumed run without --ema drops the checkpoint's EMA weights"),
    Mutation("scan_library_unchecked", "models/selective_scan/cpu_kernel.py",
             "            damaged = damaged_library_reason(built, name)\n", "            damaged = None\n",
             ("tests/test_cpp_scan.py::test_a_damaged_compiled_scan_falls_back_to_torch_instead_of_crashing",),
             "a compiled scan in the extension folder is loaded unchecked (SIGBUS when it is truncated)"),
    Mutation("photo_detector_offset", "utils/photo/detector.py", "DETECTOR_OFFSET = 0.5", "DETECTOR_OFFSET = 1.0",
             PHOTO_DETECTOR, "MTCNN's coordinates taken as pixel-centre ones (off by half a pixel at every size)"),
    Mutation("photo_opencv_centres", "utils/photo/geometry.py",
             "return compose(translation(-0.5, -0.5), compose(m, translation(0.5, 0.5)))", "return m", PHOTO_PARTS,
             "OpenCV's warps given corner-coordinate transforms (faces cut and pasted half a pixel off)"),
    Mutation("photo_paste_scale", "utils/photo/pipeline.py",
             "paste_face(canvas, restored, geometry.compose(geometry.scaling(scale), face_to_photo))",
             "paste_face(canvas, restored, geometry.compose(geometry.scaling(restorer.scale), face_to_photo))",
             PHOTO_PARTS, "restored faces pasted at the model's scale instead of the photo's --upscale"),
    Mutation("photo_exif_turn", "utils/image_io.py", "6: np.rot90(img, -1)", "6: np.rot90(img, 1)", PHOTO_PARTS,
             "EXIF orientation 6 turned the wrong way"),
    Mutation("photo_template_eyes", "utils/photo/alignment.py", "    [47.22, 45.31],\n    [83.91, 45.27],",
             "    [83.91, 45.27],\n    [47.22, 45.31],",
             ("tests/test_photo.py::test_template_recomputed_on_celeba_crops",),
             "the template's eyes swapped (faces aligned upside down or mirrored)"),
    Mutation("photo_strip_margin", "utils/photo/photo_io.py", "STRIP_MARGIN = 3 ", "STRIP_MARGIN = 0 ", PHOTO_PARTS,
             "the background enlarged in strips without context rows (seams every strip)"),
    Mutation("triton_image_reversed", TRITON_IMAGE_KERNELS, "s = tl.where(direction >= 2, length - 1 - t, t)",
             "s = tl.where(direction >= 3, length - 1 - t, t)", TRITON_IMAGE,
             "the fused triton image scan reads direction 2 forwards instead of reversed"),
    Mutation("triton_image_columns", TRITON_IMAGE_KERNELS, "(s % height) * width + s // height",
             "(s % width) * height + s // width", TRITON_IMAGE,
             "the fused triton image scan's column-major order with H and W swapped (transposed)"),
    Mutation("triton_image_merge", "models/selective_scan/triton_backend.py", "per_direction.sum(1)",
             "per_direction[:, :3].sum(1)", TRITON_IMAGE, "the fused triton image scan's merge drops a direction"),
    Mutation("triton_image_dt_rank", TRITON_IMAGE_KERNELS,
             "+ bias[:, None]\n    for r in range(dt_rank):", "+ bias[:, None]\n    for r in range(dt_rank - 1):",
             TRITON_IMAGE, "the fused triton image scan's dt_proj leaves out the last rank"),
    Mutation("triton_image_next_step", TRITON_IMAGE_KERNELS,
             "pixels_next_r = _direction_pixels(tr + 1, direction, height, width)",
             "pixels_next_r = _direction_pixels(tr, direction, height, width)", TRITON_IMAGE,
             "the fused triton image scan's adjoint decays by the step's own dt, not the next step's"),
)


def copy_repository(dest):
    """The tracked and untracked-but-not-ignored files of the working tree (what `make test` sees)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        source = ROOT / rel
        if source.is_file():
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def run_mutation(mutation, tree):
    """(outcome, seconds, failed test ids); outcome 'caught', 'SURVIVED', 'STALE' or 'ERROR'."""
    path = tree / mutation.path
    original = path.read_text()
    if original.count(mutation.old) != 1:
        return "STALE", 0.0, [f"{mutation.path}: the text to mutate occurs {original.count(mutation.old)} times"]
    path.write_text(original.replace(mutation.old, mutation.new))
    env = {**os.environ, "HYBRIMAMBA_SHARED": str(SHARED), "PYTHONDONTWRITEBYTECODE": "1"}
    if mutation.path.endswith(".cpp"):  # build the mutated kernel apart: processes may be using the real one
        env["TORCH_EXTENSIONS_DIR"] = str(tree.parent / "extensions")
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *mutation.tests],
                              cwd=tree, env=env, capture_output=True, text=True, timeout=1200)
    finally:
        path.write_text(original)
    seconds = time.perf_counter() - start
    failed = [line.split()[1] for line in done.stdout.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    if done.returncode == 0:
        return "SURVIVED", seconds, []
    if done.returncode == 1:
        return "caught", seconds, failed
    return "ERROR", seconds, [done.stdout[-2000:] + done.stderr[-2000:]]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="mutations to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = parser.parse_args(argv)
    known = {m.name: m for m in MUTATIONS}
    if args.list:
        for m in MUTATIONS:
            print(f"{m.name:<20} {m.bug}")
        return 0
    unknown = [n for n in args.names if n not in known]
    if unknown:
        parser.error(f"unknown mutation(s) {', '.join(unknown)}; --list shows them")
    chosen = [known[n] for n in args.names] or list(MUTATIONS)
    bad = 0
    with tempfile.TemporaryDirectory(prefix="hybrimamba-mutations-") as tmp:
        tree = Path(tmp) / "repo"
        copy_repository(tree)
        for mutation in chosen:
            outcome, seconds, details = run_mutation(mutation, tree)
            bad += outcome != "caught"
            print(f"{mutation.name:<20} {outcome:<9} {seconds:6.1f} s  {mutation.bug}", flush=True)
            for line in details:
                print(f"    {line}")
    print(f"mutation check: {len(chosen) - bad} of {len(chosen)} caught")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
