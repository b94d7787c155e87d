"""Sliding windows per forward pass: the configured number, else 4 on CPU, else what the free GPU memory holds."""
import torch

from medft.sliding_window import CPU_WINDOWS, sw_batch_size, window_costs, windows_per_batch

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
