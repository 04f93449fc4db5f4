"""Shared fixtures."""

import pytest


@pytest.fixture
def float64():
    """Run a test with float64 as torch's default dtype, restoring the previous default after
    (a module-level ``torch.set_default_dtype`` would leak into every later test module)."""
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture
def one_thread():
    """Run a test with one intra-op torch thread: tiny recurrent ops only gain contention from a
    second thread on a shared 2-core machine (measured 5-20x slower under load)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
