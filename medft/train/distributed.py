"""Data-parallel training under ``torchrun``: one process per GPU (or several on CPUs), on one
machine or several. Every function here is a no-op (or returns its input) in a single process,
so the recipe runs the same code either way.

torchrun starts the processes and gives each one, in its environment (``torch.distributed.run``):
``WORLD_SIZE`` (processes in all), ``RANK`` (this process, 0 .. WORLD_SIZE - 1), ``LOCAL_RANK``
(this process on its machine, which picks its GPU), ``MASTER_ADDR`` and ``MASTER_PORT`` (where
the processes meet). A run is distributed when WORLD_SIZE is above 1; ``torchrun
--nproc_per_node 1`` is an ordinary single-process run.

The process group uses NCCL when the run trains on CUDA and gloo on CPUs. When the caller has
already joined a process group, the recipe uses it and leaves it open at the end.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn

from medft.errors import MedftError

_state = {"owned": False, "device": torch.device("cpu")}


def world_size() -> int:
    return _environ_int("WORLD_SIZE", "1")


def rank() -> int:
    return _environ_int("RANK", "0") if is_distributed() else 0


def local_rank() -> int:
    return _environ_int("LOCAL_RANK", "0") if is_distributed() else 0


def _environ_int(name: str, default: str) -> int:
    value = os.environ.get(name, default)
    try:
        return int(value)
    except ValueError:
        raise MedftError(f"the environment variable {name} is {value!r}, not a whole number. Fix: launch with torchrun "
                         f"(torchrun --nproc_per_node N -m medft train ...), which sets it, or unset {name}") from None


def is_distributed() -> bool:
    """True in a process that torchrun started with other processes (WORLD_SIZE above 1)."""
    return world_size() > 1


def is_main() -> bool:
    """Rank 0, the process that writes the run folder (always true in a single process)."""
    return rank() == 0


def init(device: torch.device) -> torch.device:
    """Join the process group of this torchrun launch; returns the device of this process.

    CUDA: ``cuda:LOCAL_RANK`` and NCCL; CPU: gloo. A single process gets ``device`` back unchanged.
    """
    if not is_distributed():
        return device
    missing = [name for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise MedftError(
            f"WORLD_SIZE is {world_size()} but {', '.join(missing)} is not set. Fix: launch several processes with "
            "torchrun (torchrun --nproc_per_node N -m medft train ...), or unset WORLD_SIZE for one process"
        )
    if not (0 <= rank() < world_size() and 0 <= local_rank() < world_size()):  # else init would wait for rank 0 (30 min)
        raise MedftError(
            f"RANK is {rank()} and LOCAL_RANK {local_rank()}, but WORLD_SIZE is {world_size()}: both must be from 0 to "
            f"{world_size() - 1}. Fix: launch with torchrun (torchrun --nproc_per_node N -m medft train ...), which sets "
            "them, or unset WORLD_SIZE for one process"
        )
    if device.type == "cuda":
        if local_rank() >= torch.cuda.device_count():
            raise MedftError(
                f"process {rank()} has LOCAL_RANK {local_rank()} but this machine has {torch.cuda.device_count()} GPU(s). "
                "Fix: give torchrun --nproc_per_node at most the number of GPUs"
            )
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    _state["device"] = device
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
        _state["owned"] = True
    return device


def cleanup() -> None:
    """Leave the process group, when ``init`` joined it."""
    if _state["owned"] and dist.is_initialized():
        dist.destroy_process_group()
    _state["owned"] = False


def _active() -> bool:
    return is_distributed() and dist.is_available() and dist.is_initialized()


def _tensor(values) -> torch.Tensor:
    # NCCL reduces tensors on the GPU of the process, gloo on the CPU.
    return torch.as_tensor(values, dtype=torch.float64).to(_state["device"])


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """The sum over processes (float64, on the CPU); the input itself in a single process."""
    if not _active():
        return values
    tensor = _tensor(values).clone()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu()


def all_reduce_mean(value: float) -> float:
    """The mean of ``value`` over processes; ``value`` itself in a single process."""
    if not _active():
        return value
    return float(all_reduce_sum(torch.tensor([value], dtype=torch.float64))[0]) / dist.get_world_size()


def any_process(flag: bool) -> bool:
    """True on every process when ``flag`` is true on any (a Ctrl-C that reached some processes)."""
    if not _active():
        return bool(flag)
    return bool(all_reduce_sum(torch.tensor([float(bool(flag))], dtype=torch.float64))[0] > 0)


def broadcast_object(obj: object, src: int = 0) -> object:
    """Rank ``src``'s (picklable) object on every process."""
    if not _active():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src, device=_state["device"])
    return holder[0]


def broadcast_tensor(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Rank ``src``'s tensor on every process (same shape everywhere; float64, on the CPU)."""
    if not _active():
        return tensor
    moved = _tensor(tensor).clone()
    dist.broadcast(moved, src=src)
    return moved.cpu()


def all_gather_object(obj: object) -> list:
    """Every process's object, by rank; ``[obj]`` in a single process."""
    if not _active():
        return [obj]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier() -> None:
    if not _active():
        return
    device = _state["device"]
    dist.barrier(device_ids=[device.index]) if device.type == "cuda" else dist.barrier()


def unused_parameters(network: nn.Module, example: torch.Tensor) -> set[str]:
    """Names of the parameters that the training loss cannot reach (a network output the loss
    ignores). DistributedDataParallel must be told about them (``find_unused_parameters``), which
    costs a graph traversal per step, so medft asks only when there are some.

    One train-mode forward pass of ``example``; the mode and the buffers (normalisation
    statistics) are restored afterwards and no ``.grad`` is touched.
    """
    named = [(name, p) for name, p in network.named_parameters() if p.requires_grad]
    if not named:
        return set()
    buffers = {name: b.detach().clone() for name, b in network.named_buffers()}
    was_training = network.training
    network.train()
    try:
        output = network(example)
        if isinstance(output, (list, tuple)):  # as the loss: the first output only
            output = output[0]
        grads = torch.autograd.grad(output.float().sum(), [p for _, p in named], allow_unused=True)
    finally:
        network.train(was_training)
        with torch.no_grad():
            for name, buffer in network.named_buffers():
                buffer.copy_(buffers[name])
    return {name for (name, _), grad in zip(named, grads, strict=True) if grad is None}


def wrap(network: nn.Module, device: torch.device, unused: Sequence[str] = ()) -> nn.Module:
    """``network`` in DistributedDataParallel (``network`` itself in a single process).

    DDP registers the parameters that require a gradient when it is built, so build a new wrapper
    whenever the set of frozen parameters changes: one that was built before an unfreezing would
    never average the gradients of the unfrozen parameters, and one built before a freezing would
    wait for gradients that never come. Building it copies rank 0's parameters and buffers to
    every process.
    """
    if not _active():
        return network
    trainable = {name for name, p in network.named_parameters() if p.requires_grad}
    return nn.parallel.DistributedDataParallel(
        network,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=bool(trainable & set(unused)),
    )


def unwrap(wrapper: nn.Module | None) -> None:
    """Detach a DistributedDataParallel wrapper from its parameters before a new one is built."""
    if isinstance(wrapper, nn.parallel.DistributedDataParallel) and hasattr(wrapper, "_remove_autograd_hooks"):
        wrapper._remove_autograd_hooks()
