"""Stage, the paper's "HybriMamba Blocks": ``depth`` HybriMamba blocks, each a HybriMamba mixer then a LEM,
both pre-LayerNorm and residual. (The paper calls the mixer "HybriMamba", the network's name; here it is
``HybriMambaMixer`` and "HybriMamba" is only the network.)"""
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from models.lem import LEM
from models.mamba_block import HybriMambaMixer
from models.recompute import recompute


class HybriMambaBlock(nn.Module):
    """x = x + HybriMambaMixer(LN(x)); x = x + LEM(LN(x)); (B, H, W, d) -> same.

    In training with ``fused`` (the default) the backward keeps only the LEM's input x and recomputes
    LN and LEM from it.
    """

    def __init__(self, dim, n_layers=2, mlp_ratio=2.0, **block_kwargs):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.mixer = HybriMambaMixer(dim, n_layers=n_layers, **block_kwargs)
        self.norm2 = nn.LayerNorm(dim)
        self.lem = LEM(dim, mlp_ratio=mlp_ratio)
        self.fused = True

    def forward(self, x):
        x = x + self.mixer(self.norm1(x))
        if self.fused and torch.is_grad_enabled():
            return x + recompute(self._enhance, x)
        return x + self._enhance(x)

    def _enhance(self, x):
        return self.lem(self.norm2(x))


class Stage(nn.Module):
    """``depth`` HybriMamba blocks at one resolution; (B, d, H, W) -> (B, d, H, W)."""

    def __init__(self, dim, depth=2, **block_kwargs):
        super().__init__()
        self.blocks = nn.Sequential(*(HybriMambaBlock(dim, **block_kwargs) for _ in range(depth)))
        self.activation_checkpointing = False

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        if self.activation_checkpointing and torch.is_grad_enabled():
            # Keep only each block's input; the backward recomputes the rest.
            for block in self.blocks:
                x = checkpoint(block, x, use_reentrant=False)
        else:
            x = self.blocks(x)
        return x.permute(0, 3, 1, 2)
