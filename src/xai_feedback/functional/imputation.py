r"""Imputation of removed pixels: noisy linear imputation (ROAD) and blur, batched on the device.

Noisy linear imputation (Rong et al. 2022) gives every removed pixel the weighted mean of its
8 neighbors, direct neighbors weighing :math:`1/6` and diagonal ones :math:`1/12`. Removed
neighbors are unknowns too, so the removed pixels :math:`u` solve the sparse system

.. math::

    d_i\, x_i - \sum_{j \in N(i) \cap u} w_{ij}\, x_j = \sum_{j \in N(i) \setminus u} w_{ij}\, v_j,
    \qquad d_i = \sum_{j \in N(i)} w_{ij},

(:math:`N(i)` the neighbors inside the image, :math:`v` the kept values), then get Gaussian
noise of standard deviation ``noise``. The reference solves one sparse system per image with a
direct solver; here the system, symmetric positive definite, is solved for the whole batch and
all channels at once by Jacobi-preconditioned conjugate gradients whose matrix-vector product
is one 3x3 convolution.

Reference:
    Y. Rong, T. Leemann, V. Borisov, G. Kasneci, E. Kasneci, "A Consistent and Efficient
    Evaluation Strategy for Attribution Methods", ICML 2022.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xai_feedback._checks import (
    check_finite,
    check_floating,
    check_int,
    check_number,
    check_shape,
)
from xai_feedback.errors import RangeError

__all__ = ["NEIGHBOR_WEIGHTS", "blur_images", "linear_imputation", "noisy_linear_imputation"]

NEIGHBOR_WEIGHTS = ((1 / 12, 1 / 6, 1 / 12), (1 / 6, 0.0, 1 / 6), (1 / 12, 1 / 6, 1 / 12))
"""ROAD's neighbor weights: 1/6 for the 4 direct neighbors, 1/12 for the 4 diagonal ones."""


def _check_mask(images: torch.Tensor, mask: torch.Tensor) -> dict[str, int]:
    dims = check_shape(images, "B C H W", "images")
    check_floating(images, "images")
    check_shape(mask, "B H W", "mask", B=dims["B"], H=dims["H"], W=dims["W"])
    if mask.dtype != torch.bool:
        raise RangeError(f"`mask` must be a boolean tensor (True = removed), got {mask.dtype}.")
    check_finite(images, "images")  # a NaN neighbor would silently spread through the solve
    return dims


