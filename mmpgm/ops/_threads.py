"""CPU threading of the sequential recursions: one intra-op thread for small steps, and the
sequences of a batch split over threads for recursions that run per sequence.

A time loop of small tensor ops gains nothing from intra-op threads, and on a busy machine a
descheduled OpenMP worker can stall every step (seen here: 5 us matrix products taking 10-25 ms
each under load). Above a per-step size threads pay off again, so the switch is by size
(:func:`cpu_single_thread`).

A recursion whose every sequence carries its own covariances (the information filter with masks
that differ between sequences) is instead split by sequences: each of up to
``torch.get_num_threads()`` Python threads runs the whole loop on its share of the batch with one
intra-op thread (:func:`sequence_chunks`, :func:`run_chunks`). PyTorch releases the GIL inside
every op, so the threads' loops run concurrently, and a descheduled thread delays only its own
share, never every step. Nothing in torch does this (its intra-op pool parallelises one op, and
``torch.jit.fork`` runs inline in eager mode), hence this small helper.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Optional, Sequence

import torch

__all__ = [
    "SINGLE_THREAD_MAX_NUMEL",
    "SPLIT_MIN_WORK",
    "SPLIT_MIN_SEQUENCES",
    "cpu_single_thread",
    "sequence_chunks",
    "run_chunks",
]

SINGLE_THREAD_MAX_NUMEL = 1 << 16

SPLIT_MIN_WORK = 1 << 18
"""Smallest total work ``N T S^2`` for which :func:`sequence_chunks` splits a batch (below it a
call takes well under a millisecond a thread and the thread start-up would dominate)."""

SPLIT_MIN_SEQUENCES = 4
"""Fewest sequences a thread gets from :func:`sequence_chunks`."""


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


def sequence_chunks(
    num_sequences: int, work: int, device: torch.device, min_work: Optional[int] = None
) -> list:
    """``(start, stop)`` ranges that split ``num_sequences`` over the CPU's threads.

    One range ``[(0, num_sequences)]`` (no split) off the CPU, with one intra-op thread
    (``torch.get_num_threads() == 1``: the user's or the environment's choice), for total
    ``work`` below ``min_work`` (default :data:`SPLIT_MIN_WORK`), or with fewer than
    ``2 * SPLIT_MIN_SEQUENCES``
    sequences; otherwise ``min(torch.get_num_threads(), num_sequences // SPLIT_MIN_SEQUENCES)``
    ranges of near-equal size, in order.
    """
    num_threads = torch.get_num_threads()
    min_work = SPLIT_MIN_WORK if min_work is None else min_work
    if device.type != "cpu" or num_threads < 2 or work < min_work:
        return [(0, num_sequences)]
    k = min(num_threads, num_sequences // SPLIT_MIN_SEQUENCES)
    if k < 2:
        return [(0, num_sequences)]
    bounds = [round(i * num_sequences / k) for i in range(k + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def run_chunks(fn: Callable, chunks: Sequence) -> list:
    """``[fn(start, stop) for (start, stop) in chunks]``, the calls run concurrently in threads.

    The first chunk runs in the calling thread. While they run, torch uses one intra-op thread
    (restored afterwards); each thread runs with the caller's grad mode (grad mode is
    thread-local in torch). An exception in any call is raised here after all have finished.
    """
    if len(chunks) == 1:
        return [fn(*chunks[0])]
    grad = torch.is_grad_enabled()
    results: list = [None] * len(chunks)
    errors: list = [None] * len(chunks)

    def work(i: int) -> None:
        try:
            with torch.set_grad_enabled(grad):
                results[i] = fn(*chunks[i])
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller below
            errors[i] = exc

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(1, len(chunks))]
        for t in threads:
            t.start()
        work(0)
        for t in threads:
            t.join()
    finally:
        torch.set_num_threads(old)
    for exc in errors:
        if exc is not None:
            raise exc
    return results
