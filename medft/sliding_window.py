"""How many sliding windows one forward pass takes (``validation.sw_batch_size``, a bundle inferer's): the
configured number; when none is, 4 on CPU and, on a GPU, as many as a share of its free memory holds,
measured on the network."""
from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

log = logging.getLogger("medft")
CPU_WINDOWS = 4  # windows per forward pass when none is configured, off CUDA; and in an exported bundle's inferer
MEMORY_SHARE = 0.5  # of the free GPU memory, for the windows; the rest for the image-size tensors of the sliding
# window (the image, its summed output and weights) and the softmax after it
MAX_WINDOWS = 32  # the largest batch picked, whatever the memory


def sw_batch_size(configured: int | None, network: torch.nn.Module, window: Sequence[int], device: torch.device,
                  amp: bool) -> int:
    """``configured`` when it is given; else ``CPU_WINDOWS`` off CUDA, and on CUDA the windows (shape (channels,
    *roi_size)) that fit in ``MEMORY_SHARE`` of the free memory (``measured_windows``)."""
    if configured is not None:
        return configured
    if device.type != "cuda":
        return CPU_WINDOWS
    return measured_windows(network, window, device, amp)


def windows_per_batch(free_bytes: float, bytes_per_window: float, fixed_bytes: float, share: float = MEMORY_SHARE,
                      cap: int = MAX_WINDOWS) -> int:
    """The most windows, from 1 to ``cap``, whose forward pass (``fixed_bytes``, plus ``bytes_per_window`` for each)
    fits in ``share`` of ``free_bytes``."""
    if bytes_per_window <= 0:
        return cap
    fitting = int((free_bytes * share - fixed_bytes) // bytes_per_window)
    return max(1, min(cap, fitting))


def window_costs(peak_one: int, peak_two: int) -> tuple[int, int]:
    """(bytes per window, fixed bytes) of a forward pass, from its peak memory with one window and with two: the
    peak grows by the bytes of a window for each, above what any pass needs (workspaces). When it does not grow,
    the whole peak of one window counts for each."""
    growth = peak_two - peak_one
    if growth <= 0:
        return peak_one, 0
    return growth, max(peak_one - growth, 0)


class CudaMemory:
    """The CUDA allocator's counters of one device, which ``measured_windows`` reads (a test gives a stand-in)."""

    def __init__(self, device: torch.device):
        self.device = device

    def allocated(self) -> int:
        return torch.cuda.memory_allocated(self.device)

    def reset_peak(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int:
        return torch.cuda.max_memory_allocated(self.device)

    def free(self) -> int:
        """Memory free for tensors: what the driver has free and what PyTorch's allocator holds unused."""
        free, _ = torch.cuda.mem_get_info(self.device)
        return free + torch.cuda.memory_reserved(self.device) - self.allocated()


def measured_windows(network: torch.nn.Module, window: Sequence[int], device: torch.device, amp: bool,
                     memory: CudaMemory | None = None) -> int:
    """The windows per forward pass that fit in ``MEMORY_SHARE`` of the free memory of ``device`` (CUDA), from the
    peak memory of passes of one and two zero windows in eval mode, under no_grad and, with ``amp``, autocast."""
    memory = memory or CudaMemory(device)
    was_training = network.training
    network.eval()
    try:
        _forward_peak(network, window, device, amp, 1, memory)  # the first pass allocates what libraries keep
        per_window, fixed = window_costs(*(_forward_peak(network, window, device, amp, n, memory) for n in (1, 2)))
    finally:
        network.train(was_training)
    free = memory.free()
    windows = windows_per_batch(free, per_window, fixed)
    log.info("sliding window: %d windows per batch (from %.1f GB free on %s)", windows, free / 1e9, device)
    return windows


def _forward_peak(network: torch.nn.Module, window: Sequence[int], device: torch.device, amp: bool, windows: int,
                  memory: CudaMemory) -> int:
    """Bytes allocated at the peak of a forward pass of ``windows`` zero windows, above those before it."""
    before = memory.allocated()
    memory.reset_peak()
    with torch.no_grad(), torch.autocast(device.type, enabled=amp):
        network(torch.zeros(windows, *window, device=device))
    return memory.peak() - before
