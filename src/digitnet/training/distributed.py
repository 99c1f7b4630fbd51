"""torch.distributed glue: `torchrun --nproc_per_node N -m digitnet train …` just works.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; when WORLD_SIZE > 1
`init()` joins the process group (gloo on CPU, nccl on CUDA). Every rank builds the same model
from the same seed and walks the same global permutation, taking its own slice of each batch;
DistributedDataParallel averages the gradients. Only rank 0 prints and writes files.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def init(device_type: str = "cpu") -> bool:
    """Join the process group if launched by torchrun with more than one process."""
    if world_size() <= 1 or dist.is_initialized():
        return dist.is_initialized()
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP-wrap `model` when a process group is up; otherwise return it unchanged."""
    if not (dist.is_available() and dist.is_initialized()):
        return model
    if device.type == "cuda":
        return DistributedDataParallel(model, device_ids=[torch.cuda.current_device()])
    return DistributedDataParallel(model)


def broadcast_flag(flag: bool) -> bool:
    """Rank 0's `flag` on every rank (a decision one rank made for all); `flag` when not distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([int(flag)])
    dist.broadcast(t, src=0)
    return bool(t.item())


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
