r"""Transformer relevance kernels: attention rollout and Chefer et al.'s gradient-weighted rule.

Both read one forward's attention probabilities, a list (first layer first) of tensors
``(B, heads, N, N)`` (row ``i``: how token ``i`` attends to every token ``j``), propagate them
through the layers into an ``(B, N, N)`` token-to-token matrix
(:func:`rollout_matrix`, :func:`relevance_matrix`), take one query row (the class
token's) and fold its patch columns onto the ``(h, w)`` patch grid
(:func:`~xai_feedback.functional.tokens.tokens_to_grid`). The ``prefix_tokens`` leading
tokens (class, distillation, register tokens) are dropped from the columns.

The maps need that one row only: the matrix is a product of one factor per layer
:math:`F_L \cdots F_1`, so its row :math:`e_q^\top F_L \cdots F_1` is propagated as a
vector from the last layer down, :math:`L` vector-matrix products of :math:`O(B N^2)` each
instead of :math:`L` matrix products of :math:`O(B N^3)` (197 times fewer operations on a
224-pixel ViT with 16-pixel patches, in the forward and in the penalty's backward).

Every kernel is batched over images, follows its inputs' device and dtype and is
differentiable (no detach): a relevance map can sit inside a loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from xai_feedback._checks import check_floating, check_int, check_shape
from xai_feedback.errors import RangeError, ShapeError
from xai_feedback.functional.tokens import tokens_to_grid

__all__ = [
    "attention_rollout",
    "chefer_relevance",
    "relevance_matrix",
    "rollout_matrix",
]


def _check_attentions(
    attentions: Sequence[torch.Tensor], name: str = "attentions"
) -> dict[str, int]:
    if not isinstance(attentions, list | tuple):
        raise ShapeError(
            f"`{name}` must be a sequence (one tensor per layer) of (B, heads, N, N) tensors, "
            f"got {type(attentions).__name__}."
        )
    if len(attentions) == 0:
        raise ShapeError(f"`{name}` must hold at least one layer's attention, got none.")
    dims = check_shape(attentions[0], "B H N N", f"{name}[0]")
    for i, a in enumerate(attentions):
        check_floating(a, f"{name}[{i}]")
        check_shape(a, "B H N N", f"{name}[{i}]", B=dims["B"], N=dims["N"])
        if a.dtype != attentions[0].dtype or a.device != attentions[0].device:
            raise ShapeError(
                f"`{name}[{i}]` must have the dtype and device of `{name}[0]` "
                f"({attentions[0].dtype}, {attentions[0].device}), got ({a.dtype}, {a.device})."
            )
    return dims


def _identity(dims: dict[str, int], like: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(dims["N"], dtype=like.dtype, device=like.device)
    return eye.expand(dims["B"], dims["N"], dims["N"])


def rollout_matrix(attentions: Sequence[torch.Tensor]) -> torch.Tensor:
    r"""Attention rollout (Abnar & Zuidema 2020): the joint attention of every layer.

    .. math:: \hat A_l = \frac{\bar A_l + I}{\operatorname{rowsum}(\bar A_l + I)},\qquad
              \bar A_l = \frac1H \sum_h A_{l,h},\qquad
              \tilde A = \hat A_L \hat A_{L-1} \cdots \hat A_1

    The identity accounts for the residual connection; for softmax rows (sum 1) the
    normalization is the paper's :math:`\tfrac12(\bar A + I)` exactly, and with attention
    dropout in training mode it keeps every row a distribution (as Chefer et al.'s
    ``compute_rollout_attention`` in hila-chefer/Transformer-Explainability, which this
    follows, including the head average and the order of the product).

    Reference: S. Abnar, W. Zuidema, Quantifying Attention Flow in Transformers, ACL 2020.

    Args:
        attentions: Per layer (first layer first) attention probabilities ``(B, H, N, N)``.

    Returns:
        ``(B, N, N)``: row ``i`` is the share of token ``i``'s final representation that
        flows from each input token.

    Shape:
        - attentions: :math:`L \times (B, H, N, N)`; output: :math:`(B, N, N)`

    Example:
        >>> a = torch.softmax(torch.randn(2, 3, 5, 5), dim=-1)
        >>> r = rollout_matrix([a, a])
        >>> r.shape, bool(torch.allclose(r.sum(-1), torch.ones(2, 5)))
        (torch.Size([2, 5, 5]), True)
    """
    _check_attentions(attentions)
    joint = _rollout_factor(attentions[0])
    for a in attentions[1:]:
        joint = torch.bmm(_rollout_factor(a), joint)
    return joint


def relevance_matrix(
    attentions: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor]
) -> torch.Tensor:
    r"""Chefer et al.'s gradient-weighted relevance of a self-attention encoder (rules 5, 6).

    .. math:: R^{(0)} = I,\qquad
              \bar A_l = \frac1H \sum_h \big(\nabla A_{l,h} \odot A_{l,h}\big)^+,\qquad
              R^{(l)} = R^{(l-1)} + \bar A_l\, R^{(l-1)}

    over every layer in order, with :math:`\nabla A_l = \partial y_t / \partial A_l` the
    gradient of the explained logit. This is the ViT rule of hila-chefer's reference code
    (``generate_relevance`` in the notebook of Transformer-MM-Explainability, and
    hila-chefer/RobustViT ``ViT/explainer.py``): every block from the first, the ReLU taken on
    the product *before* the head average, :math:`R` starting at the identity. Batches: the
    ICCV notebook's ``avg_heads`` reshapes ``(B, H, N, N)`` to ``(B * H, N, N)`` and averages
    over that axis, which mixes the images of a batch (it ran one image at a time); RobustViT's
    batched version averages over the heads only, as here: a batch gives what each image
    gives alone.

    Reference: H. Chefer, S. Gur, L. Wolf, Generic Attention-model Explainability for
    Interpreting Bi-Modal and Encoder-Decoder Transformers, ICCV 2021.

    Args:
        attentions: Per layer (first layer first) attention probabilities ``(B, H, N, N)``.
        gradients: The gradient of the explained score with respect to each of them (same
            shapes); taken with ``create_graph=True`` they keep the result differentiable in
            second order.

    Returns:
        ``(B, N, N)`` relevance.

    Shape:
        - attentions, gradients: :math:`L \times (B, H, N, N)`; output: :math:`(B, N, N)`

    Example:
        >>> a = torch.softmax(torch.randn(1, 2, 3, 3), dim=-1)
        >>> r = relevance_matrix([a], [torch.ones_like(a)])  # I + mean_h(A) @ I
        >>> bool(torch.allclose(r, torch.eye(3) + a.mean(1)))
        True
    """
    dims = _check_gradients(attentions, gradients)
    rel = _identity(dims, attentions[0])
    for a, g in zip(attentions, gradients, strict=True):
        rel = rel + torch.bmm(_weighted_heads(a, g), rel)
    return rel


def _check_gradients(
    attentions: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor]
) -> dict[str, int]:
    """``attentions``' dimensions, once ``gradients`` are checked to match them layer by layer."""
    dims = _check_attentions(attentions)
    _check_attentions(gradients, "gradients")
    if len(gradients) != len(attentions):
        raise ShapeError(
            f"`gradients` must have one tensor per layer of `attentions` ({len(attentions)}), "
            f"got {len(gradients)}."
        )
    for i, (a, g) in enumerate(zip(attentions, gradients, strict=True)):
        if g.shape != a.shape or g.dtype != a.dtype:
            raise ShapeError(
                f"`gradients[{i}]` must have the shape and dtype of `attentions[{i}]` "
                f"({tuple(a.shape)}, {a.dtype}), got ({tuple(g.shape)}, {g.dtype})."
            )
    return dims


