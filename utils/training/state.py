"""What a training checkpoint holds and how a run resumes from it exactly.

A checkpoint stores the position as (epochs done, batches of the current epoch done) next to the
network's raw and EMA weights, the optimizer, scheduler and grad scaler, the best validation score
and every process's RNG states. The data order and the augmentation of each sample are functions of
(seed, epoch, index) only (``utils.training.data``), so the resumed run skips the consumed batches
of the epoch's order and continues with the very batches the uninterrupted run would have seen.
The optimizer and schedule options typed on a resumed run's command line replace the checkpoint's
(``override_schedule``). The loop that fills this state is ``utils.training.trainer``.
"""
import bisect
import hashlib
import logging
import random
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from models.checkpoint import assign_weights, check_finite, load_checkpoint, select_weights
from models.device import unwrap
from utils.errors import UserError, first_few
from utils.training.distributed import all_gather_objects, broadcast_object

log = logging.getLogger("hybrimamba")
# Options whose change makes a resumed run differ from an uninterrupted one.
RESUME_SENSITIVE = ("dataroot", "batch_size", "seed", "load_size", "scale_factor", "amp", "ema", "grad_clip",
                    "lr", "beta1", "beta2", "weight_decay", "lr_milestones", "lr_gamma")
# Optimizer and schedule options that a resumed run takes from its command line instead of the checkpoint.
SCHEDULE_OPTIONS = ("lr", "beta1", "beta2", "weight_decay", "lr_milestones", "lr_gamma")
TRAINING_STATE = ("model", "optimizer", "scheduler", "epoch", "iteration", "batch_in_epoch", "rng")


def rng_state():
    """This process's RNG states as tensors and plain types (loadable with weights_only)."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(mt), gauss],
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []}


def set_rng_state(state):
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        # A run resumed on fewer GPUs than it was saved from restores the states of those it has.
        torch.cuda.set_rng_state_all(state["cuda"][:torch.cuda.device_count()])


def scheduler_state(scheduler):
    """MultiStepLR's state with its milestone Counter as a plain dict (safe to load)."""
    state = dict(scheduler.state_dict())
    state["milestones"] = dict(state["milestones"])
    return state


def load_scheduler_state(scheduler, state):
    scheduler.load_state_dict({**state, "milestones": Counter(state["milestones"])})


def override_schedule(optimizer, scheduler, opt, saved):
    """After loading a checkpoint's optimizer and scheduler: the ``SCHEDULE_OPTIONS`` typed on the
    command line (``opt.explicit``) that differ from the checkpoint's ``saved`` options replace them;
    the others stay as the checkpoint has them.

    The learning rate becomes the base lr decayed by the milestones passed so far. Group 0 is the
    weight-decay group of ``HybriMamba.optimizer_param_groups``. Returns (replaced keys, notice lines).
    """
    changed = [k for k in SCHEDULE_OPTIONS if k in opt.explicit and k in saved and saved[k] != getattr(opt, k)]
    if "lr_milestones" in changed:
        scheduler.milestones = Counter(opt.lr_milestones)
    if "lr_gamma" in changed:
        scheduler.gamma = opt.lr_gamma
    if "lr" in changed:
        scheduler.base_lrs = [opt.lr] * len(optimizer.param_groups)
    decays = bisect.bisect_right(sorted(scheduler.milestones.elements()), scheduler.last_epoch)
    for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs):
        if {"lr", "lr_milestones", "lr_gamma"} & set(changed):
            group["initial_lr"] = base_lr
            group["lr"] = base_lr * scheduler.gamma ** decays
        beta1, beta2 = group["betas"]
        group["betas"] = (opt.beta1 if "beta1" in changed else beta1, opt.beta2 if "beta2" in changed else beta2)
    if "weight_decay" in changed:
        optimizer.param_groups[0]["weight_decay"] = opt.weight_decay
    lr_now = f" (learning rate now {optimizer.param_groups[0]['lr']:.3g})"
    return changed, [f"--{k} {getattr(opt, k)} from the command line replaces the checkpoint's {saved[k]}"
                     f"{lr_now if k in ('lr', 'lr_milestones', 'lr_gamma') else ''}" for k in changed]


def checkpoint_to_resume(opt, ckpt_dir, plan):
    """<ckpt_dir>/latest.pt when --continue_train asks for it (with 'auto': when it exists), else None;
    collective under DDP."""
    path = ckpt_dir / "latest.pt"
    if opt.continue_train != "auto":
        return path if opt.continue_train else None
    # Rank 0 decides, so that all processes resume or none does.
    exists = broadcast_object(path.is_file() if plan.is_main else None, plan)
    if plan.is_main and not exists:
        log.info(f"--continue_train auto: no {path} yet, starting a new run")
    return path if exists else None


