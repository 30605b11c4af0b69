r"""Contextual decomposition (CD) of a plain chain of layers, and CDEP's penalty.

Contextual decomposition (Murdoch et al. 2018; Singh et al. 2019) splits every activation of
a network into a part :math:`\beta` due to a chosen region of the input and a remainder
:math:`\gamma`, layer by layer, so that :math:`\beta + \gamma` is the layer's true output
at every layer. CDEP (Rieger et al., ICML 2020, "Interpretations are useful: penalizing
explanations to align neural networks with prior knowledge") penalizes the logits' part due
to the shortcut region. The rules, for the layers a plain CNN uses:

- affine layers (``Conv2d``, ``Linear``, ``BatchNorm2d`` with its running statistics): the
  linear part is applied to each part, the bias is shared in proportion to the parts'
  magnitudes, :math:`\beta' = W\beta + \frac{|W\beta|}{|W\beta| + |W\gamma|}\, b` (half each
  where both are 0);
- ``ReLU``: :math:`\beta' = \mathrm{ReLU}(\beta)`,
  :math:`\gamma' = \mathrm{ReLU}(\beta + \gamma) - \mathrm{ReLU}(\beta)`;
- ``MaxPool2d``: each part is read at the position where :math:`\beta + \gamma` is largest;
- average pooling, ``Flatten``, ``Dropout`` (eval: the identity), ``Identity``: applied to
  each part (they are linear without bias).

These are the rules of the authors' code (``deep-explanation-penalization``, ``src/cd.py``)
and of the XIL typology's copy of it (``xil_methods/cd_util/cd.py``), which treat any module
as evaluated in eval mode. Any other module raises :class:`~xai_feedback.errors.LayerError`
naming its type.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from xai_feedback._checks import check_floating, check_masks, check_shape
from xai_feedback.errors import DTypeError, LayerError, ShapeError

__all__ = [
    "DECOMPOSABLE",
    "cdep_penalty",
    "contextual_decomposition",
    "decompose_module",
    "split_bias",
]

DECOMPOSABLE: tuple[type[nn.Module], ...] = (
    nn.Conv2d,
    nn.Linear,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Flatten,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
)
"""The module types :func:`decompose_module` propagates."""


def split_bias(
    relevant: torch.Tensor, irrelevant: torch.Tensor, bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Share a bias between the two parts in proportion to their magnitudes.

    .. math:: \beta' = \beta + \frac{|\beta|}{|\beta| + |\gamma|}\, b, \qquad
              \gamma' = \gamma + \frac{|\gamma|}{|\beta| + |\gamma|}\, b

    (half each where :math:`|\beta| + |\gamma| = 0`), so :math:`\beta' + \gamma' =
    \beta + \gamma + b`.

    Args:
        relevant: The region's part :math:`\beta` of the pre-bias output.
        irrelevant: The rest :math:`\gamma`.
        bias: Broadcastable to ``relevant``.

    Shape:
        - relevant, irrelevant: any, the same; bias: broadcastable

    Example:
        >>> split_bias(torch.tensor([3.0, 0.0]), torch.tensor([1.0, 0.0]), torch.tensor(4.0))
        (tensor([6., 2.]), tensor([2., 2.]))
    """
    a, b = relevant.abs(), irrelevant.abs()
    total = a + b
    positive = total > 0
    share = torch.where(positive, a / torch.where(positive, total, torch.ones_like(total)), 0.5)
    return relevant + share * bias, irrelevant + (1 - share) * bias


