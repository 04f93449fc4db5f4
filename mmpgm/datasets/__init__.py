"""Synthetic generators and bundled small datasets."""

from .synthetic import demo_hmm

__all__ = ["demo_hmm"]
