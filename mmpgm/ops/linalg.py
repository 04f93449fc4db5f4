"""Small batched linear-algebra helpers (torch only).

All functions operate on the trailing two dimensions and broadcast over any
leading batch dimensions.
"""

from __future__ import annotations

import torch

__all__ = [
    "symmetrize",
    "cholesky_checked",
    "tri_solve",
    "cholesky_inverse_apply",
    "log_det_from_cholesky",
]


def symmetrize(matrix: torch.Tensor) -> torch.Tensor:
    r"""Return :math:`\tfrac12 (X + X^\top)` over the last two dimensions."""
    return 0.5 * (matrix + matrix.mT)


def cholesky_checked(matrix: torch.Tensor, what: str = "matrix") -> torch.Tensor:
    """Lower Cholesky factor of a batch of SPD matrices.

    Raises
    ------
    ValueError
        If any matrix in the batch is not (numerically) positive definite;
        the message names ``what``.
    """
    factor, info = torch.linalg.cholesky_ex(matrix)
    if bool((info != 0).any()):
        raise ValueError(
            f"{what} must be symmetric positive definite; Cholesky failed for "
            f"{int((info != 0).sum())} of {info.numel()} matrices"
        )
    return factor


def tri_solve(lower: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    r"""Solve :math:`L X = B` for lower-triangular :math:`L`."""
    return torch.linalg.solve_triangular(lower, rhs, upper=False)


def cholesky_inverse_apply(lower: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    r"""Compute :math:`(L L^\top)^{-1} B` from the lower Cholesky factor :math:`L`."""
    return torch.cholesky_solve(rhs, lower, upper=False)


def log_det_from_cholesky(lower: torch.Tensor) -> torch.Tensor:
    r""":math:`\log\det(L L^\top) = 2 \sum_i \log L_{ii}`."""
    return 2.0 * lower.diagonal(dim1=-2, dim2=-1).log().sum(-1)
