"""Training's device plan and multi-device wrapping: CPU, one GPU, DataParallel, or DDP under torchrun.

- Not under torchrun: ``--gpus N`` with CUDA -> the first N visible GPUs (DataParallel when
  N > 1; choose them with CUDA_VISIBLE_DEVICES); ``--gpus 0`` or no CUDA -> CPU.
- Under torchrun (WORLD_SIZE > 1): one process per device, DistributedDataParallel, NCCL on
  CUDA (GPU = LOCAL_RANK) and gloo on CPU (``--gpus 0`` or no CUDA).
"""
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from utils.errors import UserError


@dataclass
class DevicePlan:
    """Where this process trains and how the network is wrapped."""
    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str = None                     # process-group backend under torchrun, else None
    data_parallel_ids: list = None          # GPU ids for nn.DataParallel, else None
    notices: list = field(default_factory=list)

    @property
    def distributed(self):
        return self.world_size > 1

    @property
    def is_main(self):
        return self.rank == 0

    def describe(self):
        if self.distributed:
            return (f"DistributedDataParallel, {self.world_size} processes ({self.backend}), "
                    f"this is rank {self.rank} on {self.device}")
        if self.data_parallel_ids:
            return f"DataParallel over cuda:{self.data_parallel_ids}"
        return f"single device {self.device}"


def plan_devices(gpus, env=None, cuda_available=None, device_count=None):
    """The DevicePlan for ``--gpus`` given the environment (torchrun variables) and the CUDA state."""
    env = os.environ if env is None else env
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if device_count is None:
        device_count = torch.cuda.device_count() if cuda_available else 0
    use_cuda = gpus > 0 and cuda_available
    notices = []
    if gpus > 0 and not cuda_available:
        notices.append(f"--gpus {gpus} but CUDA is not available: training on the CPU")
    world_size = int(env.get("WORLD_SIZE", "1"))
    if world_size > 1:
        rank, local_rank = int(env["RANK"]), int(env.get("LOCAL_RANK", env["RANK"]))
        if use_cuda:
            if local_rank >= device_count:
                raise UserError(f"torchrun started local rank {local_rank} but only {device_count} GPU(s) are "
                                f"visible; use --nproc_per_node {device_count} or fewer")
            if gpus > 1 and rank == 0:
                notices.append(f"--gpus {gpus} ignored under torchrun: each process uses one GPU")
            return DevicePlan(torch.device("cuda", local_rank), rank, local_rank, world_size, "nccl",
                              notices=notices)
        return DevicePlan(torch.device("cpu"), rank, local_rank, world_size, "gloo", notices=notices)
    if not use_cuda:
        return DevicePlan(torch.device("cpu"), notices=notices)
    if gpus > device_count:
        raise UserError(f"--gpus {gpus} but only {device_count} GPU(s) are visible "
                        f"(CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', 'unset')}); lower --gpus")
    ids = list(range(gpus)) if gpus > 1 else None
    return DevicePlan(torch.device("cuda", 0), data_parallel_ids=ids, notices=notices)


def init_process_group(plan):
    """Join the torchrun process group (no-op for a single process)."""
    if not plan.distributed or dist.is_initialized():
        return
    if plan.device.type == "cuda":
        torch.cuda.set_device(plan.device)
    dist.init_process_group(backend=plan.backend, rank=plan.rank, world_size=plan.world_size)


def destroy_process_group(plan):
    if plan.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model, plan):
    """Move ``model`` to the plan's device and wrap it in DataParallel or DDP as planned."""
    model = model.to(plan.device)
    if plan.distributed:
        ids = [plan.device.index] if plan.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if plan.data_parallel_ids:
        return nn.DataParallel(model, device_ids=plan.data_parallel_ids)
    return model


def barrier(plan):
    if plan.distributed:
        dist.barrier()


def all_gather_objects(obj, plan):
    """The list of ``obj`` from every rank (a one-element list for a single process)."""
    if not plan.distributed:
        return [obj]
    gathered = [None] * plan.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj, plan):
    """Rank 0's ``obj`` on every rank."""
    if not plan.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