def _weighted_heads(attention: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    r"""Chefer et al.'s rule 5: :math:`\frac1H \sum_h (\nabla A_h \odot A_h)^+`, ``(B, N, N)``."""
    return (gradient * attention).clamp(min=0).mean(dim=1)


def _rollout_factor(attention: torch.Tensor) -> torch.Tensor:
    """One layer of the rollout: the head mean plus the identity, rows normalized."""
    aug = attention.mean(dim=1) + torch.eye(
        int(attention.shape[-1]), dtype=attention.dtype, device=attention.device
    )
    return aug / aug.sum(dim=-1, keepdim=True)


def _query_vector(
    dims: dict[str, int], query: int | None, prefix_tokens: int, like: torch.Tensor
) -> torch.Tensor:
    """The row read, as weights over the tokens ``(B, 1, N)``: ``e_q``, or the patch rows' mean."""
    n = dims["N"]
    weights = torch.zeros(dims["B"], 1, n, dtype=like.dtype, device=like.device)
    if query is None:  # mean-pooled models: the patch tokens' rows, averaged
        check_int(prefix_tokens, "prefix_tokens", minimum=0)
        if prefix_tokens >= n:
            raise ShapeError(f"`prefix_tokens`={prefix_tokens} leaves no patch token of N={n}.")
        weights[..., prefix_tokens:] = 1.0 / (n - prefix_tokens)
        return weights
    check_int(query, "query", minimum=0)
    if query >= n:
        raise RangeError(f"`query` must be a token index in [0, {n}), got {query}.")
    weights[..., query] = 1.0
    return weights


def attention_rollout(
    attentions: Sequence[torch.Tensor],
    grid: tuple[int, int] | None = None,
    *,
    prefix_tokens: int = 1,
    query: int | None = 0,
) -> torch.Tensor:
    r"""Attention-rollout maps: the query token's row of :func:`rollout_matrix` on the grid.

    .. math:: M_b = \operatorname{fold}\big(\tilde A_b[q, P:]\big)

    (:math:`P` = ``prefix_tokens``). Class-agnostic (no gradient). ``query=0`` reads the
    class token (Abnar & Zuidema; Chefer et al.'s ``generate_rollout`` reads
    ``rollout[:, 0, 1:]``); ``query=None`` averages the patch tokens' rows, for models that
    pool the patch tokens instead.

    Args:
        attentions: Per layer attention probabilities ``(B, H, N, N)``.
        grid: Patch grid ``(h, w)`` (default: square).
        prefix_tokens: Leading non-patch tokens.
        query: Row read: a token index, or ``None`` for the mean of the patch rows.

    Shape:
        - attentions: :math:`L \times (B, H, N, N)`; output: :math:`(B, h, w)`

    Example:
        >>> a = torch.softmax(torch.randn(2, 3, 5, 5), dim=-1)
        >>> attention_rollout([a, a], prefix_tokens=1).shape
        torch.Size([2, 2, 2])
    """
    dims = _check_attentions(attentions)
    row = _query_vector(dims, query, prefix_tokens, attentions[0])
    for a in reversed(attentions):  # the query row of the product, last factor first
        row = torch.bmm(row, _rollout_factor(a))
    return tokens_to_grid(row[:, 0], grid, prefix_tokens=prefix_tokens)


def chefer_relevance(
    attentions: Sequence[torch.Tensor],
    gradients: Sequence[torch.Tensor],
    grid: tuple[int, int] | None = None,
    *,
    prefix_tokens: int = 1,
    query: int | None = 0,
) -> torch.Tensor:
    r"""Chefer et al.'s relevance maps: the query row of :func:`relevance_matrix` on the grid.

    .. math:: M_b = \operatorname{fold}\big(R_b[q, P:]\big)

    (:math:`P` = ``prefix_tokens``). The reference reads ``R[0, 1:]`` (class token, one
    prefix token).

    Args:
        attentions: Per layer attention probabilities ``(B, H, N, N)``.
        gradients: The explained score's gradients with respect to them.
        grid: Patch grid ``(h, w)`` (default: square).
        prefix_tokens: Leading non-patch tokens.
        query: Row read: a token index, or ``None`` for the mean of the patch rows.

    Shape:
        - attentions, gradients: :math:`L \times (B, H, N, N)`; output: :math:`(B, h, w)`

    Example:
        >>> a = torch.softmax(torch.randn(2, 3, 5, 5), dim=-1)
        >>> chefer_relevance([a], [a], prefix_tokens=1).shape
        torch.Size([2, 2, 2])
    """
    dims = _check_gradients(attentions, gradients)
    row = _query_vector(dims, query, prefix_tokens, attentions[0])
    for a, g in zip(reversed(attentions), reversed(gradients), strict=True):
        row = row + torch.bmm(row, _weighted_heads(a, g))
    return tokens_to_grid(row[:, 0], grid, prefix_tokens=prefix_tokens)