def _affine(
    relevant: torch.Tensor,
    irrelevant: torch.Tensor,
    linear: torch.Tensor,
    bias: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    n = int(relevant.shape[0])
    rel, irrel = linear[:n], linear[n:]
    return (rel, irrel) if bias is None else split_bias(rel, irrel, bias)


def _batchnorm(
    module: nn.BatchNorm2d, relevant: torch.Tensor, irrelevant: torch.Tensor, both: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm2d with its running statistics: an affine map per channel."""
    if module.running_mean is None or module.running_var is None:
        raise LayerError(
            "CD reads BatchNorm2d with its running statistics (eval mode), but this one "
            "has none (track_running_stats=False)."
        )
    scale = torch.rsqrt(module.running_var + module.eps)
    if module.weight is not None:
        scale = scale * module.weight
    shift = -module.running_mean * scale
    if module.bias is not None:
        shift = shift + module.bias
    return _affine(relevant, irrelevant, both * scale.view(1, -1, 1, 1), shift.view(1, -1, 1, 1))


def _max_pool(
    module: nn.MaxPool2d, relevant: torch.Tensor, irrelevant: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Max pooling: both parts read where the sum is largest."""
    pooled, index = F.max_pool2d(
        relevant + irrelevant,
        module.kernel_size,
        module.stride,
        module.padding,
        module.dilation,
        ceil_mode=module.ceil_mode,
        return_indices=True,
    )
    flat = index.flatten(2)
    rel = relevant.flatten(2).gather(2, flat).view_as(pooled)
    irrel = irrelevant.flatten(2).gather(2, flat).view_as(pooled)
    return rel, irrel


def decompose_module(
    module: nn.Module, relevant: torch.Tensor, irrelevant: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Propagate the two parts of one layer's input through ``module`` (CD's rules).

    The module is read in eval mode whatever its flag: ``BatchNorm2d`` with its running
    statistics, ``Dropout`` as the identity.

    Args:
        module: One of :data:`DECOMPOSABLE`.
        relevant: The region's part :math:`\beta` of the layer's input.
        irrelevant: The rest :math:`\gamma`.

    Returns:
        The parts of the layer's output; their sum is the layer's (eval-mode) output.

    Raises:
        LayerError: Another module type, or a ``BatchNorm2d`` without running statistics.
        ShapeError: The two parts differ in shape.

    Shape:
        - relevant, irrelevant: the module's input shape; outputs: its output shape

    Example:
        >>> rel, irrel = torch.tensor([[2.0, -1.0]]), torch.tensor([[-3.0, 2.0]])
        >>> decompose_module(nn.ReLU(), rel, irrel)
        (tensor([[2., 0.]]), tensor([[-2.,  1.]]))
    """
    if not isinstance(module, nn.Module):
        raise DTypeError(f"`module` must be an nn.Module, got {type(module).__name__}.")
    if relevant.shape != irrelevant.shape:
        raise ShapeError(
            f"`relevant` and `irrelevant` must have the same shape, got "
            f"{tuple(relevant.shape)} and {tuple(irrelevant.shape)}."
        )
    both = torch.cat([relevant, irrelevant])
    if isinstance(module, nn.Conv2d):
        bias = None if module.bias is None else module.bias.view(1, -1, 1, 1)
        return _affine(relevant, irrelevant, module._conv_forward(both, module.weight, None), bias)
    if isinstance(module, nn.Linear):
        return _affine(relevant, irrelevant, F.linear(both, module.weight), module.bias)
    if isinstance(module, nn.BatchNorm2d):
        return _batchnorm(module, relevant, irrelevant, both)
    if isinstance(module, nn.ReLU):
        rel = F.relu(relevant)
        return rel, F.relu(relevant + irrelevant) - rel
    if isinstance(module, nn.MaxPool2d):
        return _max_pool(module, relevant, irrelevant)
    if isinstance(module, nn.AvgPool2d | nn.AdaptiveAvgPool2d):
        out = module(both)
        n = int(relevant.shape[0])
        return out[:n], out[n:]
    if isinstance(module, nn.Flatten):
        return module(relevant), module(irrelevant)
    if isinstance(module, nn.Dropout | nn.Dropout2d | nn.Identity):
        return relevant, irrelevant
    raise LayerError(
        f"contextual decomposition has no rule for {type(module).__name__}; it propagates "
        f"{', '.join(t.__name__ for t in DECOMPOSABLE)} in a plain chain (no residual adds, "
        "attention or other operations between modules)."
    )


def contextual_decomposition(
    layers: Sequence[nn.Module],
    images: torch.Tensor,
    masks: torch.Tensor,
    *,
    shapes: Sequence[Sequence[int] | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The CD of a chain of layers' output into the masked region's part and the rest.

    .. math:: \beta_0 = M \odot x, \quad \gamma_0 = (1 - M) \odot x, \quad
              (\beta_{l+1}, \gamma_{l+1}) = \mathrm{CD}_{f_l}(\beta_l, \gamma_l)

    with the rules of :func:`decompose_module`; :math:`\beta_L + \gamma_L` is the chain's
    output (in eval mode). Before each layer both parts are reshaped to that layer's input
    shape (``shapes[l]``, per image); without ``shapes``, a ``Linear`` after a spatial layer
    flattens its input (as a ``view`` in a model's ``forward`` would).

    Args:
        layers: The layers, in the order the forward runs them.
        images: ``(B, C, H, W)`` inputs.
        masks: ``(B, H, W)`` region masks (1 = the region whose part is :math:`\beta`).
        shapes: Per layer, the input's shape without the batch dimension, or ``None``.

    Returns:
        ``(relevant, irrelevant)``, each of the chain's output shape.

    Raises:
        LayerError: A layer without a rule (see :func:`decompose_module`).
        ShapeError: Masks that do not match the images, or a wrong number of ``shapes``.

    Shape:
        - images: :math:`(B, C, H, W)`; masks: :math:`(B, H, W)`; outputs: :math:`(B, K)`

    Example:
        >>> lin = nn.Linear(4, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = lin.weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
        >>> x, m = torch.ones(1, 1, 2, 2), torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
        >>> rel, irrel = contextual_decomposition([lin], x, m)
        >>> float(rel), float(irrel)
        (1.0, 9.0)
    """
    dims = check_shape(images, "B C H W", "images")
    check_shape(masks, "B H W", "masks", B=dims["B"], H=dims["H"], W=dims["W"])
    check_masks(masks, "masks", sync=False)
    check_floating(images, "images")
    if shapes is not None and len(shapes) != len(layers):
        raise ShapeError(
            f"`shapes` must give one input shape per layer ({len(layers)}), got {len(shapes)}."
        )
    m = masks.to(images.dtype).unsqueeze(1)
    relevant, irrelevant = m * images, (1 - m) * images
    n = dims["B"]
    for index, layer in enumerate(layers):
        shape = shapes[index] if shapes is not None else None
        if shape is not None:
            relevant = relevant.reshape(n, *shape)
            irrelevant = irrelevant.reshape(n, *shape)
        elif isinstance(layer, nn.Linear) and relevant.dim() > 2:
            relevant, irrelevant = relevant.flatten(1), irrelevant.flatten(1)
        relevant, irrelevant = decompose_module(layer, relevant, irrelevant)
    return relevant, irrelevant


def cdep_penalty(relevant: torch.Tensor, irrelevant: torch.Tensor) -> torch.Tensor:
    r"""CDEP's explanation penalty on the decomposed logits (Rieger et al. 2020).

    .. math:: P = \operatorname{mean}_{b,k}\ \operatorname{softmax}(\beta_{bk},
              \gamma_{bk})_0 = \operatorname{mean}_{b,k}\ \sigma(\beta_{bk} - \gamma_{bk})

    the authors' ``softmax(stack((rel, irrel)))[:, 0].mean()``, also the XIL typology's.

    Ill-posed as a measure of the region's influence: it is not symmetric in the sign of
    :math:`\beta`, so a region that decides the class by pushing the *other* classes' logits
    down (:math:`\beta \to -\infty`) has a penalty near 0; and it compares :math:`\beta` to
    :math:`\gamma`, so a large :math:`\gamma` (any evidence elsewhere) lowers it without
    changing the region's part.

    Args:
        relevant: The region's part of the logits :math:`\beta`.
        irrelevant: The rest :math:`\gamma`.

    Shape:
        - relevant, irrelevant: :math:`(B, K)`; output: scalar

    Example:
        >>> cdep_penalty(torch.zeros(2, 3), torch.zeros(2, 3))
        tensor(0.5000)
    """
    check_shape(relevant, "B K", "relevant")
    check_shape(irrelevant, "B K", "irrelevant", B=int(relevant.shape[0]))
    if relevant.shape != irrelevant.shape:
        raise ShapeError(
            f"`relevant` and `irrelevant` must have the same shape, got "
            f"{tuple(relevant.shape)} and {tuple(irrelevant.shape)}."
        )
    return torch.sigmoid(relevant - irrelevant).mean()
