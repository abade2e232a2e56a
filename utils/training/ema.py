"""Exponential moving average (EMA) of a network's weights, kept beside the raw weights."""
import copy

import torch

from models.device import unwrap


class ModelEMA:
    """A frozen copy of the network whose floating-point parameters and buffers follow
    ``ema = decay * ema + (1 - decay) * current`` after every optimizer step.

    ``module`` is a ready-to-run network (same class as the trained one) for validation and
    visuals; ``state_dict()`` has the same keys as the network's, so a checkpoint's ``ema``
    entry loads into a plain HybriMamba.
    """

    def __init__(self, model, decay):
        self.decay = decay
        self.module = copy.deepcopy(unwrap(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model):
        current = unwrap(model).state_dict()
        for key, value in self.module.state_dict().items():
            if value.is_floating_point():
                value.lerp_(current[key].detach(), 1.0 - self.decay)
            else:
                value.copy_(current[key])

    def state_dict(self):
        return self.module.state_dict()

    def load_state_dict(self, state_dict):
        self.module.load_state_dict(state_dict)
