"""The CPU threading helpers of ``mmpgm/ops/_threads.py``: how a batch is split, and that the
threaded runs return in order, keep the caller's grad mode, restore the thread count and raise
a worker's error."""

from __future__ import annotations

import threading

import pytest
import torch

from mmpgm.ops import _threads
from mmpgm.ops._threads import run_chunks, sequence_chunks

CPU = torch.device("cpu")


@pytest.fixture
def four_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(4)
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("num_sequences", [8, 9, 13, 64, 1000])
def test_sequence_chunks_cover_every_sequence_once(four_threads, num_sequences):
    chunks = sequence_chunks(num_sequences, 1 << 30, CPU)
    k = min(4, num_sequences // _threads.SPLIT_MIN_SEQUENCES)
    assert len(chunks) == k
    covered = [n for a, b in chunks for n in range(a, b)]
    assert covered == list(range(num_sequences))
    sizes = [b - a for a, b in chunks]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= _threads.SPLIT_MIN_SEQUENCES


def test_sequence_chunks_do_not_split_small_or_single_threaded_or_cuda(four_threads):
    big = 1 << 30
    assert sequence_chunks(64, _threads.SPLIT_MIN_WORK - 1, CPU) == [(0, 64)]
    assert sequence_chunks(2 * _threads.SPLIT_MIN_SEQUENCES - 1, big, CPU) == [(0, 7)]
    assert sequence_chunks(64, big, torch.device("cuda")) == [(0, 64)]
    torch.set_num_threads(1)
    assert sequence_chunks(64, big, CPU) == [(0, 64)]


def test_run_chunks_order_grad_mode_threads_and_errors(four_threads):
    seen = []
    together = threading.Barrier(3)  # passes only if the three calls run at the same time

    def fn(a, b):
        together.wait(timeout=30)
        seen.append((threading.get_ident(), torch.is_grad_enabled(), torch.get_num_threads()))
        return list(range(a, b))

    chunks = [(0, 2), (2, 5), (5, 6)]
    with torch.no_grad():
        assert run_chunks(fn, chunks) == [[0, 1], [2, 3, 4], [5]]
    assert len({s[0] for s in seen}) == 3  # three threads, concurrently (the barrier)
    assert all(not s[1] for s in seen)  # the caller's no_grad in every thread
    assert all(s[2] == 1 for s in seen)  # one intra-op thread while they run
    assert torch.get_num_threads() == 4  # restored
    seen.clear()
    run_chunks(fn, chunks)
    assert all(s[1] for s in seen)

    def bad(a, b):
        if a == 2:
            raise ValueError("chunk 2 failed")
        return a

    with pytest.raises(ValueError, match="chunk 2 failed"):
        run_chunks(bad, chunks)
    assert torch.get_num_threads() == 4
