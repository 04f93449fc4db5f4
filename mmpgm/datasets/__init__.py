"""Synthetic generators and bundled small datasets."""

from .synthetic import demo_hmm
from .unreliable import unreliable_stream_data

__all__ = ["demo_hmm", "unreliable_stream_data"]
