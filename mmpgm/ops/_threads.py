"""Run small sequential recursions single-threaded on the CPU.

A time loop of small tensor ops gains nothing from intra-op threads, and on a busy machine a
descheduled OpenMP worker can stall every step (seen here: 5 us matrix products taking 10-25 ms
each under load). Above a per-step size threads pay off again, so the switch is by size.
"""

from __future__ import annotations

import contextlib

import torch

SINGLE_THREAD_MAX_NUMEL = 1 << 16


@contextlib.contextmanager
def cpu_single_thread(device: torch.device, step_numel: int):
    """Within the block, use one intra-op thread if on CPU and ``step_numel`` is small."""
    if device.type != "cpu" or step_numel > SINGLE_THREAD_MAX_NUMEL or torch.get_num_threads() == 1:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)
