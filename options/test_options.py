"""Options of test.py: super-resolve a folder of faces and, given ground truth, score the results."""
from options.base_options import BaseOptions, positive
from utils.errors import UserError
from utils.y_conventions import DEFAULT_Y_CONVENTION, Y_CONVENTIONS, short_help


class TestOptions(BaseOptions):
    __test__ = False  # not a pytest test class despite its name
    phase = "test"
    prog = "test.py"
    description = (
        "Super-resolve a folder of LR faces with a trained HybriMamba and write one PNG per input\n"
        "(same file stem) to --save_as_dir. Each input is bicubic-resized to --load_size first.\n"
        "With --hr_dir, Y-channel PSNR/SSIM (and LPIPS with --lpips) against the ground truth are reported.")
    examples = (
        "examples:\n"
        "  # the seed's command\n"
        "  python test.py --gpus 1 --model Mamba --name Mamba-SRx8 --load_size 128 --dataset_name single \\\n"
        "      --dataroot data/Helen/LR --pretrain_model_path ./ckpt/Mamba-SRx8/latest.pt \\\n"
        "      --save_as_dir result/Mamba-helen\n"
        "  # CPU, with scores against the HR faces\n"
        "  python test.py --gpus 0 --dataroot data/celeba/test/LR --hr_dir data/celeba/test/HR \\\n"
        "      --pretrain_model_path ckpt/Mamba-SRx8/best.pt --save_as_dir result/celeba --lpips")
    dataroot_help = "folder of LR input faces (any size; 16x16 for the 8x protocol)"
    pretrain_help = "checkpoint or state_dict to test (EMA weights are used when present, see --no_ema)"
    load_size_help = ("side of the square network input/output (HR size): every input is resized to it; "
                      "default: the checkpoint's (the task it was trained for), else 128")
    scale_factor_help = "super-resolution factor (for the input-size notices); default: the checkpoint's, else 8"

    def add_phase_options(self, parser):
        data = parser.add_argument_group("test data")
        data.add_argument("--dataset_name", choices=("single", "paired"), default="single",
                          help="single = a folder of LR faces (the seed's value); paired is accepted for older "
                               "scripts and means the same as single: --hr_dir alone adds the scores")
        data.add_argument("--batch_size", type=positive(int), default=8, help="images per forward pass")
        data.add_argument("--skip_bad_images", action="store_true",
                          help="leave out unreadable inputs with a notice instead of stopping (every input is "
                               "checked before the first output is written)")

        run = parser.add_argument_group("inference and scoring")
        run.add_argument("--save_as_dir", default=None,
                         help="output folder for the SR PNGs (default: result/<name>)")
        run.add_argument("--overwrite", action="store_true",
                         help="replace files in --save_as_dir that test.py did not write there")
        run.add_argument("--no_ema", action="store_true",
                         help="use the raw weights of a checkpoint that also holds EMA weights")
        run.add_argument("--hr_dir", default=None,
                         help="ground-truth HR folder; images are paired with the outputs by file stem")
        run.add_argument("--y_convention", choices=Y_CONVENTIONS, default=DEFAULT_Y_CONVENTION,
                         help=short_help() + " (python psnr_ssim.py --help says more)")
        run.add_argument("--lpips", action="store_true", help="also report LPIPS (AlexNet) against --hr_dir")
        run.add_argument("--backbone_weights", default=None,
                         help="local ImageNet AlexNet weights for LPIPS (offline machines)")

    def validate(self, opt):
        super().validate(opt)
        if not opt.pretrain_model_path:
            raise UserError("--pretrain_model_path is required: the checkpoint to test, e.g. ckpt/Mamba-SRx8/latest.pt")
        if opt.dataset_name == "paired" and not opt.hr_dir:
            raise UserError("--dataset_name paired needs --hr_dir (the HR folder paired by file stem)")
        if opt.lpips and not opt.hr_dir:
            raise UserError("--lpips needs --hr_dir (the ground truth to compare with)")
        if opt.save_as_dir is None:
            opt.save_as_dir = f"result/{opt.name}"

    def notices(self, opt):
        lines = super().notices(opt)
        if opt.dataset_name == "paired":
            lines.append("--dataset_name paired does nothing beyond --hr_dir (the outputs are paired with it by "
                         "file stem); drop it")
        return lines
