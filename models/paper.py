"""The paper's Table 1 (8x, Helen and CelebA test sets; docs/architecture.md §6), defined once for
param.py's comparison (models.complexity) and the results table (utils.evaluation.results_table).

Torch-free: the results table imports it without loading torch.
"""
from typing import NamedTuple, Optional


class PaperRow(NamedTuple):
    params: Optional[float]  # parameters, None where the paper prints '-'
    flops: Optional[float]   # the paper's 'FLOPs' column (most likely thop MACs, see models.complexity)
    scores: dict             # dataset ('helen', 'celeba') -> (PSNR, SSIM, LPIPS)


TABLE1 = {
    "Bicubic": PaperRow(None, None, {"helen": (24.07, 0.6824, 0.5271), "celeba": (24.10, 0.6605, 0.5267)}),
    "DIC": PaperRow(22.8e6, 35.5e9, {"helen": (26.58, 0.7837, 0.1994), "celeba": (27.33, 0.7896, 0.1950)}),
    "SPARNet": PaperRow(10.6e6, 7.1e9, {"helen": (27.64, 0.8173, 0.1937), "celeba": (27.83, 0.8067, 0.1874)}),
    "SwinIR": PaperRow(11.9e6, 3.8e9, {"helen": (27.52, 0.8168, 0.2125), "celeba": (27.75, 0.8066, 0.2068)}),
    "SFMNet": PaperRow(8.6e6, 30.6e9, {"helen": (27.32, 0.8056, 0.1915), "celeba": (27.54, 0.7964, 0.1868)}),
    "WFEN": PaperRow(6.8e6, 7.5e9, {"helen": (28.05, 0.8291, 0.1740), "celeba": (28.16, 0.8173, 0.1730)}),
    "MambaIR": PaperRow(20.4e6, 5.3e9, {"helen": (26.18, 0.7759, 0.2301), "celeba": (26.37, 0.7644, 0.2245)}),
    "HybriMamba": PaperRow(15.1e6, 19.7e9, {"helen": (28.33, 0.8375, 0.1621), "celeba": (28.43, 0.8250, 0.1638)}),
}
HYBRIMAMBA = TABLE1["HybriMamba"]


def size_text(params, flops):
    """('15.1M', '19.7G') as the paper prints a row's sizes; '-' for a figure it does not give."""
    return ("-" if params is None else f"{params / 1e6:.1f}M", "-" if flops is None else f"{flops / 1e9:.1f}G")
