"""The training loop (docs/architecture.md §4): L1 loss, AdamW, MultiStepLR per epoch, checkpoints written
when the weights are sane, validation, logging, stop signals; single device, DataParallel or DDP (see
utils.training.distributed). What a checkpoint holds and how a run resumes exactly from it is
``utils.training.state``.

Start-up checks everything before training: the output folders, the run lock, the checkpoint to resume.
A stop signal saves latest.pt once the training state exists (``utils.training.stop_signals``); so does
a data error (an unreadable image) or a log that cannot be written, before the run stops.
"""
import contextlib
import logging
import random
import signal
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader

from data import CelebADataset
from data.image_tensor import to_uint8
from models import HybriMamba
from models.checkpoint import (
    load_weights,
    save_checkpoint,
)
from models.device import unwrap
from options.base_options import network_config
from options.train_options import TrainOptions
from utils.errors import UserError
from utils.evaluation.metrics import evaluate_pair
from utils.host_memory import retain_freed_memory
from utils.progress import format_duration, progress_bar
from utils.training.data import DataError, batches, build_train_loader
from utils.training.distributed import (
    broadcast_object,
    destroy_process_group,
    init_process_group,
    plan_devices,
    wrap_model,
)
from utils.training.ema import ModelEMA
from utils.training.logger import LogWriteError, TrainLogger
from utils.training.run_folder import check_output_folders, prepare_run_folders
from utils.training.run_lock import RunLock
from utils.training.state import (
    TrainingState,
    checkpoint_to_resume,
    dataset_summary,
    keep_checkpoint_ema,
    read_training_state,
)
from utils.training.stop_signals import StopSignals, ignore_stop_signals

log = logging.getLogger("hybrimamba")
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Images lie in [-1, 1] and training starts near an L1 loss of 1: a mean L1 loss above 10 means outputs
# far outside the image range, i.e. weights that have diverged (a transient spike stays well below it).
MAX_SANE_L1 = 10.0


class NonFiniteError(UserError):
    """The loss or the weights became NaN/inf, or the weights diverged; the run stops without writing a checkpoint."""


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_grad_scaler(enabled):
    scaler_cls = getattr(torch.amp, "GradScaler", None)
    return scaler_cls("cuda", enabled=enabled) if scaler_cls else torch.cuda.amp.GradScaler(enabled=enabled)


def weights_finite(model):
    return all(bool(torch.isfinite(p).all()) for p in unwrap(model).parameters())


