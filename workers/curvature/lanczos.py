"""The Lanczos process on a symmetric operator (Lanczos 1950; Golub and Van Loan, Matrix
Computations, 4th ed., sections 10.1-10.3), the engine of ``top_eigenvalues`` and
``spectral_density`` (../shared/design/curvature-spec.md, sections 1 and 2).

From a unit vector q_1 the recurrence

    beta_j q_(j+1) = A q_j - alpha_j q_j - beta_(j-1) q_(j-1),   alpha_j = q_j^T A q_j,

builds an orthonormal basis Q_m of the Krylov space span{q_1, A q_1, ..., A^(m-1) q_1}
in which A is the tridiagonal T_m = tridiag(beta, alpha, beta). With T_m = S diag(theta) S^T:

- the Ritz values theta_i approximate A's extreme eigenvalues first; by Kaniel-Paige-Saad
  the error of theta_max falls like exp(-4 m sqrt(gamma)), gamma = (lambda_1 - lambda_2) /
  (lambda_2 - lambda_min), where power iteration's falls like (lambda_2/lambda_1)^(2m) (the
  rate of ../shared/seeds/002, section 2.2, is printed inverted);
- each Ritz pair (theta_i, y_i = Q_m s_i) has the residual ||A y_i - theta_i y_i|| =
  beta_m |e_m^T s_i|, free from T_m; some eigenvalue of A lies within it of theta_i,
  and within r_i^2 / gap_i when the gap to the rest of the spectrum is known (Kato-Temple);
- the Gauss quadrature weights tau_i^2 = (e_1^T s_i)^2 make sum_i tau_i^2 f(theta_i) =
  q_1^T f(A) q_1 exact for every polynomial f of degree <= 2m - 1: stochastic Lanczos
  quadrature (../shared/seeds/004, eq. 10).

In floating point the basis loses orthogonality once a Ritz value converges, and copies
("ghosts") of it appear. ``reorthogonalize="full"`` (classical Gram-Schmidt twice against
the stored basis, "twice is enough") prevents them at m vectors of memory;
``"none"`` keeps three vectors, as 004's FASTLANCZOS, and ghosts split the weight of
one eigenvalue among copies, so quadrature moments survive but multiplicities do not.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

REORTHOGONALIZE = ("full", "none")


@dataclass(frozen=True)
class LanczosRun:
    """One Lanczos run of m steps (float64 tridiagonal, float64 Ritz pairs).

    ``alphas`` [m] and ``betas`` [m] (betas[j] couples q_(j+1) and q_(j+2); the last one
    is the residual scale beta_m), ``ritz_values`` [m] ascending, ``ritz_weights`` [m] =
    (e_1^T s_i)^2 (they sum to 1), ``residuals`` [m] = beta_m |e_m^T s_i|, ``matvecs``,
    ``basis`` [m, n] (rows q_1..q_m, kept only with full reorthogonalisation) and
    ``eigenvectors`` [m, m] (the s_i as columns)."""

    alphas: torch.Tensor
    betas: torch.Tensor
    ritz_values: torch.Tensor
    ritz_weights: torch.Tensor
    residuals: torch.Tensor
    matvecs: int
    basis: torch.Tensor | None
    eigenvectors: torch.Tensor

    @property
    def steps(self) -> int:
        return len(self.alphas)

    def ritz_vectors(self, index) -> torch.Tensor:
        """[len(index), n] the Ritz vectors y_i = Q_m s_i, in the basis' dtype."""
        if self.basis is None:
            raise ValueError("Ritz vectors need the basis: run lanczos with reorthogonalize='full'")
        s = self.eigenvectors[:, index].to(self.basis.dtype)
        return (self.basis.T @ s).T


def _check(steps, reorthogonalize, tol, k) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r}; it must be an integer >= 1")
    if reorthogonalize not in REORTHOGONALIZE:
        raise ValueError(f"reorthogonalize={reorthogonalize!r} is not one of {REORTHOGONALIZE}")
    if tol is not None and (isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0):
        raise ValueError(f"tol={tol!r}; it must be a number > 0, or None to run every step")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r}; it must be an integer >= 1")


def converged_ends(ritz_values: torch.Tensor, residuals: torch.Tensor, *, k: int, tol: float) -> torch.Tensor:
    """[2, k] whether each of the k largest (row 0, descending) and k smallest (row 1,
    ascending) Ritz values has residual <= tol * max|theta|: relative to the spectral norm,
    so an eigenvalue near zero (the smallest of a Hessian, often) is judged on the scale of
    the spectrum rather than never converging."""
    k = min(k, len(ritz_values))
    scale = ritz_values.abs().max()
    top, bottom = residuals.flip(0)[:k], residuals[:k]
    return torch.stack([top, bottom]) <= tol * scale


