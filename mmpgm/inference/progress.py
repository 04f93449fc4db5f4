"""Progress bars of the training loops (:func:`mmpgm._progress.progress_bar`)."""

from .._progress import progress_bar

__all__ = ["progress_bar"]
