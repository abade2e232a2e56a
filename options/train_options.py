"""Options of train.py: the paper's protocol as defaults, plus AMP, EMA, clipping, validation, resume."""
import argparse
from pathlib import Path

from options.base_options import BaseOptions, non_negative, positive
from utils.errors import UserError

AMP_MODES = ("none", "bf16", "fp16")


def resume_mode(text):
    """argparse type of --continue_train's optional value: only 'auto'."""
    if text != "auto":
        raise argparse.ArgumentTypeError(f"'{text}' is not a mode; use --continue_train alone or "
                                         f"--continue_train auto")
    return text


class TrainOptions(BaseOptions):
    phase = "train"
    prog = "train.py"
    description = (
        "Train HybriMamba for 8x face super-resolution (16x16 -> 128x128) on a folder of HR faces.\n"
        "Defaults follow the paper: L1 loss, AdamW (lr 4e-4, betas 0.9/0.99, weight decay 0.02),\n"
        "learning rate x0.5 at epochs 20/40/60/80, 100 epochs, batch 32.\n"
        "Logs, options, TensorBoard events (tb/) and image grids (visuals/) go to\n"
        "<checkpoints_dir>/<name>/; checkpoints (latest.pt, iter_<N>.pt, best.pt) to <ckpt_dir>/<name>/.\n"
        "--batch_size is the whole batch with DataParallel (--gpus N) and the batch of each process\n"
        "under torchrun.\n"
        "SIGTERM, SIGINT (Ctrl-C), SIGUSR1 or SIGHUP stop the run after the current iteration with\n"
        "latest.pt written (exit status 3); --continue_train resumes it exactly. One training at a time\n"
        "per <ckpt_dir>/<name>/.")
    examples = (
        "examples:\n"
        "  # the seed's command (3 GPUs, DataParallel)\n"
        "  python train.py --gpus 3 --name Mamba-SRx8 --model Mamba --Gnorm bn --lr 0.0004 --beta1 0.9 \\\n"
        "      --scale_factor 8 --load_size 128 --dataroot data/celeba/train/HR --dataset_name celeba \\\n"
        "      --batch_size 32 --total_epochs 100 --visual_freq 100 --print_freq 10 --save_latest_freq 500\n"
        "  # resume that run exactly where latest.pt left it\n"
        "  python train.py ...same flags... --continue_train\n"
        "  # a job script that is requeued unchanged: resume the run if it has a latest.pt, else start it\n"
        "  python train.py ...same flags... --continue_train auto\n"
        "  # a short CPU smoke run\n"
        "  python train.py --gpus 0 --dataroot data/celeba/train/HR --batch_size 2 --max_iters 20\n"
        "  # DistributedDataParallel, 3 GPUs on one node (batch 11 per process)\n"
        "  torchrun --standalone --nproc_per_node 3 train.py --dataroot data/celeba/train/HR --batch_size 11")
    dataroot_help = "folder of HR training faces (searched recursively; a prepared folder's HR/ is used)"
    pretrain_help = ("initialise the network from these weights (fine-tuning; EMA weights if the file has them); "
                     "optimizer and schedule start fresh")

    def add_phase_options(self, parser):
        data = parser.add_argument_group("training data")
        data.add_argument("--dataset_name", choices=("celeba",), default="celeba",
                          help="celeba = HR folder, LR made on the fly (flip/scale augmentation, bicubic x1/8, x8)")
        data.add_argument("--batch_size", type=positive(int), default=32, help="images per iteration")
        data.add_argument("--skip_bad_images", action="store_true",
                          help="skip unreadable images with a warning instead of stopping")

        optim = parser.add_argument_group("optimisation")
        optim.add_argument("--lr", type=positive(float), default=4e-4, help="AdamW learning rate")
        optim.add_argument("--beta1", type=float, default=0.9, help="AdamW beta1")
        optim.add_argument("--beta2", type=float, default=0.99, help="AdamW beta2")
        optim.add_argument("--weight_decay", type=non_negative(float), default=0.02,
                           help="AdamW weight decay (not applied to the SSM's A_log and D)")
        optim.add_argument("--lr_milestones", type=positive(int), nargs="+", default=[20, 40, 60, 80],
                           help="epochs at which the learning rate is multiplied by --lr_gamma")
        optim.add_argument("--lr_gamma", type=positive(float), default=0.5, help="learning-rate decay factor")
        optim.add_argument("--total_epochs", type=positive(int), default=100, help="epochs to train")
        optim.add_argument("--max_iters", type=non_negative(int), default=0,
                           help="stop after this many iterations in total (0 = run all epochs); for short runs")
        optim.add_argument("--grad_clip", type=non_negative(float), default=0.0,
                           help="clip the gradient norm to this value (0 = off)")
        optim.add_argument("--amp", choices=AMP_MODES, default="none",
                           help="autocast mixed precision (fp16 adds a GradScaler and needs CUDA); "
                                "the selective scan and the FFT stay float32")
        optim.add_argument("--ema", type=non_negative(float), default=0.0,
                           help="decay of an exponential moving average of the weights, e.g. 0.999 "
                                "(0 = off); saved beside the raw weights and used for validation")
        optim.add_argument("--activation_checkpointing", action="store_true",
                           help="recompute each HybriMamba block's activations in the backward instead of "
                                "storing them: about half the memory for one more forward pass")
        optim.add_argument("--seed", type=int, default=0,
                           help="seed of initialisation, data order and augmentation")

        ckpt = parser.add_argument_group("checkpoints")
        ckpt.add_argument("--save_latest_freq", type=positive(int), default=500,
                          help="iterations between writes of <ckpt_dir>/<name>/latest.pt (also written at the end)")
        ckpt.add_argument("--save_iter_freq", type=positive(int), default=5000,
                          help="iterations between numbered snapshots iter_<N>.pt")
        ckpt.add_argument("--continue_train", nargs="?", const=True, default=False, type=resume_mode, metavar="auto",
                          help="resume exactly from <ckpt_dir>/<name>/latest.pt (weights, optimizer, schedule, "
                               "iteration, data order, RNG); '--continue_train auto' resumes when latest.pt "
                               "exists and starts a new run otherwise (job scripts that are requeued unchanged); "
                               "--lr and the other optimizer/schedule options typed on the command line replace "
                               "the checkpoint's")
        ckpt.add_argument("--overwrite", action="store_true",
                          help="start a new run although <ckpt_dir>/<name>/ holds checkpoints: the earlier run's "
                               "folders are renamed to <name>.replaced-<time> (never deleted)")

        log = parser.add_argument_group("logging and validation")
        log.add_argument("--print_freq", type=positive(int), default=10,
                         help="iterations between loss lines in the text log and TensorBoard")
        log.add_argument("--visual_freq", type=positive(int), default=100,
                         help="iterations between LR|SR|HR image grids (TensorBoard and visuals/*.png)")
        log.add_argument("--val_dataroot", default=None,
                         help="folder of HR validation faces (LR made without augmentation); "
                              "Y-channel PSNR/SSIM are logged and best.pt keeps the best PSNR")
        log.add_argument("--val_freq", type=positive(int), default=5000,
                         help="iterations between validations (and at the end)")

    def validate(self, opt):
        super().validate(opt)
        # Training sizes must fit the degradation and the network; test.py pads any size instead.
        if opt.load_size % opt.scale_factor:
            raise UserError(f"--load_size {opt.load_size} is not divisible by --scale_factor {opt.scale_factor}")
        if opt.load_size % 4:
            raise UserError(f"--load_size {opt.load_size} must be a multiple of 4 (the network halves it twice)")
        if opt.continue_train is True and opt.pretrain_model_path:
            raise UserError("--continue_train resumes from latest.pt and --pretrain_model_path starts "
                            "a new run from given weights; pass only one of them (or --continue_train auto: "
                            "the weights start a new run, latest.pt continues it)")
        latest = Path(opt.ckpt_dir) / opt.name / "latest.pt"
        if opt.continue_train is True and not latest.is_file():
            raise UserError(f"--continue_train: {latest} does not exist, so there is no run to resume; check "
                            f"--ckpt_dir and --name, or start without --continue_train (--continue_train auto "
                            f"resumes only when it exists)")
        if opt.continue_train and opt.overwrite:
            raise UserError("--continue_train resumes the earlier run and --overwrite moves it aside; pass only one")
        if not opt.ema < 1:
            raise UserError(f"--ema {opt.ema}: the decay must be in [0, 1), e.g. 0.999")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(opt, name) < 1:
                raise UserError(f"--{name} {getattr(opt, name)} must be in [0, 1)")
        opt.lr_milestones = sorted(opt.lr_milestones)
