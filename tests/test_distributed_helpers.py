"""The process-group helpers, without torchrun: the identities a single process gets, the refusals made before
joining, and the collectives on two processes spawned here with gloo."""

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import free_port
from torch.nn.parallel import DistributedDataParallel

from minigpt import distributed
from minigpt.config import ConfigError


@pytest.fixture
def no_torchrun(monkeypatch) -> None:
    for variable in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(variable, raising=False)


@pytest.mark.usefixtures("no_torchrun")
def test_a_single_process_gets_identities_and_joins_nothing():
    model = torch.nn.Linear(2, 2)
    tensor = torch.tensor([1.0, 2.0])
    assert distributed.launched_world_size() == 1
    assert distributed.setup(torch.device("cpu")) == torch.device("cpu") and not dist.is_initialized()
    assert (distributed.rank(), distributed.local_rank(), distributed.world_size()) == (0, 0, 1)
    assert distributed.is_main()
    assert distributed.all_reduce_sum(tensor) is tensor and tensor.tolist() == [1.0, 2.0]
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.gather_objects("x") == ["x"]
    assert distributed.wrap(model, torch.device("cpu")) is model
    with distributed.gradient_sync(model, enabled=False), distributed.local_main_first():
        distributed.barrier()
    distributed.teardown()


def test_the_launched_world_size_is_torchruns(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert distributed.launched_world_size() == 4


def test_a_group_on_an_unsupported_device_is_refused_before_joining(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="distributed training runs on CUDA .* or the CPU .*, not on mps"):
        distributed.setup(torch.device("mps"))
    assert not dist.is_initialized()


def two_process_worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    out = Path(out_dir)
    device = distributed.setup(torch.device("cpu"))
    try:
        results = {
            "rank": distributed.rank(),
            "is_main": distributed.is_main(),
            "world_size": distributed.world_size(),
            "sum": distributed.all_reduce_sum(torch.tensor([rank + 1.0])).item(),
            "broadcast": distributed.broadcast_object(f"from {rank}"),
            "gathered": distributed.gather_objects(rank * 10),
        }
        with distributed.local_main_first(), (out / "order.txt").open("a") as f:
            f.write(str(rank))
        results.update(data_parallel_gradients(rank, device))
        torch.save(results, out / f"rank{rank}.pt")
    finally:
        distributed.teardown()


def data_parallel_gradients(rank: int, device: torch.device) -> dict:
    """One DDP model's starting weights and gradients, unsynced and synced. The model is gone on return, as
    ``distributed.teardown`` requires."""
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.constant_(model.weight, float(rank))  # DDP starts every replica from rank 0's weights
    wrapped = distributed.wrap(model, device)
    results = {
        "ddp": isinstance(wrapped, DistributedDataParallel),
        "start_weight": model.weight.detach().tolist(),
    }
    x = torch.full((1, 2), rank + 1.0)
    with distributed.gradient_sync(wrapped, enabled=False):
        wrapped(x).sum().backward()
    results["local_grad"] = model.weight.grad.tolist()  # not reduced: this rank's input only
    model.weight.grad = None
    with distributed.gradient_sync(wrapped, enabled=True):
        wrapped(x).sum().backward()
    results["synced_grad"] = model.weight.grad.tolist()  # the mean over ranks
    return results


@pytest.mark.slow
def test_two_spawned_processes_share_sums_objects_and_gradients(tmp_path):
    mp.spawn(two_process_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    first, second = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert (first["rank"], second["rank"]) == (0, 1)
    assert first["is_main"] and not second["is_main"]
    assert first["world_size"] == second["world_size"] == 2
    assert first["sum"] == second["sum"] == 3.0
    assert first["broadcast"] == second["broadcast"] == "from 0"
    assert first["gathered"] == second["gathered"] == [0, 10]
    assert (tmp_path / "order.txt").read_text() == "01"  # the local main ran its body first
    assert first["ddp"] and second["ddp"]
    assert first["start_weight"] == second["start_weight"] == [[0.0, 0.0]]
    assert first["local_grad"] == [[1.0, 1.0]] and second["local_grad"] == [[2.0, 2.0]]
    assert first["synced_grad"] == second["synced_grad"] == [[1.5, 1.5]]
