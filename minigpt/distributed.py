"""Data-parallel processes as torchrun starts them: joining the group, who is who, and the few collectives
the training loop needs.

``torchrun`` starts one process per device and tells each, through environment variables, where it stands:
``RANK`` (0 .. ``WORLD_SIZE``-1 over all machines), ``LOCAL_RANK`` (its device on this machine) and
``MASTER_ADDR``/``MASTER_PORT`` (where the group meets). A process started any other way, or a group of one,
joins nothing, and every helper here then acts as the identity, so the loop reads the same either way.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.nn  # noqa: F401  (before any group exists: see teardown)
from torch.nn.parallel import DistributedDataParallel

from minigpt.config import check

# How long a collective may wait for the slowest process. Long enough for the first process on a machine to
# tokenize a large corpus (WikiText-103) while the others wait for it; NCCL's own default is 10 minutes.
TIMEOUT = timedelta(minutes=30)


def launched_world_size() -> int:
    """How many processes torchrun started (1 when it did not start this one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device: torch.device) -> torch.device:
    """Join torchrun's process group when there is more than one process, and return this process's device.

    The backend is NCCL for CUDA devices and gloo for the CPU. On CUDA each process takes the GPU of its local
    rank, whatever index ``device`` names.
    """
    if launched_world_size() == 1 or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    else:
        check(
            device.type == "cpu",
            "train.device",
            f"distributed training runs on CUDA (NCCL) or the CPU (gloo), not on {device.type}",
        )
    # With device_id, NCCL binds the group to this GPU at once instead of guessing at the first collective.
    dist.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo",
        device_id=device if device.type == "cuda" else None,
        timeout=TIMEOUT,
    )
    return device


def teardown() -> None:
    """Leave the process group (a no-op when there is none). Call it on success and on failure alike, once
    nothing refers to a model from ``wrap`` any more.

    Leaving the group must end it: its last reference, dropped here with the GIL released, joins gloo's worker
    threads while Python is alive. Two things held it past this point (torch 2.13). One is
    ``torch.distributed.nn.functional``, whose functions take ``group.WORLD`` as a default argument bound when
    the module is first imported; building a DDP model imports it (through ``torch._dynamo``), so imported
    after the group was made it would keep the group for the life of the process, and a worker thread still
    running at shutdown, releasing a finished collective, asks a finalizing interpreter for the GIL, is ended,
    and aborts the rank after its work is done ("terminate called without an active exception"). This module
    imports it first, when there is no group to bind. The other is a DDP model's reducer: dropped after this,
    it would release the group with the GIL held while a worker thread waits for the GIL (a deadlock), so the
    caller drops its models first, and the collection here catches one kept only by a reference cycle.
    """
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """True on the one process that logs, prints and writes files."""
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes, in place, and return it."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every process (for decisions only one process may make, like a timestamp)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order, on every process."""
    if not dist.is_initialized():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


@contextlib.contextmanager
def local_main_first() -> Iterator[None]:
    """Run the body on each machine's first process before the others (which then find its caches built)."""
    if local_rank() != 0:
        barrier()
    yield
    if local_rank() == 0:
        barrier()


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` in DistributedDataParallel when there is a process group, else ``model`` itself.

    DDP starts every replica from rank 0's weights and buffers and averages gradients over processes during
    backward. Buffers are not re-broadcast before each forward: the model's buffers are constants, and
    skipping it keeps forward passes free of collectives, so ranks may run different numbers of evaluation
    batches.
    """
    if not dist.is_initialized():
        return model
    return DistributedDataParallel(
        model, device_ids=[device] if device.type == "cuda" else None, forward_sync_buffers=False
    )


def gradient_sync(model: torch.nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
    """Around a forward and backward pass: reduce gradients over processes only if ``enabled``.

    Accumulating micro-batches syncs on the last one only; the earlier ones add to local gradients.
    """
    if enabled or not isinstance(model, DistributedDataParallel):
        return contextlib.nullcontext()
    return model.no_sync()
