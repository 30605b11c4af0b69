r"""Friedman's supersmoother and Breiman-Friedman ACE, batched over independent problems.

Alternating Conditional Expectations (Breiman & Friedman 1985) finds transforms
:math:`\theta(y)` and :math:`\phi_j(x_j)` that maximize the correlation between
:math:`\theta(y)` and :math:`\sum_j \phi_j(x_j)` by alternating

.. math::

    \phi_j(x_j) \leftarrow E\Big[\theta(y) - \sum_{i \ne j} \phi_i(x_i) \,\Big|\, x_j\Big],
    \qquad
    \theta(y) \leftarrow
    \frac{E[\sum_j \phi_j(x_j) \mid y]}{\lVert E[\sum_j \phi_j(x_j) \mid y]\rVert},

with each conditional expectation estimated by Friedman's (1984) supersmoother: running local
linear fits with spans 0.05, 0.2 and 0.5 of the data, the span at each point chosen by smoothed
cross-validated residuals, then smoothed once more with the tweeter span.

This module reproduces the PyPI package ``ace`` (``ace.ace.ACESolver``, a port of Friedman's
``mace.f`` and ``supsmu.f``) operation for operation, including its iteration control,
its tie handling and its safeguards, but solves a whole batch of problems at once: window
sums come from cumulative sums, every per-point loop is a tensor operation, and problems that
have converged leave the batch. The only loops left are over iterations and over the (few)
predictors, whose updates are sequential by definition (Gauss-Seidel).

References:
    L. Breiman and J. H. Friedman, "Estimating optimal transformations for multiple regression
    and correlation", JASA 80 (1985). J. H. Friedman, "A variable span smoother",
    Stanford LCS Technical Report 5 (1984).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch

from xai_feedback._checks import check_finite, check_floating, check_int, check_number, check_shape
from xai_feedback.errors import DTypeError, RangeError, ShapeError

__all__ = [
    "MIN_OBSERVATIONS",
    "SPANS",
    "ACEResult",
    "ace",
    "fixed_span_smooth",
    "supersmooth",
]

SPANS = (0.05, 0.2, 0.5)
"""Tweeter, midrange and bass spans of the supersmoother (fractions of the data)."""
_TWEETER, _MID, _BASS = SPANS
_VARIANCE_EPS = 1.0e-3
_LEVERAGE_TOL = 1.0e-9
_TIE_TOL = 1.0e-12
MIN_OBSERVATIONS = 5
"""Fewest observations a smoother accepts: its smallest window, two neighbors on each side."""


def _half_widths(n: int, spans: tuple[float, ...]) -> list[int]:
    return [max(int(0.5 * span * n + 0.5), 2) for span in spans]


def _variance_threshold(x: torch.Tensor) -> torch.Tensor:
    """``(eps * spread)^2`` with the interquartile spread of sorted ``x``, widened while zero.

    Shape: x ``(P, n)`` sorted along the last axis -> ``(P, 1)``.
    """
    n = x.shape[-1]
    lower = max(n // 4, 1)
    upper = 3 * lower
    steps = torch.arange(max(n - upper, lower - 1) + 1, device=x.device)
    up = torch.clamp(upper + steps, max=n) - 1
    low = torch.clamp(lower - steps, min=1) - 1
    spread = x[:, up] - x[:, low]  # (P, T): non-decreasing in the step
    positive = spread > 0
    first = torch.where(
        positive.any(dim=1), positive.to(torch.uint8).argmax(dim=1), steps[-1]
    ).unsqueeze(1)
    return (_VARIANCE_EPS * spread.gather(1, first)) ** 2


def _window_sums(values: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """Sum of ``values[..., lower_i : upper_i]`` for every point ``i`` (cumulative sums)."""
    prefix = torch.nn.functional.pad(values.cumsum(dim=-1), (1, 0))
    return prefix.gather(-1, upper) - prefix.gather(-1, lower)


class _Plan:
    """Everything the running-lines smooths of any ``y`` on one sorted ``x`` share.

    The window bounds, the window means and variances of ``x``, the slopes' denominators,
    the leverages and the tie runs depend on ``x`` alone; ACE smooths many ``y`` against the
    same ``x``, so they are computed once. Tensors are ``(S, P, n)`` for the ``S`` half-widths.
    """

    def __init__(self, x: torch.Tensor, half: list[int]) -> None:
        n = x.shape[-1]
        device = x.device
        self.half = half
        half_t = torch.tensor(half, device=device).view(-1, 1, 1)
        width = torch.clamp(2 * half_t + 1, max=n)
        index = torch.arange(n, device=device)
        lower = torch.minimum(torch.clamp(index - half_t, min=0), n - width)  # (S, 1, n)
        shape = (len(half), x.shape[0], n)
        self.lower = lower.expand(shape)
        self.upper = (lower + width).expand(shape)
        self.width = width.to(x.dtype)
        self.x = x
        # center each problem so that the window sums do not cancel catastrophically
        self.cx = x - x.mean(dim=-1, keepdim=True)
        self.sx = _window_sums(self.cx.expand(shape), self.lower, self.upper)
        mean_x = self.sx / self.width
        var = _window_sums((self.cx * self.cx).expand(shape), self.lower, self.upper)
        var = var - self.sx * mean_x
        sloped = var > _variance_threshold(x)
        self.inv_var = torch.where(sloped, 1.0 / torch.where(sloped, var, 1.0), 0.0)
        self.dx = self.cx - mean_x
        denom = 1.0 - (1.0 / self.width + self.dx * self.dx * self.inv_var)
        # a leverage of exactly 1 (all but one point of the window tied) must not hinge on
        # the rounding sign of 1 - h: within _LEVERAGE_TOL of 1 counts as 1
        valid = denom > _LEVERAGE_TOL
        self.inv_denom = torch.where(valid, 1.0 / torch.where(valid, denom, 1.0), 0.0)
        # where the leverage is 1 or more, supsmu reuses the previous residual (0 at the start)
        self.fill: torch.Tensor | None = None
        if not bool(valid.all()):
            self.fill = torch.where(valid, index, -1).cummax(dim=-1).values
        # runs of tied x share the mean of their smooths
        self.runs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        tied = x[:, 1:] <= x[:, :-1]
        if bool(tied.any()):
            starts = torch.nn.functional.pad(~tied, (1, 0), value=True)
            ends = torch.nn.functional.pad(~tied, (0, 1), value=True)
            first = torch.where(starts, index, 0).cummax(dim=-1).values
            last = torch.where(ends, index, n).flip(-1).cummin(dim=-1).values.flip(-1)
            self.runs = (first, last + 1, last > first)
        self.constant = ~(x[:, -1:] > x[:, :1])

    def select(self, rows: torch.Tensor) -> _Plan:
        """The plan of a subset of the problems."""
        if rows.numel() == self.x.shape[0]:  # rows are always increasing: all of them
            return self
        plan = _Plan.__new__(_Plan)
        plan.__dict__.update(self.__dict__)
        for name in ("lower", "upper", "sx", "inv_var", "dx", "inv_denom"):
            setattr(plan, name, getattr(self, name)[:, rows])
        plan.x, plan.cx, plan.constant = self.x[rows], self.cx[rows], self.constant[rows]
        if self.fill is not None:
            plan.fill = self.fill[:, rows]
        if self.runs is not None:
            plan.runs = (self.runs[0][rows], self.runs[1][rows], self.runs[2][rows])
        return plan

    def smooth(
        self, y: torch.Tensor, spans: list[int], residuals: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Smooths of ``y`` (``(P, n)`` or ``(len(spans), P, n)``) with the listed half-widths.

        Returns the smooths and, if asked, the absolute cross-validated residuals, ``(S, P, n)``.
        """
        pick = [self.half.index(h) for h in spans]
        sel: slice | list[int] = pick
        if len(set(pick)) == 1:
            sel = slice(pick[0], pick[0] + 1)
        elif pick == list(range(len(self.half))):
            sel = slice(None)
        lower, upper, width = self.lower[sel], self.upper[sel], self.width[sel]
        shape = (len(spans), *self.x.shape)
        if len(set(pick)) == 1 and len(spans) > 1:
            lower, upper = lower.expand(shape), upper.expand(shape)
        y = y.expand(shape)
        shift = y.mean(dim=-1, keepdim=True)
        cy = y - shift
        mean_y = _window_sums(cy, lower, upper) / width
        cov = _window_sums(self.cx * cy, lower, upper) - self.sx[sel] * mean_y
        smooth = cov * self.inv_var[sel] * self.dx[sel] + mean_y + shift
        residual = None
        if residuals:
            residual = ((y - smooth) * self.inv_denom[sel]).abs()
            if self.fill is not None:
                fill = self.fill[sel].expand(shape)
                residual = torch.where(fill >= 0, residual.gather(-1, fill.clamp(min=0)), 0.0)
        if self.runs is not None:
            first, stop, tied = self.runs
            prefix = torch.nn.functional.pad(smooth.cumsum(dim=-1), (1, 0))
            sums = prefix.gather(-1, stop.expand(shape)) - prefix.gather(-1, first.expand(shape))
            smooth = torch.where(tied, sums / (stop - first).to(smooth.dtype), smooth)
        return smooth, residual


