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
