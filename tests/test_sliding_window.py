"""Sliding windows per forward pass: the configured number, else 4 on CPU, else what the free GPU memory holds."""
import logging

import torch

from medft.sliding_window import CPU_WINDOWS, measured_windows, sw_batch_size, window_costs, windows_per_batch

GB = 10**9


def test_the_windows_are_those_that_fit_in_the_share_of_free_memory():
    # 40 GB free, half of it 20 GB: 2 GB fixed leaves 18 GB, 1.5 GB a window: 12 windows
    assert windows_per_batch(40 * GB, 1.5 * GB, 2 * GB, share=0.5, cap=32) == 12
    assert windows_per_batch(40 * GB, 1.5 * GB, 0, share=0.5, cap=32) == 13  # 20 / 1.5 = 13.3
    assert windows_per_batch(80 * GB, 0.1 * GB, 0, share=0.5, cap=32) == 32, "capped"
    assert windows_per_batch(4 * GB, 3 * GB, 1 * GB, share=0.5, cap=32) == 1, "one window even when it does not fit"
    assert windows_per_batch(4 * GB, 1 * GB, 3 * GB, share=0.5, cap=32) == 1, "the fixed bytes alone exceed the share"
    assert windows_per_batch(4 * GB, 0, 0, share=0.5, cap=32) == 32, "windows that cost nothing"


def test_the_cost_of_a_window_is_what_a_second_one_adds():
    assert window_costs(peak_one=700, peak_two=1200) == (500, 200)  # peak = 200 + windows x 500
    assert window_costs(peak_one=500, peak_two=1100) == (600, 0), "a second window costing more than the first: no fixed part"
    assert window_costs(peak_one=500, peak_two=500) == (500, 0), "no growth: each window counts the whole peak"


def test_a_configured_value_is_kept_and_the_default_on_cpu_measures_nothing():
    class Untouchable(torch.nn.Module):
        def forward(self, x):
            raise AssertionError("no forward pass on CPU")

    cpu = torch.device("cpu")
    assert sw_batch_size(None, Untouchable(), [1, 32, 32, 32], cpu, amp=False) == CPU_WINDOWS == 4
    assert sw_batch_size(7, Untouchable(), [1, 32, 32, 32], cpu, amp=False) == 7
    assert sw_batch_size(7, Untouchable(), [1, 32, 32, 32], torch.device("cuda"), amp=True) == 7, "kept on CUDA too"


class _ModelledMemory:
    """A GPU's counters as a model: a forward pass peaks at 1 GB + 2 GB per window above 3 GB held, 40 GB free."""

    def __init__(self):
        self.held, self.peak_bytes, self.passes = 3 * GB, 3 * GB, []

    def allocated(self):
        return self.held

    def reset_peak(self):
        self.peak_bytes = self.held

    def peak(self):
        return self.peak_bytes

    def free(self):
        return 40 * GB

    def forward(self, module, inputs):  # a forward pre-hook: the pass of len(inputs[0]) windows
        assert not module.training and not torch.is_grad_enabled()
        self.passes.append(len(inputs[0]))
        self.peak_bytes = self.held + 1 * GB + 2 * GB * len(inputs[0])


def test_the_windows_measured_on_the_network_fit_half_the_free_memory(caplog):
    network = torch.nn.Conv3d(1, 2, 3).train()
    memory = _ModelledMemory()
    network.register_forward_pre_hook(memory.forward)
    with caplog.at_level(logging.INFO, logger="medft"):
        windows = measured_windows(network, [1, 8, 8, 8], torch.device("cpu"), amp=False, memory=memory)
    assert memory.passes == [1, 1, 2]  # a warm-up pass, then one and two windows
    assert windows == 9  # (40 / 2 - 1) GB / 2 GB a window
    assert network.training, "the network's mode is given back"
    assert "sliding window: 9 windows per batch (from 40.0 GB free on cpu)" in caplog.text
