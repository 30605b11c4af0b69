r"""Spatial weight kernels for penalties: zero where evidence belongs, rising elsewhere."""

from __future__ import annotations

import torch

from xai_feedback._checks import check_choice, check_int, check_number

__all__ = [
    "DEFAULT_SIGMA",
    "KERNEL_SHAPES",
    "PERIPHERY_THRESHOLD",
    "center_weight",
    "normalized_grid",
    "periphery_mask",
]

KERNEL_SHAPES = ("gaussian", "flat")
"""Kernel shapes understood by :func:`center_weight`."""


def normalized_grid(
    h: int,
    w: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-center coordinates in [-1, 1]: ``y_i = (2i + 1)/h - 1``, ``x_j = (2j + 1)/w - 1``.

    Returns:
        ``(y, x)``, each ``(h, w)``.

    Example:
        >>> normalized_grid(1, 2)[1]
        tensor([[-0.5000,  0.5000]])
    """
    check_int(h, "h", minimum=1)
    check_int(w, "w", minimum=1)
    ys = (2 * torch.arange(h, device=device, dtype=dtype) + 1) / h - 1
    xs = (2 * torch.arange(w, device=device, dtype=dtype) + 1) / w - 1
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return grid_y, grid_x


DEFAULT_SIGMA = 0.7
"""The one default width of the center penalty, on [-1, 1] coordinates: chosen on a
validation split of the frame-confounded digits (``benchmarks/decoy.py``)."""

PERIPHERY_THRESHOLD = 0.5
"""The default center weight from which a pixel is periphery (:func:`periphery_mask`): chosen
with ``xai-feedback bench confounds_select`` on a validation split of the frame family."""


def center_weight(
    h: int,
    w: int,
    sigma: float = DEFAULT_SIGMA,
    *,
    shape: str = "gaussian",
    radius: float = 0.7,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    r"""Inverted center kernel of the "lint" penalty: 0 at the center, rising to the border.

    On pixel-center coordinates ``x, y`` in [-1, 1] (:func:`normalized_grid`):

    - ``"gaussian"``: :math:`1 - \exp(-(x^2 + y^2) / (2\sigma^2))`,
    - ``"flat"``: 0 inside the square :math:`\max(|x|, |y|) < r`, then a ramp
      :math:`\min(1, (\max(|x|,|y|) - r) / \max(\sigma, \epsilon))` towards the border.

    Args:
        h: Height of the map.
        w: Width of the map.
        sigma: Width of the Gaussian (or length of the flat kernel's ramp), > 0.
        shape: ``"gaussian"`` or ``"flat"``.
        radius: Half-side of the flat kernel's zero square, in [0, 1].
        device: Device of the result.
        dtype: Floating dtype of the result.

    Returns:
        The weight, in [0, 1).

    Shape:
        - output: :math:`(h, w)`

    Example:
        >>> k = center_weight(3, 3, sigma=0.5)
        >>> float(k[1, 1]), round(float(k[0, 1]), 4)
        (0.0, 0.5889)
    """
    check_number(sigma, "sigma", minimum=0, strict_minimum=True)
    check_choice(shape, "shape", KERNEL_SHAPES)
    check_number(radius, "radius", minimum=0, maximum=1)
    if not dtype.is_floating_point:
        from xai_feedback.errors import DTypeError

        raise DTypeError(f"`dtype` must be a floating-point dtype, got {dtype}.")
    y, x = normalized_grid(h, w, device=device, dtype=dtype)
    if shape == "gaussian":
        return 1 - torch.exp(-(x.pow(2) + y.pow(2)) / (2 * sigma**2))
    edge = torch.maximum(x.abs(), y.abs())
    return ((edge - radius) / sigma).clamp(0.0, 1.0)


def periphery_mask(
    h: int,
    w: int,
    sigma: float = DEFAULT_SIGMA,
    *,
    threshold: float = PERIPHERY_THRESHOLD,
    shape: str = "gaussian",
    radius: float = 0.7,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""Where the center prior says there is no evidence: ``center_weight >= threshold``.

    .. math:: M_{ij} = [\, 1 - \exp(-(x_j^2 + y_i^2) / (2\sigma^2)) \ge t \,]

    The annotation-free stand-in for a user's mask: with the same prior as the center
    penalty (:func:`center_weight`, same ``sigma``), it marks the periphery, so that
    :func:`~xai_feedback.objectives.counterexample_objective` (``region=``) can randomize it
    (the data-side twin of the center penalty). With the default ``sigma = 0.7`` and
    ``t = 0.5`` on a 28x28 canvas it covers the outer 2 px at the edges' middles and
    more towards the corners (a disc of radius :math:`\sigma\sqrt{2 \ln 2} \approx 0.82`
    stays free).

    Args:
        h: Height of the mask.
        w: Width of the mask.
        sigma: Width of the prior, > 0.
        threshold: Weight from which a pixel is periphery, in (0, 1).
        shape: Kernel shape of :func:`center_weight`.
        radius: Flat kernel's zero square (``shape="flat"``).
        device: Device of the result.

    Returns:
        Boolean mask, ``True`` in the periphery.

    Shape:
        - output: :math:`(h, w)`

    Example:
        >>> m = periphery_mask(28, 28)
        >>> bool(m[0, 14]), bool(m[1, 14]), bool(m[2, 14]), bool(m[14, 14]), bool(m[2, 2])
        (True, True, False, False, True)
    """
    check_number(
        threshold, "threshold", minimum=0, maximum=1, strict_minimum=True, strict_maximum=True
    )
    weight = center_weight(h, w, sigma, shape=shape, radius=radius, device=device)
    return weight >= threshold
