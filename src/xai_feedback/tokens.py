r"""Token maps: fold a transformer layer's output into the ``(B, C, h, w)`` grid CAMs read.

The CAM methods (:mod:`xai_feedback.methods`) read a spatial map ``A`` ``(B, C, h, w)``. A
vision transformer's layers output *tokens* instead:

- ViT, DeiT, EVA, BEiT, Hugging Face ViT: ``(B, N, C)`` with ``P`` **prefix tokens** first
  (class token; DeiT's distillation token; register tokens, Darcet et al. 2024), then the
  ``h w`` patch tokens in row-major order, ``N = P + h w``;
- Swin (torchvision, timm): channels-last grids ``(B, H, W, C)``.

:class:`TokenReshape` drops the prefix tokens and folds the patch tokens to the grid with
:func:`~xai_feedback.functional.tokens.tokens_to_grid` (the library's one fold, which the
relevance maps and :class:`~xai_feedback.models.vit.TokenGrid` use too),

.. math::

    A_{b, c, i, j} = X_{b,\, P + i w + j,\, c},

or moves the channels of a channels-last grid first, :math:`A_{b,c,i,j} = X_{b,i,j,c}`. The
fold only selects and rearranges entries, so the gradient of a score with respect to the
layer's output folds the same way: :class:`~xai_feedback.hooks.CAMHook` takes ``dy/dX`` of
the captured tokens and folds it, and the prefix tokens' gradients are dropped with them.
:func:`default_reshape` reads the fold from the model's structure
(:func:`~xai_feedback.layers.token_layout`, the one reader of a transformer's token layout).
This is the ``reshape_transform`` of pytorch-grad-cam's ViT and Swin recipes (Gildenblat et
al.), with the prefix and the grid read from the model instead of written by hand.

References:
    A. Dosovitskiy et al., An Image is Worth 16x16 Words, ICLR 2021. H. Touvron et al.,
    Training data-efficient image transformers & distillation through attention, ICML 2021.
    T. Darcet et al., Vision Transformers Need Registers, ICLR 2024. Z. Liu et al., Swin
    Transformer, ICCV 2021.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from xai_feedback._checks import check_int
from xai_feedback.errors import DTypeError, ShapeError
from xai_feedback.functional.tokens import tokens_to_grid
from xai_feedback.layers import resolve_layer, token_layout, transformer_stacks, unwrap_model

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

    A 3-D output ``(B, N, C)`` is folded by
    :func:`~xai_feedback.functional.tokens.tokens_to_grid` (prefix dropped, channels first);
    a 4-D output is a grid already:
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

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        """Fold ``tensor`` to ``(B, C, h, w)`` (a view: selection and permutation only)."""
        if not isinstance(tensor, torch.Tensor):
            raise DTypeError(f"a token map needs a tensor, got {type(tensor).__name__}.")
        if tensor.dim() == 3:
            return tokens_to_grid(tensor, self.grid, prefix_tokens=self.prefix_tokens)
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

    - ``prefix_tokens`` and ``grid`` from :func:`~xai_feedback.layers.token_layout`, the
      reader :class:`~xai_feedback.relevance.AttentionCapture` uses too: timm's
      ``num_prefix_tokens``, else the class, distillation and register token tensors
      (torchvision's class token), 0 without either; a non-square grid declared by the
      model (timm's ``patch_embed.grid_size``), else ``None`` (square, from the token count);
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
    layout = token_layout(inner)
    return TokenReshape(
        prefix_tokens=layout.prefix_tokens or 0,
        grid=layout.grid,
        channels_last=_channels_last(inner, module),
    )
