"""Shared fixtures, and one clear error when the package is not installed in this Python."""

import importlib.util
import sys

import pytest

_REQUIRED = ("torch", "pyro", "arviz", "mmpgm")


def pytest_configure(config):
    """Refuse to collect in an interpreter without mmpgm and its dependencies: one line that
    says what to do, instead of an ImportError per test module."""
    missing = [name for name in _REQUIRED if importlib.util.find_spec(name) is None]
    if missing:
        raise pytest.UsageError(
            f"this Python ({sys.executable}) lacks {', '.join(missing)}: install the package "
            'first (pip install torch==2.13.0 -e ".[all]") and run the tests with that '
            "environment's interpreter (python -m pytest -q)"
        )
    # the suite is one long process running batched recursions: keep freed memory instead of
    # page-faulting it in again for every call (mmpgm/_malloc.py); test_malloc.py measures the
    # default in its own fresh processes
    from mmpgm import retain_freed_memory

    retain_freed_memory()


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
