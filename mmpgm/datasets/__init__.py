"""Synthetic generators and bundled small datasets."""

from .synthetic import demo_hmm
from .unreliable import gate_report, unreliable_stream_data

__all__ = ["demo_hmm", "gate_report", "unreliable_stream_data"]