def fixed_span_smooth(x: torch.Tensor, y: torch.Tensor, span: float) -> torch.Tensor:
    r"""Friedman's running-lines smoother with a fixed span, on sorted ``x``.

    Each point gets the least-squares line through the :math:`2J+1` observations around it
    (:math:`J = \max(\lfloor span \cdot n / 2 + 1/2 \rfloor, 2)`, the window clipped at the
    ends); a slope is fitted only where the window's variance of ``x`` exceeds
    :math:`(10^{-3} \cdot \mathrm{IQR}(x))^2`, and tied ``x`` share the mean of their smooths.

    Args:
        x: Sorted abscissae ``(P, n)`` (non-decreasing along the last axis).
        y: Ordinates ``(P, n)``.
        span: Window as a fraction of ``n``, in (0, 1].

    Returns:
        The smooth ``(P, n)``.

    Shape:
        - x, y: :math:`(P, n)`; output :math:`(P, n)`.

    Example:
        >>> x = torch.linspace(0, 1, 20, dtype=torch.float64).unsqueeze(0)
        >>> torch.allclose(fixed_span_smooth(x, 3 * x + 1, 0.2), 3 * x + 1)
        True
    """
    dims = check_shape(x, "P n", "x")
    check_shape(y, "P n", "y", **dims)
    check_floating(x, "x")
    check_floating(y, "y")
    check_number(span, "span", minimum=0, maximum=1, strict_minimum=True)
    _check_observations(dims["n"])
    check_finite(x, "x")
    check_finite(y, "y")
    half = _half_widths(dims["n"], (span,))
    work = _working_dtype(x.dtype)
    smooth = _Plan(x.to(work), half).smooth(y.to(work), half)[0][0]
    return _check_result(smooth.to(x.dtype), "the smooth")


