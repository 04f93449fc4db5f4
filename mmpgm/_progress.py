"""Progress bars that switch themselves off when nobody is watching (tqdm), one helper for
every layer (training loops in :mod:`mmpgm.inference`, the fine-tuning loop of
:mod:`mmpgm.models.denoising`).

A shown bar is ``tqdm.auto``'s (a widget in a notebook with ipywidgets, which the ``docs`` extra
brings through ``jupyter``); a hidden one is a disabled plain bar.
"""

from __future__ import annotations

import sys


def progress_bar(total: int, desc: str, enabled: bool | None):
    """A tqdm bar of ``total`` steps; ``enabled=None`` shows it only when stderr is a terminal.

    Shown: ``tqdm.auto`` (a widget in notebooks, text elsewhere); hidden: a disabled plain bar
    with the same methods (``update``, ``set_postfix``, ``close``)."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        from tqdm.std import tqdm as plain

        return plain(total=total, desc=desc, disable=True)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
