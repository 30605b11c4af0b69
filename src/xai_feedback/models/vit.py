r"""A small vision transformer trained from scratch, ready for the CAM hooks and attention maps.

:class:`TinyViT` is a pre-norm ViT (Dosovitskiy et al. 2021) sized for 28-pixel images: 4x4
patches give a 7x7 grid of tokens. Two design points make it usable by the library's hooks:

- **The token grid is a module.** :class:`TokenGrid` (``model.token_grid``, the model's
  ``cam_layer``) folds the patch tokens ``(B, N, C)`` to a feature map ``(B, C, h, w)``. With
  ``pool="avg"`` (the default) it folds the final normed tokens, and global average pooling
  plus the linear ``classifier`` follow, so CAM on the grid is exact, as for a CNN with a
  GAP + linear head (Zhou et al. 2016):

  .. math:: y_k = \frac{1}{hw} \sum_{i,j} \mathrm{CAM}_k(i, j) + b_k,
            \qquad \mathrm{CAM}_k = \sum_c W_{kc} \, \mathrm{LN}(z^{L})_{c}

  and Grad-CAM on the grid equals CAM (on the CAM scale). With ``pool="cls"`` the class token
  is classified; the grid then folds the patch tokens entering the *last* block (the layer
  Grad-CAM uses on ViTs: the last block's output tokens get no gradient from the class token),
  is unfolded back into tokens, and only the gradient methods (``"grad_cam"``, ...) apply.
- **Attention is explicit.** Each block's :class:`Attention` computes
  :math:`A = \mathrm{softmax}(QK^\top / \sqrt{d_h})` as a tensor of the graph and passes it
  through ``attn_drop`` (an ``nn.Dropout``, probability 0 by default, so an identity): a forward
  hook on ``blocks[i].attn.attn_drop`` sees the attention probabilities ``(B, heads, T, T)``
  (``T`` tokens, the class token first with ``pool="cls"``), and a gradient taken with respect
  to its output is the attention's gradient (attention rollout, Abnar & Zuidema 2020; Chefer et
  al. 2021's relevance). :attr:`TinyViT.attention_layers` lists their names. The module names
  follow timm's ``VisionTransformer`` (``patch_embed.proj``, ``blocks.i.norm1``,
  ``blocks.i.attn.qkv``, ``blocks.i.attn.attn_drop``, ``blocks.i.attn.proj``, ``blocks.i.mlp``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from xai_feedback._checks import (
    check_choice,
    check_int,
    check_model_input,
    check_number,
    check_shape,
    check_sizes,
)
from xai_feedback.errors import RangeError
from xai_feedback.functional.tokens import tokens_to_grid

__all__ = ["Attention", "PatchEmbed", "TinyViT", "TokenGrid", "TransformerBlock"]

POOLS = ("avg", "cls")
"""Choices of :class:`TinyViT`'s ``pool``."""


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` patches, linearly embedded (a strided convolution).

    Shape:
        - input: :math:`(B, C_{in}, H, W)`; output: :math:`(B, HW / p^2, D)` tokens, row-major.
    """

    def __init__(self, in_channels: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, N, D)`` of ``images``."""
        tokens: torch.Tensor = self.proj(images).flatten(2).transpose(1, 2)
        return tokens


class TokenGrid(nn.Module):
    """Fold tokens ``(B, h w, C)`` to a feature map ``(B, C, h, w)`` (row-major), a relabeling.

    The layer the CAM hooks explain on a :class:`TinyViT`: its output is 4-D like a CNN's
    feature map. The fold is :func:`~xai_feedback.functional.tokens.tokens_to_grid` (no
    prefix tokens: the class token is split off before); :meth:`unfold` is its inverse.

    Args:
        height: Grid rows ``h``.
        width: Grid columns ``w``.

    Shape:
        - input: :math:`(B, hw, C)`; output: :math:`(B, C, h, w)`.

    Example:
        >>> grid = TokenGrid(2, 3)
        >>> tokens = torch.arange(12.0).view(1, 6, 2)
        >>> grid(tokens)[0, 1]
        tensor([[ 1.,  3.,  5.],
                [ 7.,  9., 11.]])
        >>> torch.equal(grid.unfold(grid(tokens)), tokens)
        True
    """

    def __init__(self, height: int, width: int) -> None:
        super().__init__()
        self.height = check_int(height, "height", minimum=1)
        self.width = check_int(width, "width", minimum=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """The grid ``(B, C, h, w)`` of ``tokens``."""
        check_shape(tokens, "B N C", "tokens")
        return tokens_to_grid(tokens, (self.height, self.width), prefix_tokens=0)

    def unfold(self, grid: torch.Tensor) -> torch.Tensor:
        """The tokens ``(B, h w, C)`` of a grid (the inverse of :meth:`forward`)."""
        check_shape(grid, "B C h w", "grid", h=self.height, w=self.width)
        return grid.flatten(2).transpose(1, 2)

    def extra_repr(self) -> str:
        """``height=h, width=w`` in the module's repr."""
        return f"height={self.height}, width={self.width}"


class Attention(nn.Module):
    r"""Multi-head self-attention with its probabilities in the graph.

    .. math:: A_h = \mathrm{softmax}\!\big(Q_h K_h^\top / \sqrt{d_h}\big), \qquad
              \mathrm{out} = W_o \,[A_1 V_1; \dots; A_H V_H]

    ``A`` passes through ``attn_drop`` (dropout of probability ``dropout``; an identity at 0):
    hook that module to read ``A`` ``(B, heads, T, T)`` or take gradients with respect to it.

    Shape:
        - input: :math:`(B, T, D)`; output: :math:`(B, T, D)`.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise RangeError(f"`dim` ({dim}) must be a multiple of `heads` ({heads}).")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        # timm's flag, read by AttentionCapture: this module always takes the explicit path
        self.fused_attn = False
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_drop = nn.Dropout(dropout)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over the tokens ``x`` ``(B, T, D)``."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = self.attn_drop(torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1))
        out: torch.Tensor = self.proj((attn @ v).transpose(1, 2).reshape(b, t, d))
        return out


class Mlp(nn.Module):
    """``fc1 -> GELU -> fc2``, the transformer's feed-forward part."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``fc2(gelu(fc1(x)))``."""
        out: torch.Tensor = self.fc2(self.act(self.fc1(x)))
        return out


class TransformerBlock(nn.Module):
    r"""Pre-norm transformer block.

    :math:`x \leftarrow x + \mathrm{Attn}(\mathrm{LN}_1(x))`, then
    :math:`x \leftarrow x + \mathrm{MLP}(\mathrm{LN}_2(x))`.

    Shape:
        - input: :math:`(B, T, D)`; output: :math:`(B, T, D)`.
    """

    def __init__(self, dim: int, heads: int, hidden: int, attn_dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, attn_dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output tokens."""
        x = x + self.attn(self.norm1(x))
        out: torch.Tensor = x + self.mlp(self.norm2(x))
        return out


class TinyViT(nn.Module):
    r"""A small pre-norm vision transformer for 28-pixel images, trained from scratch.

    Patch embedding (``patch_size`` x ``patch_size``, a 7x7 grid at 28 px and patch 4) plus a
    learned position embedding, ``depth`` :class:`TransformerBlock` of width ``dim`` with
    ``heads`` heads and an MLP of ``mlp_ratio * dim`` units, a final LayerNorm and a linear
    ``classifier``. ``pool="avg"`` (default) averages the patch tokens: the final normed tokens
    are folded by ``token_grid`` (the CAM layer), average-pooled and classified, so
    :math:`y_k = \frac{1}{hw}\sum_{i,j}\mathrm{CAM}_k(i,j) + b_k` and CAM is exact.
    ``pool="cls"`` prepends a class token and classifies it; ``token_grid`` then folds the patch
    tokens entering the last block (Grad-CAM's layer on a ViT; CAM does not apply). See the
    module docstring for the attention probabilities (``blocks.i.attn.attn_drop``).

    Args:
        in_channels: Channels of the input images.
        num_classes: Number of classes ``K``.
        image_size: Side of the (square) input images; a multiple of ``patch_size``.
        patch_size: Side of the patches.
        dim: Token width ``D`` (a multiple of ``heads``).
        depth: Number of transformer blocks (>= 1).
        heads: Attention heads per block.
        mlp_ratio: Hidden units of each MLP per token channel (> 0).
        pool: ``"avg"`` (global average of the patch tokens; exact CAM) or ``"cls"``.
        attn_dropout: Dropout on the attention probabilities (0: ``attn_drop`` is an identity).
        generator: Random generator for the initial weights (reproducible without touching
            the global seed); ``None`` uses the global generator for the same scheme.

    Attributes:
        patch_embed: The patch embedding (``patch_embed.proj``, a strided convolution).
        pos_embed: Learned position embedding ``(1, T, D)``.
        cls_token: The class token ``(1, 1, D)`` (``pool="cls"``), else ``None``.
        blocks: The transformer blocks (``nn.ModuleList``).
        norm: The final LayerNorm.
        token_grid: The :class:`TokenGrid` whose output the CAM hooks use (``cam_layer``).
        pool: Global average pooling of the grid (``pool="avg"``; an identity for ``"cls"``).
        classifier: The linear head.

    Shape:
        - Input: :math:`(B, C_{in}, S, S)` with ``S = image_size``
        - Output: :math:`(B, K)` logits

    Example:
        >>> from xai_feedback.hooks import CAMHook
        >>> model = TinyViT(dim=32, depth=2, generator=torch.Generator().manual_seed(0))
        >>> x = torch.rand(2, 1, 28, 28)
        >>> with CAMHook(model) as hook:
        ...     logits = model(x)
        ...     maps = hook.maps(logits, all_classes=True)
        >>> maps.shape
        torch.Size([2, 10, 7, 7])
        >>> bool(torch.allclose(maps.mean((2, 3)) + model.classifier.bias, logits, atol=1e-5))
        True
        >>> model.attention_layers[0]
        'blocks.0.attn.attn_drop'
    """

    cam_layer = "token_grid"
    """Dotted name of the layer whose output the CAM hooks use by default."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
        patch_size: int = 4,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        pool: str = "avg",
        attn_dropout: float = 0.0,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        check_sizes(
            in_channels=in_channels, patch_size=patch_size, dim=dim, depth=depth, heads=heads
        )
        check_int(num_classes, "num_classes", minimum=2)
        check_int(image_size, "image_size", minimum=patch_size)
        check_number(mlp_ratio, "mlp_ratio", minimum=0, strict_minimum=True)
        check_number(attn_dropout, "attn_dropout", minimum=0, maximum=1)
        self.pool_kind = check_choice(pool, "pool", POOLS)
        if image_size % patch_size:
            raise RangeError(
                f"`image_size` ({image_size}) must be a multiple of `patch_size` ({patch_size})."
            )
        if dim % heads:
            raise RangeError(f"`dim` ({dim}) must be a multiple of `heads` ({heads}).")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.image_size = image_size
        self.patch_size = patch_size
        # timm's attributes, read by the relevance capture: the tokens before the patches and
        # the pooling ("avg": the mean of the patch tokens is classified)
        self.num_prefix_tokens = int(pool == "cls")
        self.global_pool = pool
        side = image_size // patch_size
        self.patch_embed = PatchEmbed(in_channels, dim, patch_size)
        self.cls_token: nn.Parameter | None = None
        if pool == "cls":
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        tokens = side * side + (pool == "cls")
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim))
        hidden = max(1, round(mlp_ratio * dim))
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, heads, hidden, attn_dropout) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.token_grid = TokenGrid(side, side)
        self.pool: nn.Module = nn.AdaptiveAvgPool2d(1) if pool == "avg" else nn.Identity()
        self.classifier = nn.Linear(dim, num_classes)
        self.reset_parameters(generator)

    @property
    def num_features(self) -> int:
        """Channels of the CAM layer (the token width ``D``)."""
        return self.classifier.in_features

    @property
    def grid_size(self) -> tuple[int, int]:
        """``(h, w)`` of the token grid."""
        return self.token_grid.height, self.token_grid.width

    @property
    def attention_layers(self) -> list[str]:
        """Dotted names of the modules whose output is each block's attention probabilities."""
        return [f"blocks.{i}.attn.attn_drop" for i in range(len(self.blocks))]

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Re-initialize every weight: ViT's scheme, drawn from ``generator``.

        Linear and patch-embedding weights Glorot-uniform (Dosovitskiy et al.'s choice; the
        patch embedding's on its flattened kernel), biases 0, LayerNorms reset, the position
        embedding and the class token truncated normal with std 0.02 (cut at 2 std).
        """
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Linear | nn.Conv2d):
                    # Glorot-uniform on the (out, fan-in) matrix, the convolution's flattened
                    fan_out, fan_in = module.weight.shape[0], module.weight[0].numel()
                    bound = math.sqrt(6.0 / (fan_in + fan_out))
                    nn.init.uniform_(module.weight, -bound, bound, generator=generator)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
                elif isinstance(module, nn.LayerNorm):
                    module.reset_parameters()
            for param in (self.pos_embed, self.cls_token):
                if param is not None:
                    nn.init.trunc_normal_(param, std=0.02, a=-0.04, b=0.04, generator=generator)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return the logits of a batch of images."""
        check_shape(
            images, "B C H W", "images", C=self.in_channels, H=self.image_size, W=self.image_size
        )
        check_model_input(self, images)  # dtype and device: metadata only
        x = self.patch_embed(images)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            if i == last and self.cls_token is not None:
                # the patch tokens entering the last block pass through the grid (the CAM layer)
                x = torch.cat([x[:, :1], self.token_grid.unfold(self.token_grid(x[:, 1:]))], 1)
            x = block(x)
        x = self.norm(x)
        if self.cls_token is not None:
            out: torch.Tensor = self.classifier(x[:, 0])
            return out
        logits: torch.Tensor = self.classifier(torch.flatten(self.pool(self.token_grid(x)), 1))
        return logits
