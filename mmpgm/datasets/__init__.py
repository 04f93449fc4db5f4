"""Synthetic generators and bundled small datasets."""

from .imu import corrupt, imu_activity_data
from .synthetic import demo_hmm
from .unreliable import unreliable_stream_data

__all__ = ["corrupt", "demo_hmm", "imu_activity_data", "unreliable_stream_data"]