def read_training_state(path):
    """The training checkpoint at ``path`` (a latest.pt to resume), loaded and checked (checksums, and that it
    is a whole training state); ``UserError`` otherwise."""
    ckpt = load_checkpoint(path)
    if select_weights(ckpt)[1] == "bare state_dict":
        raise UserError(f"{path}: holds network weights only, not a training state; --continue_train needs a "
                        f"latest.pt written by train.py (to start from these weights: --pretrain_model_path "
                        f"{path} and a new --name)")
    missing = [k for k in TRAINING_STATE if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise UserError(f"{path}: not a training state written by train.py (no {', '.join(missing)}); "
                        f"resume from another checkpoint or start a new --name")
    return ckpt


def keep_checkpoint_ema(opt, ckpt, path):
    """A resumed run keeps the checkpoint's EMA unless --ema is typed (``--ema 0`` drops it): sets ``opt.ema``
    to the checkpoint's decay; returns the notice lines."""
    if "ema" in opt.explicit or "ema" not in ckpt:
        return []
    options = ckpt.get("options")
    decay = options.get("ema") if isinstance(options, dict) else None
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay < 1:
        raise UserError(f"{path}: holds EMA weights but its options give no usable EMA decay ({decay!r}); pass "
                        f"--ema (e.g. --ema 0.999) to keep them, or --ema 0 to drop them")
    if decay == opt.ema:
        return []
    opt.ema = float(decay)
    return [f"--ema {opt.ema} as {path} was trained: its EMA weights are kept (--ema 0 drops them)"]


def dataset_summary(dataset):
    """{'images': count, 'digest': sha256 of the image paths relative to the data folder}: what a resumed
    run compares with the checkpoint's to tell whether the training set changed."""
    digest = hashlib.sha256()
    for path in dataset.paths:
        digest.update(f"{Path(path).relative_to(dataset.root).as_posix()}\n".encode())
    return {"images": len(dataset.paths), "digest": digest.hexdigest()}


def dataset_change(saved, now):
    """A notice line when the training set ``now`` (``dataset_summary``) differs from the checkpoint's, else None."""
    if not isinstance(saved, dict) or saved == now:
        return None
    count = (f"{now['images']} images now, {saved.get('images')} then" if saved.get("images") != now["images"]
             else f"{now['images']} images then and now, but not the same files")
    return (f"the training set changed since the checkpoint was saved ({count}): every epoch is shuffled over the "
            f"new set, so the run will not match an uninterrupted one")


def check_optimizer_state(state, optimizer, model, path):
    """Non-finite values in the optimizer state of ``state`` (an optimizer state_dict) raise ``UserError``
    naming the parameters: they would turn the weights into NaN a few iterations after the resume."""
    names = {id(p): name for name, p in unwrap(model).named_parameters()}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    bad = []
    for index, entries in state.get("state", {}).items():
        name = names.get(id(params[index]), f"parameter {index}") if index < len(params) else f"parameter {index}"
        bad += [f"{key} of {name}" for key, value in entries.items()
                if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(value.isfinite().all())]
    if bad:
        raise UserError(f"{path}: non-finite values (NaN or inf) in the optimizer state: {first_few(bad)}; this "
                        f"training state cannot continue: start a new --name from its weights with "
                        f"--pretrain_model_path {path}, or resume an earlier checkpoint")


class TrainingState:
    """The parts of a run that a checkpoint saves and a resume restores: the network (``model``, maybe
    wrapped for DataParallel/DDP, and ``ema``), ``optimizer``, ``scheduler``, ``scaler``, the position
    (``epoch``, ``batch_in_epoch``, ``iteration``), ``best`` (validation) and ``last_saved``; ``dataset`` is
    the training set's ``dataset_summary``."""

    def __init__(self, opt, plan, model, optimizer, scheduler, scaler, ema, iters_per_epoch, dataset):
        self.opt, self.plan = opt, plan
        self.model, self.optimizer, self.scheduler, self.scaler, self.ema = model, optimizer, scheduler, scaler, ema
        self.iters_per_epoch = iters_per_epoch
        self.dataset = dataset
        self.epoch = 0             # epochs completed
        self.batch_in_epoch = 0    # batches of the current epoch completed
        self.iteration = 0
        self.best = {}
        self.last_saved = None     # (path, iteration) of the newest latest.pt

    def current_lr(self):
        return self.optimizer.param_groups[0]["lr"]

    def done(self):
        """'E epoch(s) and B batch(es) done', the position in words."""
        return f"{self.epoch} epoch(s) and {self.batch_in_epoch} batch(es) done"

    def saved_now(self):
        """Whether latest.pt already holds this iteration."""
        return bool(self.last_saved) and self.last_saved[1] == self.iteration

    def advance(self):
        """Count one finished iteration; at the end of an epoch the scheduler steps."""
        self.iteration += 1
        self.batch_in_epoch += 1
        if self.batch_in_epoch == self.iters_per_epoch:
            self.scheduler.step()
            self.epoch += 1
            self.batch_in_epoch = 0

    def checkpoint(self):
        """The full training state; collective under DDP (gathers every rank's RNG state)."""
        state = {"model": unwrap(self.model).state_dict(),
                 "optimizer": self.optimizer.state_dict(),
                 "scheduler": scheduler_state(self.scheduler),
                 "scaler": self.scaler.state_dict(),
                 "epoch": self.epoch, "iteration": self.iteration, "batch_in_epoch": self.batch_in_epoch,
                 "iters_per_epoch": self.iters_per_epoch, "world_size": self.plan.world_size,
                 "dataset": dict(self.dataset),
                 "best": dict(self.best),
                 "rng": all_gather_objects(rng_state(), self.plan),
                 "options": dict(vars(self.opt))}
        if self.ema:
            state["ema"] = self.ema.state_dict()
        return state

    def resume(self, path, ckpt):
        """Restore everything ``checkpoint()`` saved from ``ckpt`` (``read_training_state(path)``, a latest.pt of
        this run); the schedule options typed on the command line replace the checkpoint's."""
        saved = ckpt.get("options", {})
        assign_weights(self.model, ckpt["model"], path, ckpt)
        if self.ema:
            if "ema" in ckpt:
                check_finite(ckpt["ema"], path)
                self.ema.load_state_dict(ckpt["ema"])
            else:  # the EMA starts over from the resumed raw weights
                self.ema.load_state_dict(unwrap(self.model).state_dict())
                log.warning(f"notice: {path} has no EMA weights; the EMA starts from the resumed weights")
        check_optimizer_state(ckpt["optimizer"], self.optimizer, self.model, path)
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError, TypeError) as err:
            raise UserError(f"{path}: its optimizer state does not fit this network's parameters ({err}); resume "
                            f"with the network options it was trained with") from None
        load_scheduler_state(self.scheduler, ckpt["scheduler"])
        if self.scaler.is_enabled() and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.iteration = int(ckpt["epoch"]), int(ckpt["iteration"])
        self.batch_in_epoch = int(ckpt["batch_in_epoch"])
        self.best = dict(ckpt.get("best", {}))
        self.last_saved = (path, self.iteration)
        replaced, overrides = override_schedule(self.optimizer, self.scheduler, self.opt, saved)
        changed = [f"--{k} {getattr(self.opt, k)} (was {saved[k]})" for k in RESUME_SENSITIVE
                   if k in saved and saved[k] != getattr(self.opt, k) and k not in replaced]
        if ckpt.get("iters_per_epoch") != self.iters_per_epoch:
            changed.append(f"{self.iters_per_epoch} iterations per epoch (was {ckpt.get('iters_per_epoch')})")
            self.batch_in_epoch = min(self.batch_in_epoch, self.iters_per_epoch - 1)
        data_notice = dataset_change(ckpt.get("dataset"), self.dataset)
        rngs = ckpt["rng"]
        if len(rngs) != self.plan.world_size:
            changed.append(f"{self.plan.world_size} process(es) (was {len(rngs)})")
        set_rng_state(rngs[self.plan.rank % len(rngs)])
        if self.plan.is_main:
            log.info(f"resumed from {path}: iteration {self.iteration}, epoch {self.epoch + 1}, "
                     f"batch {self.batch_in_epoch} of {self.iters_per_epoch}, lr {self.current_lr():.3g}")
            for line in overrides + ([data_notice] if data_notice else []):
                log.warning(f"notice: {line}")
            if changed:
                log.warning("notice: resuming with settings that differ from the checkpoint's (optimizer and "
                            "schedule settings not typed on the command line come from the checkpoint; the run "
                            "will not match an uninterrupted one): " + ", ".join(changed))