def lanczos(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    v0: torch.Tensor,
    *,
    steps: int,
    reorthogonalize: str = "full",
    tol: float | None = None,
    k: int = 1,
) -> LanczosRun:
    """Run at most ``steps`` Lanczos steps of the symmetric operator ``matvec`` (a 1-D
    tensor to one of the same shape) from ``v0``. With ``tol``, stop as soon as the ``k``
    largest and ``k`` smallest Ritz values have residuals <= tol * max|theta|. It also stops
    when the Krylov space is invariant to working precision (beta below 1e-10 of the
    operator's scale, 1.2e-6 in float32: the Ritz values are then eigenvalues of the operator
    as far as its products can tell, and the residuals zero). Vectors stay in ``v0``'s dtype
    and device; every inner product and the tridiagonal are float64.

    >>> a = torch.diag(torch.arange(1.0, 7.0, dtype=torch.float64))
    >>> run = lanczos(lambda v: a @ v, torch.ones(6, dtype=torch.float64), steps=6)
    >>> [round(t, 8) for t in run.ritz_values.tolist()], run.matvecs
    ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 6)
    >>> round(float((run.ritz_weights * run.ritz_values).sum()), 8)  # q1^T A q1 = mean of the diagonal
    3.5
    """
    _check(steps, reorthogonalize, tol, k)
    if not isinstance(v0, torch.Tensor) or v0.ndim != 1 or len(v0) == 0:
        raise ValueError(f"v0 must be a non-empty 1-D tensor, got {getattr(v0, 'shape', type(v0).__name__)}")
    norm = torch.linalg.vector_norm(v0.to(torch.float64))
    if not (math.isfinite(float(norm)) and float(norm) > 0):
        raise ValueError(f"v0 has norm {float(norm)}; it must be finite and nonzero")
    steps = min(steps, len(v0))  # a Krylov space has at most n dimensions
    q = v0 / norm.to(v0.dtype)
    # the basis is allocated once: stacking it anew at every step would copy m x n values per step
    basis = torch.empty((steps, len(v0)), dtype=v0.dtype, device=v0.device) if reorthogonalize == "full" else None
    alphas: list[float] = []
    betas: list[float] = []
    previous, beta = None, 0.0
    scale = 0.0
    # Breakdown: below 1e-10 of the operator's scale (10 eps in float32, where the products
    # themselves carry errors of eps ||A||) the next vector is rounding noise, which the
    # reorthogonalisation cannot make orthogonal again: its ghosts then grow without bound.
    # The tiny/eps floor keeps a division by beta inside the dtype's normal range.
    relative = max(1e-10, 10 * torch.finfo(v0.dtype).eps)
    smallest = torch.finfo(v0.dtype).tiny / torch.finfo(v0.dtype).eps
    for j in range(steps):
        if basis is not None:
            basis[j] = q
        w = matvec(q)
        if not isinstance(w, torch.Tensor) or w.shape != q.shape:
            raise ValueError(f"matvec returned {getattr(w, 'shape', type(w).__name__)}; it must return a tensor "
                             f"of shape {tuple(q.shape)}")
        if not bool(w.isfinite().all()):
            raise FloatingPointError(f"matvec returned non-finite values at Lanczos step {j + 1}")
        w = w.to(q.dtype)
        alpha = float(torch.dot(q.to(torch.float64), w.to(torch.float64)))
        w = w - alpha * q
        if previous is not None:
            w = w - beta * previous
        if basis is not None:
            kept = basis[: j + 1]
            for _ in range(2):  # "twice is enough" (Kahan; Parlett, section 6.9)
                w = w - kept.T @ (kept @ w)
        beta = float(torch.linalg.vector_norm(w.to(torch.float64)))
        alphas.append(alpha)
        betas.append(beta)
        scale = max(scale, abs(alpha) + beta + (betas[-2] if len(betas) > 1 else 0.0))
        invariant = beta <= max(relative * scale, smallest)
        if invariant or j + 1 == steps:
            break
        if tol is not None and j + 1 >= 2 * k:
            values, vectors = _tridiagonal_eig(alphas, betas)
            if bool(converged_ends(values, beta * vectors[-1].abs(), k=k, tol=tol).all()):
                break
        previous, q = q, w / beta
    values, vectors = _tridiagonal_eig(alphas, betas)
    last = 0.0 if invariant else betas[-1]
    return LanczosRun(
        alphas=torch.tensor(alphas, dtype=torch.float64),
        betas=torch.tensor(betas, dtype=torch.float64),
        ritz_values=values,
        ritz_weights=vectors[0] ** 2,
        residuals=last * vectors[-1].abs(),
        matvecs=len(alphas),
        basis=None if basis is None else basis[: len(alphas)],
        eigenvectors=vectors,
    )


def _tridiagonal_eig(alphas: list[float], betas: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending) and eigenvectors of T_m, in float64 on the CPU."""
    m = len(alphas)
    off = torch.tensor(betas[: m - 1], dtype=torch.float64)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64)) + torch.diag(off, 1) + torch.diag(off, -1)
    return torch.linalg.eigh(t)
