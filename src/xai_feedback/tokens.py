r"""Token maps: fold a transformer layer's output into the ``(B, C, h, w)`` grid CAMs read.

The CAM methods (:mod:`xai_feedback.methods`) read a spatial map ``A`` ``(B, C, h, w)``. A
vision transformer's layers output *tokens* instead:

- ViT, DeiT, EVA, BEiT, Hugging Face ViT: ``(B, N, C)`` with ``P`` **prefix tokens** first
  (class token; DeiT's distillation token; register tokens, Darcet et al. 2024), then the
  ``h w`` patch tokens in row-major order, ``N = P + h w``;
- Swin (torchvision, timm): channels-last grids ``(B, H, W, C)``.

:class:`TokenReshape` drops the prefix tokens and folds the patch tokens to the grid,

.. math::

    A_{b, c, i, j} = X_{b,\, P + i w + j,\, c},

or moves the channels of a channels-last grid first, :math:`A_{b,c,i,j} = X_{b,i,j,c}`. The
fold only selects and rearranges entries, so the gradient of a score with respect to the
layer's output folds the same way: :class:`~xai_feedback.hooks.CAMHook` takes ``dy/dX`` of
the captured tokens and folds it, and the prefix tokens' gradients are dropped with them.
:func:`default_reshape` reads the fold from the model's structure. This is the
``reshape_transform`` of pytorch-grad-cam's ViT and Swin recipes (Gildenblat et al.), with
the prefix and the grid read from the model instead of written by hand.

References:
    A. Dosovitskiy et al., An Image is Worth 16x16 Words, ICLR 2021. H. Touvron et al.,
    Training data-efficient image transformers & distillation through attention, ICML 2021.
    T. Darcet et al., Vision Transformers Need Registers, ICLR 2024. Z. Liu et al., Swin
    Transformer, ICCV 2021.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from xai_feedback._checks import check_int
from xai_feedback.errors import DTypeError, ShapeError
from xai_feedback.layers import (
    prefix_token_count,
    resolve_layer,
    transformer_stacks,
    unwrap_model,
)

__all__ = ["TokenReshape", "default_reshape"]


@dataclass(frozen=True)
class TokenReshape:
    r"""Fold a transformer layer's tokens to a ``(B, C, h, w)`` grid.

    Args:
        prefix_tokens: Tokens before the patch tokens (class, distillation, register), dropped.
        grid: ``(h, w)`` of the patch tokens; ``None`` infers a square grid from the count,
            :math:`h = w = \sqrt{N - P}`.
        channels_last: A 4-D output is ``(B, H, W, C)`` (Swin), not ``(B, C, H, W)``. Token
            outputs ``(B, N, C)`` are always channels-last; this flag is about 4-D outputs.

    A 3-D output ``(B, N, C)`` is folded (prefix dropped); a 4-D output is a grid already:
    its channels are moved first with ``channels_last``, else it is returned as it is.

    Raises:
        ShapeError: (on call) fewer tokens than prefix tokens, a patch count that is not
            ``h * w`` of the given grid or not a square, a 4-D grid that differs from the
            given grid, or an output that is neither 3-D nor 4-D.

    Shape:
        - input: :math:`(B, P + hw, C)`, :math:`(B, h, w, C)` (channels-last) or
          :math:`(B, C, h, w)`; output: :math:`(B, C, h, w)`

    Example:
        >>> tokens = torch.arange(2 * 5 * 3.0).view(2, 5, 3)  # class token + 2x2 patches
        >>> grid = TokenReshape(prefix_tokens=1)(tokens)
        >>> grid.shape
        torch.Size([2, 3, 2, 2])
        >>> bool(grid[0, :, 0, 1].eq(tokens[0, 2]).all())  # patch (0, 1) is token 1 + 1
        True
    """

    prefix_tokens: int = 0
    grid: tuple[int, int] | None = None
    channels_last: bool = False

    def __post_init__(self) -> None:
        check_int(self.prefix_tokens, "prefix_tokens", minimum=0)
        if not isinstance(self.channels_last, bool):
            raise DTypeError(
                f"`channels_last` must be a bool, got {type(self.channels_last).__name__}."
            )
        if self.grid is not None:
            if not isinstance(self.grid, tuple) or len(self.grid) != 2:
                raise DTypeError(f"`grid` must be a tuple (h, w) or None, got {self.grid!r}.")
            for side in self.grid:
                check_int(side, "grid", minimum=1)

    def grid_of(self, patches: int) -> tuple[int, int]:
        """``(h, w)`` of ``patches`` patch tokens: the given grid, or the square one.

        Raises:
            ShapeError: ``patches`` is not ``h * w`` of the given grid, or not a square.
        """
        if self.grid is not None:
            h, w = self.grid
            if h * w != patches:
                raise ShapeError(
                    f"the layer has {patches} patch tokens (after {self.prefix_tokens} prefix "
                    f"tokens) but `grid` is {self.grid}, i.e. {h * w}: pass the grid of the "
                    "input's patches (image side / patch size)."
                )
            return h, w
        side = math.isqrt(patches)
        if side * side != patches or patches == 0:
            raise ShapeError(
                f"the layer has {patches} patch tokens (after {self.prefix_tokens} prefix "
                "tokens), which is not a square grid: wrong `prefix_tokens`, or a non-square "
                "input; pass TokenReshape(prefix_tokens=..., grid=(h, w))."
            )
        return side, side

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        """Fold ``tensor`` to ``(B, C, h, w)`` (a view: selection and permutation only)."""
        if not isinstance(tensor, torch.Tensor):
            raise DTypeError(f"a token map needs a tensor, got {type(tensor).__name__}.")
        if tensor.dim() == 3:
            b, n, c = tensor.shape
            if n < self.prefix_tokens:
                raise ShapeError(
                    f"the layer's output has {n} tokens, fewer than `prefix_tokens` = "
                    f"{self.prefix_tokens}: got shape {tuple(tensor.shape)}, expected "
                    "(B, prefix_tokens + h * w, C)."
                )
            h, w = self.grid_of(n - self.prefix_tokens)
            patches = tensor[:, self.prefix_tokens :].reshape(b, h, w, c)
            return patches.permute(0, 3, 1, 2)
        if tensor.dim() == 4:
            grid = tensor.permute(0, 3, 1, 2) if self.channels_last else tensor
            if self.grid is not None and tuple(grid.shape[2:]) != self.grid:
                raise ShapeError(
                    f"the layer's grid is {tuple(grid.shape[2:])} but `grid` is {self.grid} "
                    f"(output shape {tuple(tensor.shape)}, channels_last={self.channels_last})."
                )
            return grid
        raise ShapeError(
            f"a token map needs tokens (B, N, C) or a grid (B, H, W, C) / (B, C, H, W), got "
            f"shape {tuple(tensor.shape)}."
        )


def _grid_hint(model: nn.Module) -> tuple[int, int] | None:
    """A non-square patch grid declared by the model (timm's ``patch_embed.grid_size``)."""
    for module in model.modules():
        size = getattr(module, "grid_size", None)
        if getattr(module, "dynamic_img_size", False) or getattr(module, "dynamic_size", False):
            return None
        if (
            isinstance(size, tuple)
            and len(size) == 2
            and all(isinstance(s, int) for s in size)
            and size[0] != size[1]
        ):
            return (int(size[0]), int(size[1]))
    return None


def _channels_last(model: nn.Module, layer: nn.Module) -> bool:
    """Whether a 4-D output of ``layer`` is ``(B, H, W, C)``."""
    if isinstance(layer, nn.Conv2d):
        return False
    if isinstance(layer, nn.LayerNorm) and not type(layer).__name__.endswith("2d"):
        return True  # normalizes the last dimension: a 4-D output is channels-last
    # Swin (torchvision, timm) keeps its stages channels-last, (B, H, W, C)
    return any("Swin" in type(m).__name__ for m in model.modules())


def default_reshape(model: nn.Module, layer: nn.Module | str | None = None) -> TokenReshape | None:
    """The fold of ``layer``'s output read from ``model``'s structure, ``None`` for a CNN.

    A model with transformer blocks (:func:`~xai_feedback.layers.transformer_stacks`) gets a
    :class:`TokenReshape` with

    - ``prefix_tokens``: :func:`~xai_feedback.layers.prefix_token_count` (timm's
      ``num_prefix_tokens``; torchvision's class token; class, distillation and register
      token parameters);
    - ``grid``: a non-square grid declared by the model (timm's ``patch_embed.grid_size``),
      else ``None`` (square, inferred from the token count);
    - ``channels_last``: the layer is a last-dimension ``LayerNorm``, or the model is a Swin
      (its stages are ``(B, H, W, C)``); never for a ``Conv2d``.

    A model without transformer blocks gets ``None``: its layers' outputs are used as they
    are (and must be ``(B, C, h, w)``).

    Args:
        model: The model, possibly wrapped.
        layer: A module of ``model``, a dotted name, or ``None`` (the default layer).

    Example:
        >>> default_reshape(nn.Sequential(nn.Conv2d(3, 8, 3)), "0") is None
        True
    """
    inner = unwrap_model(model)
    module = resolve_layer(inner, layer).module
    if not transformer_stacks(inner):
        return None
    return TokenReshape(
        prefix_tokens=prefix_token_count(inner),
        grid=_grid_hint(inner),
        channels_last=_channels_last(inner, module),
    )