class Trainer:
    """One training run described by ``opt`` (a TrainOptions namespace); ``fit()`` runs it.

    ``stop_signals``: the active ``StopSignals`` of train.py, installed before start-up began; without
    it the Trainer installs its own until ``close()``."""

    def __init__(self, opt, stop_signals=None):
        self.opt = opt
        self.plan = self.logger = self.run_lock = self.loader = self.val_loader = None
        self._signals = contextlib.ExitStack()
        self.stop_signals = stop_signals or self._signals.enter_context(StopSignals())
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self):
        retain_freed_memory()  # each step reuses the last one's host memory instead of faulting it in again
        self.plan = plan_devices(self.opt.gpus)
        self.stop_signals.announce = self.plan.is_main
        init_process_group(self.plan)
        self.device = self.plan.device
        self.exp_dir = Path(self.opt.checkpoints_dir) / self.opt.name
        self.ckpt_dir = Path(self.opt.ckpt_dir) / self.opt.name
        folder_notices = self._prepare_folders()
        self.logger = TrainLogger(self.exp_dir, enabled=self.plan.is_main)
        for line in folder_notices:
            log.warning(f"notice: {line}")
        self._setup()

    @property
    def iteration(self):
        """Iterations done (``state.iteration``)."""
        return self.state.iteration

    def _prepare_folders(self):
        """Rank 0 checks that the output folders are writable, takes the run lock (``RunLock``) and readies the
        run's folders before anything is written (``prepare_run_folders``); its refusal is raised on every
        rank. Returns the notice lines."""
        outcome = None
        if self.plan.is_main:
            try:
                check_output_folders(self.ckpt_dir, self.exp_dir, self.opt)
                self.run_lock = RunLock(self.ckpt_dir)
                # 'auto' resumes only a run that has a latest.pt; otherwise it starts one like a plain run.
                resume = self.opt.continue_train is True or (
                    self.opt.continue_train == "auto" and (self.ckpt_dir / "latest.pt").is_file())
                notices = [self.run_lock.notice] if self.run_lock.notice else []
                outcome = ("notices", notices + prepare_run_folders(self.ckpt_dir, self.exp_dir, resume=resume,
                                                                    overwrite=self.opt.overwrite))
            except UserError as err:
                outcome = ("error", str(err))
        kind, value = broadcast_object(outcome, self.plan)
        if kind == "error":
            raise UserError(value)
        return value

    def _setup(self):
        opt, plan = self.opt, self.plan
        # The checkpoint to resume is read and checked first: its options may set --ema.
        resume_from = checkpoint_to_resume(opt, self.ckpt_dir, plan)
        resumed = read_training_state(resume_from) if resume_from else None
        kept = keep_checkpoint_ema(opt, resumed, resume_from) if resumed else []
        options = TrainOptions()
        if plan.is_main:
            log.info(options.format(opt))
            for line in plan.notices + options.notices(opt) + kept:
                log.warning(f"notice: {line}")
            log.info(f"device: {plan.describe()}")
        if opt.amp == "fp16" and self.device.type != "cuda":
            raise UserError("--amp fp16 needs CUDA (it relies on a GradScaler); use --amp bf16 on the CPU")
        self.amp_dtype = AMP_DTYPES[opt.amp]

        dataset = CelebADataset(opt.dataroot, load_size=opt.load_size, scale_factor=opt.scale_factor, augment=True,
                                skip_bad=opt.skip_bad_images)
        self.loader, self.sampler, self.iters_per_epoch = build_train_loader(
            dataset, opt.batch_size, opt.num_threads, opt.seed, rank=plan.rank, world_size=plan.world_size,
            pin_memory=self.device.type == "cuda")
        if opt.val_dataroot and plan.is_main:
            val_set = CelebADataset(opt.val_dataroot, load_size=opt.load_size, scale_factor=opt.scale_factor,
                                    augment=False, skip_bad=opt.skip_bad_images)
            self.val_loader = DataLoader(val_set, batch_size=opt.batch_size, num_workers=opt.num_threads,
                                         worker_init_fn=ignore_stop_signals)

        # Same initial weights on every rank; then one RNG stream per rank.
        seed_everything(opt.seed)
        net = HybriMamba(network_config(opt), scan_backend=opt.scan_backend)
        net.set_activation_checkpointing(opt.activation_checkpointing)
        if opt.pretrain_model_path and not resume_from:
            what = load_weights(net, opt.pretrain_model_path, prefer_ema=True)
            if plan.is_main:
                log.info(f"initialised from {what}")
        seed_everything(opt.seed + plan.rank)
        self.optimizer = torch.optim.AdamW(net.optimizer_param_groups(opt.weight_decay), lr=opt.lr,
                                           betas=(opt.beta1, opt.beta2))
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones=opt.lr_milestones,
                                                              gamma=opt.lr_gamma)
        self.scaler = make_grad_scaler(opt.amp == "fp16")
        self.model = wrap_model(net, plan)
        self.ema = ModelEMA(self.model, opt.ema) if opt.ema > 0 else None
        if opt.compile:  # in place, after the EMA's copy: state_dict keys and unwrap() stay as they are
            self.model.compile()

        self.state = TrainingState(opt, plan, self.model, self.optimizer, self.scheduler, self.scaler, self.ema,
                                   self.iters_per_epoch, dataset_summary(dataset))
        self.stopped_by = None     # name of the signal that stopped the run early
        self.last_batch = None     # (LR, HR) on the device: the sanity check before a save reuses it
        if resume_from:
            self.state.resume(resume_from, resumed)
            del resumed
        # From here on a stop signal saves latest.pt.
        self.stop_signals.record_only()
        # The checks have passed: now the run writes its logs.
        self.logger.start_writing(purge_step=self.state.iteration + 1 if resume_from else None)
        if plan.is_main:
            try:
                options.save(opt)
            except OSError as err:
                raise UserError(f"{self.exp_dir}: cannot write the options file ({err.strerror or err}); free disk "
                                f"space or choose another --checkpoints_dir") from None
        if plan.is_main:
            n_params = sum(p.numel() for p in net.parameters())
            log.info(f"{len(dataset)} training images, {self.iters_per_epoch} iterations per epoch "
                     f"(batch {opt.batch_size} x {plan.world_size} process(es)); network {n_params / 1e6:.3f} M "
                     f"parameters; checkpoints in {self.ckpt_dir}")

    # ----------------------------------------------------------------- checkpoints
    def save(self, *names):
        """Write the state as <ckpt_dir>/<name>/<each of names>.pt (rank 0) if the weights are sane
        (``check_sane``); all ranks must call it."""
        self.check_sane()
        state = self.state.checkpoint()
        if "latest" in names:  # on every rank, so that all of them agree on what is already saved
            self.state.last_saved = (self.ckpt_dir / "latest.pt", self.state.iteration)
        if not self.plan.is_main:
            return
        for name in names:
            save_checkpoint(self.ckpt_dir / f"{name}.pt", state)

    def check_sane(self):
        """Raise ``NonFiniteError`` (the run stops, the last sane checkpoint stays) when the weights are
        not finite or give, on the last training batch, an L1 loss that is not finite or above
        ``MAX_SANE_L1``; collective under DDP."""
        if not weights_finite(self.model):
            raise NonFiniteError(self._stop_message(f"non-finite weights after iteration {self.state.iteration}"))
        if self.last_batch is None:  # nothing trained since the (checked) checkpoint was loaded
            return
        with torch.no_grad(), self.autocast():
            sr = self.model(self.last_batch[0])
        loss = F.l1_loss(sr.float(), self.last_batch[1])
        if self.plan.distributed:
            dist.all_reduce(loss)
            loss /= self.plan.world_size
        value = loss.item()
        if not value <= MAX_SANE_L1:
            raise NonFiniteError(self._stop_message(
                f"diverged: the weights after iteration {self.state.iteration} give an L1 loss of {value:.3g} on the "
                f"last batch (above {MAX_SANE_L1:g}: outputs far outside the image range)"))

    # ----------------------------------------------------------------- training
    def _stop_message(self, what):
        stopped = f"{what} (epoch {self.state.epoch + 1}); stopped without saving"
        if self.state.last_saved:
            path, iteration = self.state.last_saved
            return (f"{stopped}, the last sane checkpoint {path} (iteration {iteration}) is kept; resume it with "
                    f"--continue_train and a lower --lr, or set --grad_clip")
        return f"{stopped}, no checkpoint had been written yet; start again with a lower --lr or set --grad_clip"

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def train_step(self, batch):
        """One optimisation step on ``batch``; returns (loss averaged over ranks, SR batch (B, 3, H, W))."""
        lr_img = batch["LR"].to(self.device, non_blocking=True)
        hr = batch["HR"].to(self.device, non_blocking=True)
        self.last_batch = (lr_img, hr)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            sr = self.model(lr_img)
        loss = F.l1_loss(sr.float(), hr)
        reported = loss.detach().clone()
        if self.plan.distributed:
            dist.all_reduce(reported)
            reported /= self.plan.world_size
        value = reported.item()
        if not np.isfinite(value):
            raise NonFiniteError(self._stop_message(
                f"non-finite loss ({value}) at iteration {self.state.iteration + 1}"))
        self.scaler.scale(loss).backward()
        if self.opt.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.opt.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema:
            self.ema.update(self.model)
        return value, sr.detach()

    def total_iterations(self):
        total = self.iters_per_epoch * self.opt.total_epochs
        return min(total, self.opt.max_iters) if self.opt.max_iters else total

    def fit(self):
        """Train until --total_epochs (or --max_iters), or until a stop signal (``stopped_by``, also set by
        one that came after the last iteration); returns self. A ``DataError`` or ``LogWriteError`` stops
        the run with latest.pt saved first (single process), raised as a ``UserError`` that says so."""
        try:
            try:
                self._fit()
            except (DataError, LogWriteError) as err:
                raise UserError(self._save_before_stopping(err)) from None
            if self.stopped_by is None and self.stop_signals.received:
                self.stopped_by = signal.Signals(self.stop_signals.received).name
        finally:
            self.close()
        return self

    def _save_before_stopping(self, err):
        """``err``'s message followed by where the run can resume, latest.pt saved first. Under DDP the
        other processes cannot join the save (they wait in the step): only the message."""
        if self.plan.distributed:
            return str(err)
        path = self.ckpt_dir / "latest.pt"
        try:
            if not self.state.saved_now():
                self.save("latest")
        except UserError as save_err:
            return f"{err}; and latest.pt could not be saved: {save_err}"
        how = ("--continue_train after removing or re-exporting the image, or with --skip_bad_images"
               if isinstance(err, DataError) else "--continue_train once the logs can be written")
        return f"{err}; {path} holds iteration {self.state.iteration}: resume it with {how}"

    def _fit(self):
        opt = self.opt
        total = self.total_iterations()
        if self._stop_requested():  # a signal during start-up, once the training state existed
            self._save_and_report_stop()
            return
        if self.state.iteration >= total:
            log.info(f"nothing to do: iteration {self.state.iteration} already reaches the end ({total})")
            return
        window, tick = [], time.perf_counter()
        while self.state.iteration < total:
            self.sampler.set_position(self.state.epoch, self.state.batch_in_epoch * opt.batch_size)
            # In a log file the progress lines of _log_progress stand in for the bar.
            bar = progress_bar(total=self.iters_per_epoch, initial=self.state.batch_in_epoch, unit="it",
                               desc=f"epoch {self.state.epoch + 1}/{opt.total_epochs}", enabled=self.plan.is_main,
                               lines=False, mininterval=1.0, dynamic_ncols=True, leave=False)
            for batch in batches(self.loader):
                loss, sr = self.train_step(batch)
                self.state.advance()
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                window.append(loss)
                if self.state.iteration % opt.print_freq == 0:
                    now = time.perf_counter()
                    self._log_progress(window, len(window) / (now - tick))
                    window, tick = [], now
                if self.state.iteration % opt.visual_freq == 0:
                    self.logger.visuals(batch["LR"], sr, batch["HR"], self.state.iteration)
                if opt.val_dataroot and self.state.iteration % opt.val_freq == 0:
                    self.validate_and_keep_best()
                self.logger.check()
                self._periodic_save()
                if self.state.iteration >= total or self._stop_requested():
                    break
            bar.close()
            if self.stopped_by:
                self._save_and_report_stop()
                return
        if opt.val_dataroot and self.state.iteration % opt.val_freq:
            self.validate_and_keep_best()
        if not self.state.saved_now():
            self.save("latest")
        if self.plan.is_main:
            log.info(f"finished at iteration {self.state.iteration} ({self.state.done()}); latest checkpoint "
                     f"{self.ckpt_dir / 'latest.pt'}")

    def _periodic_save(self):
        names = [name for name, freq in (("latest", self.opt.save_latest_freq), (f"iter_{self.state.iteration}",
                                                                                self.opt.save_iter_freq))
                 if self.state.iteration % freq == 0]
        if names:
            self.save(*names)

    def _stop_requested(self):
        """Whether a stop signal reached any process; sets ``stopped_by``. Under DDP one tiny all-reduce
        per iteration makes every rank stop after the same iteration, whenever each got the signal."""
        signum = self.stop_signals.received or 0
        if self.plan.distributed:
            flag = torch.tensor([signum], dtype=torch.int32, device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            signum = int(flag.item())
        if signum:
            self.stopped_by = signal.Signals(signum).name
        return bool(signum)

    def _save_and_report_stop(self):
        if not self.state.saved_now():
            self.save("latest")
        if self.plan.is_main:
            log.warning(f"stopped by {self.stopped_by} after iteration {self.state.iteration} ({self.state.done()}); "
                        f"saved {self.ckpt_dir / 'latest.pt'}; resume with --continue_train (or --continue_train auto)")

    def _log_progress(self, losses, iters_per_s):
        if not self.plan.is_main:
            return
        loss = float(np.mean(losses))
        images_per_s = iters_per_s * self.opt.batch_size * self.plan.world_size
        epoch = self.state.epoch + (self.state.batch_in_epoch > 0)  # the epoch this iteration belonged to
        eta = format_duration((self.total_iterations() - self.state.iteration) / iters_per_s)
        log.info(f"epoch {epoch} iteration {self.state.iteration}: loss {loss:.5f} lr {self.state.current_lr():.3g} "
                 f"{iters_per_s:.2f} it/s ({images_per_s:.1f} images/s) ETA {eta}")
        self.logger.scalars({"train/loss_l1": loss, "train/lr": self.state.current_lr(),
                             "train/iters_per_s": iters_per_s, "train/images_per_s": images_per_s},
                            self.state.iteration)

    # ----------------------------------------------------------------- validation
    def validate_and_keep_best(self):
        """Validate on rank 0 and write best.pt when its PSNR improves; all ranks must call it."""
        psnr, ssim = broadcast_object(self.validate() if self.plan.is_main else None, self.plan)
        if psnr > self.state.best.get("psnr", -np.inf):
            self.state.best = {"psnr": psnr, "ssim": ssim, "iteration": self.state.iteration}
            self.save("best")

    @torch.no_grad()
    def validate(self):
        """(mean PSNR-Y, mean SSIM-Y) over --val_dataroot, with the EMA weights if enabled."""
        net = self.ema.module if self.ema else unwrap(self.model)
        was_training = net.training
        net.eval()
        scores = []
        for batch in progress_bar(batches(self.val_loader), total=len(self.val_loader), desc="validation",
                                  unit="batch", enabled=self.plan.is_main, leave=False):
            with self.autocast():
                sr = net(batch["LR"].to(self.device))
            scores += [evaluate_pair(gt, out) for gt, out in zip(to_uint8(batch["HR"]), to_uint8(sr))]
        net.train(was_training)
        psnr, ssim = (float(np.mean(v)) for v in zip(*scores))
        log.info(f"validation at iteration {self.state.iteration}: PSNR-Y {psnr:.3f} dB, SSIM-Y {ssim:.4f} "
                 f"({len(scores)} images{', EMA weights' if self.ema else ''})")
        self.logger.scalars({"val/psnr_y": psnr, "val/ssim_y": ssim}, self.state.iteration)
        return psnr, ssim

    def close(self):
        """End the run's logging, worker processes, lock, process group and (its own) signal handlers; also
        after a failed start-up."""
        if self.logger:
            self.logger.close()
        # Dropping the loaders ends their persistent worker processes.
        self.loader = self.val_loader = None
        if self.run_lock:
            self.run_lock.release()
        if self.plan:
            destroy_process_group(self.plan)
        self._signals.close()


def train(opt, stop_signals=None):
    """Run the training described by ``opt`` (``stop_signals``: see ``Trainer``); returns the finished Trainer."""
    return Trainer(opt, stop_signals).fit()
