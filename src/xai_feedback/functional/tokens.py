r"""The token-to-grid fold of a vision transformer: patch tokens onto their ``(h, w)`` grid.

A ViT's token sequence holds ``P`` **prefix tokens** (class token; DeiT's distillation token;
register tokens, Darcet et al. 2024) and then the ``h w`` patch tokens in row-major order, as
the patch embedding flattens them: ``N = P + h w``. :func:`tokens_to_grid` drops the prefix
and puts patch ``i w + j`` at cell ``(i, j)``,

.. math::

    M_{b, i, j} = T_{b,\, P + i w + j}, \qquad
    A_{b, c, i, j} = X_{b,\, P + i w + j,\, c},

for per-token values ``T`` ``(B, N)`` (a relevance row) and token features ``X`` ``(B, N, C)``
(a layer's output, channels first on the grid, as a CNN's feature map). It is the one fold of
the library: :class:`~xai_feedback.tokens.TokenReshape` (the CAM hooks),
:mod:`~xai_feedback.functional.relevance` (the relevance maps) and
:class:`~xai_feedback.models.vit.TokenGrid` call it. Selection and permutation only: the
gradient of a score with respect to the tokens folds the same way.
"""

from __future__ import annotations

import math

import torch

from xai_feedback._checks import check_int
from xai_feedback.errors import ShapeError

__all__ = ["tokens_to_grid"]


def _patch_grid(
    patches: int, n: int, prefix_tokens: int, grid: tuple[int, int] | None
) -> tuple[int, int]:
    """``(h, w)`` of ``patches`` patch tokens: ``grid`` checked, or the square one."""
    counted = f"(N={n} minus `prefix_tokens`={prefix_tokens})"
    if grid is None:
        side = math.isqrt(patches)
        if side * side != patches or patches == 0:
            raise ShapeError(
                f"{patches} patch tokens {counted} are not a square grid: wrong "
                "`prefix_tokens`, or a non-square input; pass `grid=(h, w)`."
            )
        return side, side
    if not isinstance(grid, tuple | list) or len(grid) != 2:
        raise ShapeError(f"`grid` must be a pair (h, w), got {grid!r}.")
    h = check_int(grid[0], "grid[0]", minimum=1)
    w = check_int(grid[1], "grid[1]", minimum=1)
    if h * w != patches:
        raise ShapeError(
            f"`grid`={tuple(grid)} has {h * w} cells but there are {patches} patch tokens "
            f"{counted}: pass the grid of the input's patches (image side / patch size)."
        )
    return h, w


def tokens_to_grid(
    tokens: torch.Tensor, grid: tuple[int, int] | None = None, *, prefix_tokens: int = 1
) -> torch.Tensor:
    r"""Fold tokens ``(B, N)`` / ``(B, N, C)`` onto the grid ``(B, h, w)`` / ``(B, C, h, w)``.

    .. math:: A_{b, c, i, j} = X_{b,\, P + i w + j,\, c}

    Args:
        tokens: Per-token values ``(B, N)`` (a relevance row) or token features
            ``(B, N, C)`` (a transformer layer's output), the ``prefix_tokens`` first.
        grid: ``(h, w)`` with ``h * w == N - prefix_tokens`` (patches in row-major order);
            default: the square grid, if ``N - prefix_tokens`` is a square.
        prefix_tokens: Leading non-patch tokens, dropped (1 for a class token; timm's
            ``num_prefix_tokens`` counts distillation and register tokens too).

    Returns:
        A view of ``tokens`` (selection and permutation only): ``(B, h, w)`` for values,
        ``(B, C, h, w)`` for features (channels first).

    Raises:
        ShapeError: ``tokens`` is not 2-D or 3-D, has fewer tokens than ``prefix_tokens``,
            or its patch count is not ``h * w`` of ``grid`` (not a square without one).

    Shape:
        - tokens: :math:`(B, P + hw)` or :math:`(B, P + hw, C)`; output: :math:`(B, h, w)`
          or :math:`(B, C, h, w)`

    Example:
        >>> tokens_to_grid(torch.arange(5.0)[None], prefix_tokens=1)
        tensor([[[1., 2.],
                 [3., 4.]]])
        >>> features = torch.arange(2 * 7 * 3.0).view(2, 7, 3)  # 1 prefix + 2 x 3 patches
        >>> grid = tokens_to_grid(features, (2, 3), prefix_tokens=1)
        >>> grid.shape, bool(grid[1, :, 0, 2].eq(features[1, 1 + 2]).all())
        (torch.Size([2, 3, 2, 3]), True)
    """
    if not isinstance(tokens, torch.Tensor) or tokens.dim() not in (2, 3):
        got = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise ShapeError(
            f"`tokens` must be per-token values (B, N) or features (B, N, C), got {got}."
        )
    check_int(prefix_tokens, "prefix_tokens", minimum=0)
    b, n = int(tokens.shape[0]), int(tokens.shape[1])
    if n < prefix_tokens:
        raise ShapeError(
            f"`tokens` has {n} tokens, fewer than `prefix_tokens`={prefix_tokens}: expected "
            f"shape (B, prefix_tokens + h * w[, C]), got {tuple(tokens.shape)}."
        )
    h, w = _patch_grid(n - prefix_tokens, n, prefix_tokens, grid)
    patches = tokens[:, prefix_tokens:]
    if tokens.dim() == 2:
        return patches.reshape(b, h, w)
    return patches.reshape(b, h, w, int(tokens.shape[2])).permute(0, 3, 1, 2)