def _push_pull(images: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Fill unknown pixels with the mean of the known ones in ever coarser 2x2 blocks."""
    tiny = torch.finfo(images.dtype).tiny
    v, w = images * known, known.expand_as(images)
    pyramid = []
    while min(v.shape[-2:]) > 1:
        pyramid.append((v, w))
        v, w = F.avg_pool2d(v, 2, ceil_mode=True), F.avg_pool2d(w, 2, ceil_mode=True)
    fill = v / w.clamp(min=tiny)
    for v, w in reversed(pyramid):
        up = F.interpolate(fill, size=v.shape[-2:], mode="bilinear", align_corners=False)
        fill = torch.where(w > 0, v / w.clamp(min=tiny), up)
    return fill


def linear_imputation(
    images: torch.Tensor,
    mask: torch.Tensor,
    *,
    tol: float = 1e-6,
    max_iter: int | None = None,
) -> torch.Tensor:
    r"""Fill the pixels where ``mask`` is true by ROAD's linear imputation (no noise).

    Args:
        images: ``(B, C, H, W)``.
        mask: ``(B, H, W)`` bool, true where a pixel is removed.
        tol: Stop when every system's preconditioned residual norm falls below ``tol`` times
            its right-hand side's.
        max_iter: Most conjugate-gradient iterations (default ``4 * (H + W)``).

    Returns:
        Images of the same shape, dtype and device; kept pixels unchanged.

    Raises:
        RangeError: An image has every pixel removed (nothing to impute from).

    Shape:
        - images: :math:`(B, C, H, W)`; mask: :math:`(B, H, W)`; output as images.

    Example:
        >>> x = torch.tensor([[[[1.0, 0.0, 3.0]]]])
        >>> linear_imputation(x, torch.tensor([[[False, True, False]]]))
        tensor([[[[1., 2., 3.]]]])
    """
    dims = _check_mask(images, mask)
    check_number(tol, "tol", minimum=0, strict_minimum=True)
    b, h, w = dims["B"], dims["H"], dims["W"]
    max_iter = 4 * (h + w) if max_iter is None else check_int(max_iter, "max_iter", minimum=1)
    if b == 0 or not bool(mask.any()):
        return images.clone()
    full = mask.flatten(1).all(dim=1)
    if bool(full.any()):
        bad = full.nonzero().flatten().tolist()[:10]
        raise RangeError(
            "`mask` must keep at least one pixel of each image (nothing to impute from), "
            f"got every pixel removed in image(s) {bad}."
        )
    # the solve is linear: run it on each image and channel divided by its largest magnitude,
    # so that the squared residuals neither overflow (1e20 in float32) nor underflow (1e-20),
    # either of which silently stopped the iterations early
    peak = images.detach().abs().amax(dim=(2, 3), keepdim=True)
    peak = torch.where(peak > 0, peak, torch.ones_like(peak))
    filled = _solve(images / peak, mask, tol, max_iter) * peak
    unknown = mask.unsqueeze(1)
    return torch.where(unknown, filled, images)


def _solve(images: torch.Tensor, mask: torch.Tensor, tol: float, max_iter: int) -> torch.Tensor:
    """Conjugate gradients of ROAD's system on checked, unit-scale ``images``."""
    h, w = int(images.shape[-2]), int(images.shape[-1])
    kernel = torch.tensor(NEIGHBOR_WEIGHTS, dtype=images.dtype, device=images.device)
    kernel = kernel.view(1, 1, 3, 3)

    def neighbors(x: torch.Tensor) -> torch.Tensor:  # sum_j w_ij x_j, zero outside the image
        return F.conv2d(x.reshape(-1, 1, h, w), kernel, padding=1).view(x.shape)

    unknown = mask.unsqueeze(1).to(images.dtype)  # (B, 1, H, W)
    known = 1.0 - unknown
    degree = neighbors(torch.ones(1, 1, h, w, dtype=images.dtype, device=images.device))
    rhs = neighbors(images * known) * unknown  # (B, C, H, W), zero off the unknowns

    def operator(x: torch.Tensor) -> torch.Tensor:  # (D - W_uu) x on the unknowns
        return (degree * x - neighbors(x)) * unknown

    x = _push_pull(images, known) * unknown  # a smooth first guess: few iterations are left
    r = rhs - operator(x)
    z = r / degree
    p = z.clone()
    rz = (r * z).sum(dim=(2, 3), keepdim=True)
    # below ~100 ulp the residual stagnates in rounding noise: never ask for less
    tol = max(tol, 100 * torch.finfo(images.dtype).eps)
    # relative to the right-hand side, but never below ``tol`` itself (the images are on unit
    # scale here): where every known neighbor is 0 the exact fill is 0 and a relative target
    # is 0, which conjugate gradients cannot reach from a non-zero first guess; in float32 it
    # iterated into denormals and overflowed to NaN (ROAR/KAR on SmoothGrad^2 rankings)
    target = tol * (rhs * rhs / degree).sum(dim=(2, 3), keepdim=True).sqrt().clamp(min=1.0)
    for _ in range(max_iter):
        active = rz.sqrt() > target  # converged systems are frozen, so they cannot drift
        if not bool(active.any()):
            break
        ap = operator(p)
        pap = (p * ap).sum(dim=(2, 3), keepdim=True)
        alpha = torch.where(active & (pap > 0), rz / torch.where(pap > 0, pap, 1.0), 0.0)
        x = x + alpha * p
        r = r - alpha * ap
        z = r / degree
        rz_new = (r * z).sum(dim=(2, 3), keepdim=True)
        p = z + torch.where(active & (rz > 0), rz_new / torch.where(rz > 0, rz, 1.0), 0.0) * p
        rz = rz_new
    return images * known + x * unknown


def noisy_linear_imputation(
    images: torch.Tensor,
    mask: torch.Tensor,
    noise: float = 0.01,
    *,
    generator: torch.Generator | None = None,
    tol: float = 1e-6,
    max_iter: int | None = None,
) -> torch.Tensor:
    r"""ROAD's noisy linear imputation: :func:`linear_imputation` plus Gaussian noise.

    The noise (standard deviation ``noise``, drawn from ``generator``) is added to the removed
    pixels only, independently per channel.

    Shape:
        - images: :math:`(B, C, H, W)`; mask: :math:`(B, H, W)`; output as images.

    Example:
        >>> x = torch.zeros(1, 1, 4, 4)
        >>> m = torch.zeros(1, 4, 4, dtype=torch.bool)
        >>> m[0, 1, 1] = True
        >>> g = torch.Generator().manual_seed(0)
        >>> bool(noisy_linear_imputation(x, m, 0.1, generator=g)[0, 0, 1, 1] != 0)
        True
    """
    check_number(noise, "noise", minimum=0)
    filled = linear_imputation(images, mask, tol=tol, max_iter=max_iter)
    if noise == 0:
        return filled
    device = images.device if generator is None else generator.device
    eps = torch.randn(images.shape, generator=generator, device=device, dtype=images.dtype)
    eps = eps.to(images.device)
    return filled + noise * eps * mask.unsqueeze(1).to(images.dtype)


def blur_images(images: torch.Tensor, sigma: float = 2.0) -> torch.Tensor:
    r"""Gaussian blur of each channel (reflect padding, radius :math:`\lceil 3\sigma \rceil`).

    Reflect padding needs a radius below the side, so each axis's radius is clipped to its
    side minus one (a 1-pixel axis is not blurred): any image size, square or not, works.

    Raises:
        RangeError: ``sigma`` not > 0, or non-finite images.

    Shape:
        - images: :math:`(B, C, H, W)`; output the same.

    Example:
        >>> x = torch.full((1, 1, 5, 5), 0.5)
        >>> torch.allclose(blur_images(x, 1.0), x)
        True
    """
    dims = check_shape(images, "B C H W", "images")
    check_floating(images, "images")
    check_number(sigma, "sigma", minimum=0, strict_minimum=True)
    check_finite(images, "images")
    if images.numel() == 0:
        return images.clone()
    full = int(3 * sigma + 0.999)
    # reflect padding must stay below each side: the radius is clipped per axis (one radius
    # for both axes would exceed the short side of a small non-square image)
    radius_h, radius_w = min(full, dims["H"] - 1), min(full, dims["W"] - 1)

    def kernel(radius: int) -> torch.Tensor:
        grid = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
        g = torch.exp(-(grid**2) / (2 * sigma**2))
        return g / g.sum()

    x = images.reshape(-1, 1, dims["H"], dims["W"])
    x = F.pad(x, (radius_w, radius_w, radius_h, radius_h), mode="reflect")
    x = F.conv2d(x, kernel(radius_w).view(1, 1, 1, -1))
    x = F.conv2d(x, kernel(radius_h).view(1, 1, -1, 1))
    return x.view(images.shape)