def _supersmooth_sorted(
    x: torch.Tensor, y: torch.Tensor, plan: _Plan | None = None
) -> torch.Tensor:
    """Supersmoother of ``y`` on sorted ``x``, both ``(P, n)`` (``plan``: ``x``'s, if built)."""
    if plan is None:
        plan = _Plan(x, _half_widths(x.shape[-1], SPANS))
    tweeter, mid, bass = plan.half
    primaries, residuals = plan.smooth(y, [tweeter, mid, bass], residuals=True)
    r = plan.smooth(cast(torch.Tensor, residuals), [mid] * 3)[0]  # residuals=True: a tensor
    # the span with the smallest smoothed residual, the first one on ties (like argmin)
    spans = torch.tensor(SPANS, dtype=x.dtype, device=x.device)
    # differences at rounding level (equal residuals, e.g. a locally constant y) count as ties
    tol = _TIE_TOL * r.abs().amax(dim=(0, 2), keepdim=True)[0]
    best = torch.where(
        (r[0] <= r[1] + tol) & (r[0] <= r[2] + tol), 0, torch.where(r[1] <= r[2] + tol, 1, 2)
    )
    best_span = spans[best]
    f = plan.smooth(best_span, [mid])[0][0]
    # numpy.interp(f, SPANS, primaries): piecewise linear, clamped at both ends
    f = f.clamp(_TWEETER, _BASS)
    low_part = (f - _TWEETER) / (_MID - _TWEETER) * (primaries[1] - primaries[0]) + primaries[0]
    high_part = (f - _MID) / (_BASS - _MID) * (primaries[2] - primaries[1]) + primaries[1]
    blended = torch.where(f < _MID, low_part, torch.where(f >= _BASS, primaries[2], high_part))
    result = plan.smooth(blended, [tweeter])[0][0]
    return torch.where(plan.constant, y.mean(dim=-1, keepdim=True), result)


