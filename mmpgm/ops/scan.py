r"""A generic associative (parallel-prefix) scan over tensors, torch only.

:func:`associative_scan` computes the inclusive scan
:math:`(e_0,\; e_0 \bullet e_1,\; e_0 \bullet e_1 \bullet e_2, \dots)` of an associative
combination :math:`\bullet` along one dimension, in :math:`O(\log T)` sequential depth and
:math:`O(T)` work, differentiably. :func:`affine_combine` is the most common combination: the
composition of row-vector affine maps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["associative_scan", "affine_combine"]


def associative_scan(fn: Callable[[tuple, tuple], tuple], elems: tuple, dim: int = 0) -> tuple:
    r"""Inclusive scan of an associative ``fn`` along ``dim`` (odd/even recursion).

    Parameters
    ----------
    fn : callable
        ``fn(a, b) -> c``: combines the earlier elements ``a`` with the later elements ``b``
        elementwise along ``dim``. ``a``, ``b`` and ``c`` are tuples shaped like ``elems``
        except along ``dim`` (``a`` and ``b`` have the same length there). ``fn`` must be
        associative: ``fn(fn(a, b), c) == fn(a, fn(b, c))``.
    elems : tuple of Tensor
        Tensors sharing the length ``T`` of dimension ``dim``; element ``t`` is
        ``tuple(x.select(dim, t) for x in elems)`` (kept with its ``dim`` of size 1).
    dim : int
        The scanned dimension (non-negative; the same for every tensor of ``elems``).

    Returns
    -------
    tuple of Tensor
        Shaped like ``elems``: entry ``t`` combines elements ``0..t``, in order.

    Notes
    -----
    Depth :math:`O(\log T)` calls of ``fn``, each over about half of the remaining elements;
    work :math:`O(T)`. With ``T < 2`` ``elems`` is returned unchanged.
    """
    n = elems[0].shape[dim]
    if n < 2:
        return elems

    def sl(xs, start, stop=None, step=None):
        index = (slice(None),) * dim + (slice(start, stop, step),)
        return tuple(x[index] for x in xs)

    reduced = fn(sl(elems, 0, -1, 2), sl(elems, 1, None, 2))
    odd = associative_scan(fn, reduced, dim)
    if n % 2 == 0:
        even = fn(sl(odd, 0, -1), sl(elems, 2, None, 2))
    else:
        even = fn(odd, sl(elems, 2, None, 2))
    even = tuple(torch.cat([e0, e], dim=dim) for e0, e in zip(sl(elems, 0, 1), even, strict=True))
    out = []
    for e, o in zip(even, odd, strict=True):
        if e.shape[dim] == o.shape[dim]:
            inter = torch.stack([e, o], dim=dim + 1).flatten(dim, dim + 1)
        else:  # one more even element than odd ones
            head = e.narrow(dim, 0, o.shape[dim])
            inter = torch.stack([head, o], dim=dim + 1).flatten(dim, dim + 1)
            inter = torch.cat([inter, e.narrow(dim, e.shape[dim] - 1, 1)], dim=dim)
        out.append(inter)
    return tuple(out)


def affine_combine(ea: tuple[Tensor, Tensor], eb: tuple[Tensor, Tensor]) -> tuple:
    r"""Compose row-vector affine maps :math:`x \mapsto x F + g`: ``ea`` first, then ``eb``.

    Parameters
    ----------
    ea, eb : tuple of Tensor
        ``(F, g)`` with ``F`` of shape ``(..., S, S)`` and ``g`` of shape ``(..., N, S)``
        (``N`` rows mapped at once).

    Returns
    -------
    tuple of Tensor
        ``(F_a F_b, g_a F_b + g_b)``: the map :math:`x \mapsto (x F_a + g_a) F_b + g_b`.
    """
    Fa, ga = ea
    Fb, gb = eb
    return Fa @ Fb, ga @ Fb + gb