def _working_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for narrower floats: float32 window sums lose small-scale data (NaN results)."""
    return torch.float64 if torch.finfo(dtype).bits < 64 else dtype


def _check_result(values: torch.Tensor, what: str) -> torch.Tensor:
    """Refuse a non-finite result of finite inputs (values beyond the dtype's range)."""
    if values.numel() and not bool(torch.isfinite(values).all()):
        raise RangeError(
            f"{what} is not finite for finite `x` and `y`: their values exceed what the "
            f"dtype can hold in squared sums; rescale `x` and `y` (e.g. standardise them)."
        )
    return values


def _check_observations(n: int) -> None:
    if n < MIN_OBSERVATIONS:
        raise RangeError(
            f"the supersmoother needs at least {MIN_OBSERVATIONS} observations per problem "
            f"(a window of two neighbors on each side), got {n}."
        )


def supersmooth(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""Friedman's variable-span supersmoother :math:`\hat E[y \mid x]`, batched.

    Three running-lines smooths (spans 0.05, 0.2, 0.5) are fitted; their absolute
    cross-validated residuals :math:`|r_i| / (1 - h_{ii})` are smoothed with the midrange span;
    each point takes the span with the smallest smoothed residual; those spans are smoothed,
    the three smooths are interpolated at them, and the result is smoothed with the tweeter
    span. Constant ``x`` gives the mean of ``y``. Matches ``ace.supersmoother.SuperSmoother``.

    Args:
        x: Abscissae ``(..., n)``, any order (sorted stably inside).
        y: Ordinates of the same shape.

    Returns:
        The smooth at each observation, in the input order, ``(..., n)``, in ``x``'s dtype
        (computed in float64 for narrower dtypes).

    Raises:
        ShapeError: ``x`` and ``y`` differ in shape.
        RangeError: Fewer than 5 observations, or NaN/infinite values.

    Shape:
        - x, y: :math:`(..., n)`; output :math:`(..., n)`.

    Example:
        >>> x = torch.linspace(-2, 2, 50, dtype=torch.float64)
        >>> s = supersmooth(x, x**2 + 0.01 * torch.sin(40 * x))
        >>> bool((s - x**2).abs().max() < 0.1)
        True
    """
    check_floating(x, "x")
    check_floating(y, "y")
    if x.shape != y.shape or x.dim() == 0:
        raise ShapeError(
            f"`x` and `y` must have the same shape (..., n), got {x.shape} and {y.shape}."
        )
    _check_observations(x.shape[-1])
    check_finite(x, "x")
    check_finite(y, "y")
    work = _working_dtype(x.dtype)
    flat_x, flat_y = x.reshape(-1, x.shape[-1]).to(work), y.reshape(-1, x.shape[-1]).to(work)
    order = torch.sort(flat_x, dim=-1, stable=True).indices
    smooth = _supersmooth_sorted(flat_x.gather(-1, order), flat_y.gather(-1, order))
    smooth = torch.empty_like(smooth).scatter_(-1, order, smooth).view_as(x).to(x.dtype)
    return _check_result(smooth, "the smooth")


@dataclass(frozen=True)
class ACEResult:
    r"""Transforms and maximal correlations of a batch of ACE problems.

    Attributes:
        x_transforms: :math:`\phi_j(x_j)` at each observation, ``(P, n, k)``.
        y_transform: :math:`\theta(y)` (mean 0, variance 1), ``(P, n)``.
        correlation: :math:`\mathrm{corr}(\sum_j \phi_j, \theta)`, ``(P,)``.
        rsq: ACE's :math:`R^2 = 1 - E[(\theta - \sum_j \phi_j)^2]`, ``(P,)``.
        iterations: Outer iterations each problem ran, ``(P,)``.
    """

    x_transforms: torch.Tensor
    y_transform: torch.Tensor
    correlation: torch.Tensor
    rsq: torch.Tensor
    iterations: torch.Tensor


def _scale(phi: torch.Tensor, theta: torch.Tensor, tolerance: float) -> torch.Tensor:
    """Least-squares coefficients of ``theta`` on the columns of ``phi`` by mace.f's few CG passes.

    ``phi`` ``(P, k, n)``, ``theta`` ``(P, n)`` -> coefficients ``(P, k)``.
    """
    p, k, n = phi.shape
    coeffs = phi.new_zeros(p, k)
    last_direction = phi.new_zeros(p, k)
    last_gsq = phi.new_ones(p)
    passing = torch.ones(p, dtype=torch.bool, device=phi.device)
    for _ in range(k):
        previous = coeffs.clone()
        stepping = passing.clone()
        for step in range(k):
            residual = theta - torch.einsum("pkn,pk->pn", phi, coeffs)
            gradient = -2.0 * torch.einsum("pn,pkn->pk", residual, phi) / n
            gsq = (gradient * gradient).sum(dim=1)
            stepping = stepping & (gsq > 0)
            direction = -gradient
            if step > 0:
                direction = direction + (gsq / last_gsq).unsqueeze(1) * last_direction
            last_gsq = torch.where(stepping, gsq, last_gsq)
            projected = torch.einsum("pkn,pk->pn", phi, direction)
            pp = (projected * projected).sum(dim=1)
            # converged: a rounding-level gradient (~1e-34) whose projection underflows to 0
            # would give 0 / 0 (seen on a real ResNet's channel components)
            stepping = stepping & (pp > 0)
            alpha = (projected * residual).sum(dim=1) / torch.where(
                stepping, pp, torch.ones_like(pp)
            )
            step_mask = stepping.unsqueeze(1)
            coeffs = torch.where(step_mask, coeffs + alpha.unsqueeze(1) * direction, coeffs)
            last_direction = torch.where(step_mask, direction, last_direction)
        passing = passing & ~((coeffs - previous).abs().amax(dim=1) < tolerance)
    return coeffs


def _unsort(values: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(values).scatter_(-1, order, values)


def _standardize(values: torch.Tensor) -> torch.Tensor:
    centered = values - values.mean(dim=-1, keepdim=True)
    return centered / centered.std(dim=-1, correction=0, keepdim=True)


def ace(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    delrsq: float = 0.01,
    maxit: int = 20,
    nterm: int = 3,
    dtype: torch.dtype | None = torch.float64,
) -> ACEResult:
    r"""Alternating Conditional Expectations for many independent problems at once.

    For each problem :math:`p`, find :math:`\theta_p(y)` (mean 0, variance 1) and
    :math:`\phi_{pj}(x_j)` (mean 0) that minimize :math:`E[(\theta - \sum_j \phi_j)^2]`, i.e.
    maximize :math:`\mathrm{corr}(\sum_j \phi_j, \theta)`. Iteration control is mace.f's, as in
    ``ace.ace.ACESolver``: the inner loop refits the :math:`\phi_j` in turn, keeping a new
    :math:`\phi_j` only if it raises :math:`R^2`, until :math:`R^2` rises by at most
    ``delrsq`` (one pass for a single predictor); the outer loop updates :math:`\theta` and
    stops when :math:`R^2` has varied by at most ``delrsq`` over ``nterm`` iterations, or after
    ``maxit``. Each problem stops on its own; finished problems leave the batch.

    A problem whose predictors are all constant has nothing to explain: its transforms are 0
    and its correlation 0 (the reference package returns NaN there).

    Args:
        x: Predictors ``(P, n, k)``: ``P`` problems, ``n`` observations, ``k`` predictors.
        y: Responses ``(P, n)``.
        delrsq: Convergence threshold on :math:`R^2`.
        maxit: Most inner and most outer iterations.
        nterm: Outer iterations over which :math:`R^2` must be stable.
        dtype: Dtype of the results (float64 by default); ``None`` keeps ``x``'s. Narrower
            dtypes (float32) are computed in float64 and cast back: in float32 the window
            sums of small-scale data cancel and ACE returned NaN.

    Returns:
        An :class:`ACEResult` on the device of ``x``.

    Raises:
        ShapeError: ``x`` is not ``(P, n, k)`` or ``y`` not ``(P, n)``.
        RangeError: Fewer than 5 observations, NaN/infinite values, a constant response, or
            values so large that the squared sums overflow even in float64.

    Shape:
        - x: :math:`(P, n, k)`; y: :math:`(P, n)`.
        - x_transforms: :math:`(P, n, k)`; y_transform: :math:`(P, n)`; correlation: :math:`(P,)`.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.rand(4, 200, 2, generator=g, dtype=torch.float64) * 4 - 2
        >>> y = torch.exp(x[..., 0] + x[..., 1] ** 2)  # log y is additive in x
        >>> result = ace(x, y)
        >>> bool((result.correlation > 0.99).all())
        True
    """
    dims = check_shape(x, "P n k", "x")
    check_shape(y, "P n", "y", P=dims["P"], n=dims["n"])
    check_floating(x, "x")
    check_floating(y, "y")
    check_number(delrsq, "delrsq", minimum=0)
    check_int(maxit, "maxit", minimum=1)
    check_int(nterm, "nterm", minimum=1)
    _check_observations(dims["n"])
    check_finite(x, "x")
    check_finite(y, "y")
    out_dtype = x.dtype if dtype is None else dtype
    if not isinstance(out_dtype, torch.dtype) or not out_dtype.is_floating_point:
        raise DTypeError(f"`dtype` must be a floating-point dtype or None, got {out_dtype}.")
    result = _ace(x, y, delrsq, maxit, nterm, _working_dtype(out_dtype))
    _check_result(result.correlation, "ACE's correlation")
    _check_result(result.x_transforms, "ACE's transforms")
    if out_dtype == result.correlation.dtype:
        return result
    return ACEResult(
        result.x_transforms.to(out_dtype),
        result.y_transform.to(out_dtype),
        result.correlation.to(out_dtype),
        result.rsq.to(out_dtype),
        result.iterations,
    )


def _ace(
    x: torch.Tensor, y: torch.Tensor, delrsq: float, maxit: int, nterm: int, dtype: torch.dtype
) -> ACEResult:
    """:func:`ace` on checked inputs, computed in ``dtype``."""
    dims = {"P": x.shape[0], "n": x.shape[1], "k": x.shape[2]}
    p, n, k = dims["P"], dims["n"], dims["k"]
    xs = x.to(dtype).transpose(1, 2)  # (P, k, n)
    ys = y.to(dtype=dtype, device=x.device)
    if p == 0:
        empty = xs.new_zeros(0)
        return ACEResult(x.new_zeros(0, n, k, dtype=dtype), ys, empty, empty, empty.long())
    flat_y = (ys == ys[:, :1]).all(dim=1)
    if bool(flat_y.any()):
        bad = flat_y.nonzero().flatten().tolist()[:10]
        raise RangeError(f"`y` must vary within each problem; it is constant in problem(s) {bad}.")

    x_order = torch.sort(xs, dim=-1, stable=True).indices  # (P, k, n)
    y_order = torch.sort(ys, dim=-1, stable=True).indices
    x_sorted = xs.gather(-1, x_order)
    y_sorted = ys.gather(-1, y_order)

    theta = _standardize(ys)
    phi = xs - xs.mean(dim=-1, keepdim=True)
    phi = phi * _scale(phi, theta, delrsq).unsqueeze(-1)
    rsq = ys.new_zeros(p)
    iterations = torch.zeros(p, dtype=torch.long, device=x.device)
    history = ys.new_full((p, nterm), 100.0)
    degenerate = (x_sorted[..., -1] <= x_sorted[..., 0]).all(dim=1)
    active = ~degenerate
    half = _half_widths(n, SPANS)
    x_plans = [_Plan(x_sorted[:, j], half) for j in range(k)]
    y_plan = _Plan(y_sorted, half)

    while bool(active.any()):
        rows = active.nonzero().flatten()
        sub_phi, sub_theta, sub_rsq = phi[rows], theta[rows], rsq[rows]
        sub_order = x_order[rows]
        sub_plans = [plan.select(rows) for plan in x_plans]
        sub_phi, sub_rsq = _backfit(
            sub_phi, sub_theta, sub_rsq, sub_order, sub_plans, maxit, delrsq
        )
        # theta <- E[sum phi | y], standardized
        order = y_order[rows]
        total = sub_phi.sum(dim=1).gather(-1, order)
        plan = y_plan.select(rows)
        sub_theta = _unsort(_standardize(_supersmooth_sorted(plan.x, total, plan)), order)
        sub_rsq = 1.0 - ((sub_theta - sub_phi.sum(dim=1)) ** 2).mean(dim=-1)
        slot = (iterations[rows] % nterm).unsqueeze(1)
        sub_history = history[rows].scatter(1, slot, sub_rsq.unsqueeze(1))
        phi[rows], theta[rows], rsq[rows], history[rows] = sub_phi, sub_theta, sub_rsq, sub_history
        iterations[rows] += 1
        stable = sub_history.amax(dim=1) - sub_history.amin(dim=1) <= delrsq
        active[rows] = ~(stable | (iterations[rows] >= maxit))

    phi = torch.where(degenerate.view(-1, 1, 1), torch.zeros_like(phi), phi)
    return ACEResult(phi.transpose(1, 2), theta, _correlation(phi, theta), rsq, iterations)


def _backfit(
    phi: torch.Tensor,
    theta: torch.Tensor,
    rsq: torch.Tensor,
    order: torch.Tensor,
    plans: list[_Plan],
    maxit: int,
    delrsq: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ACE's inner loop: refit each ``phi_j`` against ``theta`` minus the other transforms.

    Each problem's transforms are refit in turn while its :math:`R^2` improves by more than
    ``delrsq`` (at most ``maxit`` rounds); a refit is kept only where it raises :math:`R^2`.

    Shape:
        - phi: :math:`(P, k, n)`; theta: :math:`(P, n)`; rsq: :math:`(P,)`
        - order: :math:`(P, k, n)`, each predictor's sorting permutation
    """
    k = phi.shape[1]
    inner = torch.arange(phi.shape[0], device=phi.device)
    for inner_iteration in range(1, maxit + 1):
        before = rsq[inner].clone()
        i_phi, i_rsq = phi[inner], rsq[inner]
        rest = theta[inner] - i_phi.sum(dim=1)
        for j in range(k):
            j_order = order[inner, j]
            target = (rest + i_phi[:, j]).gather(-1, j_order)
            plan = plans[j].select(inner)
            smooth = _supersmooth_sorted(plan.x, target, plan)
            smooth = smooth - smooth.mean(dim=-1, keepdim=True)
            new_rsq = 1.0 - ((target - smooth) ** 2).mean(dim=-1)
            accept = new_rsq > i_rsq
            i_rsq = torch.where(accept, new_rsq, i_rsq)
            new_phi = _unsort(smooth, j_order)
            rest = torch.where(accept.unsqueeze(1), rest + i_phi[:, j] - new_phi, rest)
            i_phi[:, j] = torch.where(accept.unsqueeze(1), new_phi, i_phi[:, j])
        phi[inner], rsq[inner] = i_phi, i_rsq
        if k == 1 or inner_iteration == maxit:
            break
        inner = inner[i_rsq - before > delrsq]
        if inner.numel() == 0:
            break
    return phi, rsq


def _correlation(phi: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    r"""Pearson correlation of :math:`\sum_j \phi_j` and :math:`\theta`, per problem ``(P,)``."""
    total = phi.sum(dim=1)
    total_c = total - total.mean(dim=-1, keepdim=True)
    theta_c = theta - theta.mean(dim=-1, keepdim=True)
    tiny = torch.finfo(theta.dtype).tiny
    norm = (total_c.norm(dim=-1) * theta_c.norm(dim=-1)).clamp(min=tiny)
    correlation: torch.Tensor = (total_c * theta_c).sum(dim=-1) / norm
    return correlation
