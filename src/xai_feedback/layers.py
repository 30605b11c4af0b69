"""Which layer to explain: unwrap wrapped models, resolve names, find the pooled feature map.

Every entry of the library that computes a map (:class:`~xai_feedback.hooks.CAMHook`,
:func:`~xai_feedback.attribution.attribute`, proxy attention,
:func:`~xai_feedback.pcace.pcace`, the penalties' objectives) resolves its ``layer=`` here:

- a module of the model, or its dotted name. Names are those of the *unwrapped* model; the
  ``module.`` prefix of ``nn.DataParallel`` / ``DistributedDataParallel`` and the
  ``_orig_mod.`` prefix of ``torch.compile`` are accepted and stripped;
- ``None``: the model's ``cam_layer`` attribute when it has one (the reference models do),
  else the **spatial feature map that feeds the global pooling and the classifier**, found from
  the model's structure (:func:`find_feature_layer`). That is ``layer4`` of a ResNet, ResNeXt
  or Wide-ResNet, ``features`` of VGG, DenseNet, MobileNet, EfficientNet and ConvNeXt,
  ``trunk_output`` of RegNet, and the last stage (or final norm/activation) of timm models.
  It is never "the last Conv2d", which in a ResNet is the second convolution inside the last
  residual branch.

  For **vision transformers** (:func:`find_token_layer`): a single stack of pre-norm
  transformer blocks (ViT, DeiT, EVA, BEiT, Hugging Face ViT) gives the *first norm of the last
  block* (``encoder.layers.encoder_layer_11.ln_1`` of torchvision's ViT-B/16,
  ``blocks.11.norm1`` in timm), whose patch tokens still reach the logits through the last
  block's attention; a stack of post-norm blocks (``nn.TransformerEncoderLayer``'s default
  ``norm_first=False``, whose first norm runs after the attention) gives the previous
  block's output, the tokens entering the last block; hierarchical transformers (Swin) give
  the final norm that feeds their global pooling. It is never the patch embedding (a map of
  the input, not of the model's evidence): a search that ends there is refused.

When the structure does not tell, :class:`~xai_feedback.errors.LayerError` lists candidate
layers.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import nn

from xai_feedback.errors import DTypeError, LayerError

__all__ = [
    "ResolvedLayer",
    "TokenLayout",
    "find_classifier",
    "find_feature_layer",
    "find_head",
    "find_token_layer",
    "pre_norm",
    "resolve_layer",
    "token_layout",
    "transformer_stacks",
    "unwrap_model",
]

_log = logging.getLogger("xai_feedback")

_WRAPPER_ATTRS = ("module", "_orig_mod")
_PASSTHROUGH = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.Flatten)
_PRE_NORMS = ("norm1", "ln_1", "layernorm_before")
"""Attribute names of a transformer block's first norm (timm, torchvision, Hugging Face)."""
_ATTENTION_NAMES = ("attn", "attention", "self_attn", "self_attention")
_logged: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()


class ResolvedLayer(NamedTuple):
    """A layer of a model: its dotted name in the unwrapped model and the module itself."""

    name: str
    module: nn.Module


def _is_wrapper(model: nn.Module) -> bool:
    name = type(model).__name__
    return name in ("DataParallel", "DistributedDataParallel", "OptimizedModule") and any(
        isinstance(getattr(model, attr, None), nn.Module) for attr in _WRAPPER_ATTRS
    )


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside ``nn.DataParallel``, ``DistributedDataParallel`` and ``torch.compile``.

    Wrappers may be stacked (a compiled DDP model): all are removed. Hooks registered on the
    unwrapped model's modules fire when the wrapper runs (for ``torch.compile``, see
    :class:`~xai_feedback.hooks.CAMHook` for how a compiled graph that bypasses them is reported).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3))
        >>> unwrap_model(nn.DataParallel(net)) is net
        True
    """
    if not isinstance(model, nn.Module):
        raise DTypeError(f"`model` must be an nn.Module, got {type(model).__name__}.")
    while _is_wrapper(model):
        inner = next(getattr(model, a) for a in _WRAPPER_ATTRS if hasattr(model, a))
        model = inner
    return model


def _strip_prefixes(name: str) -> str:
    parts = name.split(".")
    while parts and parts[0] in _WRAPPER_ATTRS:
        parts = parts[1:]
    return ".".join(parts)


def _is_global_pool(module: nn.Module) -> bool:
    if isinstance(module, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
        size = module.output_size
        return size in (1, (1, 1))
    name = type(module).__name__
    return "GlobalPool" in name or name in ("SelectAdaptivePool2d", "AdaptiveAvgMaxPool2d")


def _has(module: nn.Module, kinds: tuple[type[nn.Module], ...]) -> bool:
    return any(isinstance(m, kinds) for m in module.modules())


def pre_norm(block: nn.Module) -> str | None:
    """The attribute name of a transformer block's first norm, or ``None`` if not a block.

    A transformer block is a module with a first norm (``norm1``, ``ln_1`` or
    ``layernorm_before``) and an attention child: an ``nn.MultiheadAttention``, a module whose
    class name contains ``Attention`` or ``Attn`` (timm's ``ClassAttn``, ``TalkingHeadAttn``),
    or a child named ``attn``, ``attention``, ``self_attn`` or ``self_attention``.
    """
    for attr in _PRE_NORMS:
        if isinstance(getattr(block, attr, None), nn.Module):
            break
    else:
        return None
    for name, child in block.named_children():
        kind = type(child).__name__.lower()
        if (
            isinstance(child, nn.MultiheadAttention)
            or "attention" in kind
            or "attn" in kind
            or name in _ATTENTION_NAMES
        ):
            return attr
    return None


def transformer_stacks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The stacks of transformer blocks of ``model``: ``(name, container)`` in module order.

    A stack is an ``nn.Sequential`` or ``nn.ModuleList`` whose every child is a transformer
    block (see :func:`pre_norm`): one for a ViT (``blocks``, ``encoder.layers``), one per
    stage for Swin.

    Example:
        >>> transformer_stacks(nn.Sequential(nn.Conv2d(3, 8, 3)))
        []
    """
    return [
        (name, module)
        for name, module in unwrap_model(model).named_modules()
        if isinstance(module, nn.Sequential | nn.ModuleList)
        and len(module) > 0
        and all(pre_norm(child) is not None for child in module.children())
    ]


def _is_transformer(module: nn.Module) -> bool:
    return any(pre_norm(m) is not None for m in module.modules())


def _is_head(module: nn.Module) -> bool:
    """A classifier head: holds a Linear (or is a global pool), no convolution, no block."""
    if _has(module, (nn.Conv2d,)) and not _is_global_pool(module):
        return False
    if _is_transformer(module):  # a transformer stage holds Linears too: not a head
        return False
    return _has(module, (nn.Linear,)) or any(_is_global_pool(m) for m in module.modules())


def _is_spatial(name: str, module: nn.Module) -> bool:
    """Could produce the feature map: anything but pass-through, pooling and pre-logits."""
    if name == "pre_logits":  # timm: the head's first part (e.g. VGG's ConvMlp), after pooling
        return False
    if isinstance(module, _PASSTHROUGH) or _is_global_pool(module):
        return False
    if type(module).__name__ == "Permute":  # torchvision Swin: explain the norm before it
        return False
    return not isinstance(
        module, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d | nn.AvgPool2d | nn.MaxPool2d
    )


def _last_called(name: str, module: nn.Module) -> str:
    """``name``, or its last element for an ``nn.ModuleList``.

    A ``ModuleList`` is never called itself, so a hook on it never fires (torchvision's MaxViT
    iterates over its ``blocks``).
    """
    while isinstance(module, nn.ModuleList) and len(module) > 0:
        index, module = list(module.named_children())[-1]
        name = f"{name}.{index}"
    return name


def _search(module: nn.Module, prefix: str) -> str | None:
    children = list(module.named_children())
    for i, (_, child) in enumerate(children):
        if not _is_head(child):
            continue
        for name, before in reversed(children[:i]):
            if _is_spatial(name, before):
                return prefix + _last_called(name, before)
        return None
    # No head at this level: descend into the single child that holds the convolutions and
    # the last Linear (a model wrapped in a container, e.g. Sequential(normalize, resnet)).
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        return None
    holders = [(n, c) for n, c in children if any(m is linears[-1] for m in c.modules())]
    if len(holders) == 1 and _has(holders[0][1], (nn.Conv2d,)):
        name, child = holders[0]
        return _search(child, f"{prefix}{name}.")
    return None


def _candidates(model: nn.Module, limit: int = 8) -> list[str]:
    stacks = transformer_stacks(model)
    if stacks:  # the first norm of the last blocks
        blocks = [
            f"{name}.{i}.{pre_norm(block)}"
            for name, stack in stacks
            for i, block in enumerate(stack.children())
        ]
        return blocks[-limit:]
    names = [n for n, m in model.named_modules() if n and _has(m, (nn.Conv2d,))]
    top = [n for n in names if "." not in n]
    return (top or names)[-limit:]


_TOKEN_PARAMETERS = (
    "cls_token",
    "class_token",
    "dist_token",
    "distillation_token",
    "reg_token",
    "register_tokens",
)
"""Names of the learned prefix-token tensors (timm, torchvision, Hugging Face)."""
_CLASS_TOKENS = ("cls_token", "class_token")


def _pair(value: object) -> tuple[int, int] | None:
    """``value`` as ``(h, w)``: an int (square) or a pair of ints, else ``None``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if (
        isinstance(value, tuple | list)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return int(value[0]), int(value[1])
    return None


def _count(module: nn.Module) -> int | None:
    count = getattr(module, "num_prefix_tokens", None)
    return count if isinstance(count, int) and not isinstance(count, bool) else None


def _token_tensors(module: nn.Module, names: tuple[str, ...]) -> list[torch.Tensor]:
    return [t for n in names if isinstance(t := getattr(module, n, None), torch.Tensor)]


def _declared_grid(model: nn.Module) -> tuple[int, int] | None:
    """A non-square patch grid declared by the model (timm's ``patch_embed.grid_size``)."""
    for module in model.modules():
        if getattr(module, "dynamic_img_size", False) or getattr(module, "dynamic_size", False):
            return None
        size = getattr(module, "grid_size", None)
        if isinstance(size, tuple) and _pair(size) is not None and size[0] != size[1]:
            return _pair(size)
    return None


@dataclass(frozen=True)
class TokenLayout:
    """How a vision transformer lays out its tokens, as :func:`token_layout` reads it.

    Attributes:
        prefix_tokens: Tokens before the patch tokens (class, distillation, register), or
            ``None`` when the model declares none: no ``num_prefix_tokens`` and no token
            tensor (a CNN, Swin, or a transformer that does not say).
        grid: A non-square patch grid ``(h, w)`` the model declares; ``None``: the square
            grid of the token count, or the input's size over ``patch_size``.
        patch_size: ``(h, w)`` of a patch, or ``None`` (unknown).
        class_token: The model holds a class token (``cls_token`` / ``class_token``).
        pool: timm's ``global_pool`` (``"token"``, ``"avg"``, ...), or ``None``.
    """

    prefix_tokens: int | None = None
    grid: tuple[int, int] | None = None
    patch_size: tuple[int, int] | None = None
    class_token: bool = False
    pool: str | None = None

    def resolve(
        self,
        tokens: int,
        image_size: tuple[int, int] | None = None,
        *,
        prefix_tokens: int | None = None,
        grid: tuple[int, int] | None = None,
        query: int | Literal["auto"] | None = "auto",
        model: str = "the model",
    ) -> tuple[int, int | None, tuple[int, int] | None]:
        """``(prefix_tokens, query, grid)`` of a forward of ``tokens`` tokens: given or read.

        - ``prefix_tokens``: the given count, else :attr:`prefix_tokens`;
        - ``query``: the given row, else ``None`` (mean of the patch rows) for
          ``global_pool="avg"``, ``0`` for a class token, ``None`` without prefix tokens;
        - ``grid``: the given grid, else ``image_size`` over :attr:`patch_size` (rounded down
          or up, whichever holds the patch tokens), else the declared :attr:`grid` if it holds
          them, else ``None`` (square).

        Args:
            tokens: ``N``, the forward's token count.
            image_size: ``(H, W)`` of the forward's input, if known.
            prefix_tokens: Given count (``None``: read).
            grid: Given grid (``None``: read).
            query: Given row, or ``"auto"`` (read).
            model: The model's name, for the errors.

        Raises:
            LayerError: The prefix or the query cannot be told from the model (the message
                names ``prefix_tokens=`` or ``query=``).
        """
        if prefix_tokens is None:
            if self.prefix_tokens is None:
                raise LayerError(
                    f"cannot tell how many prefix (class, distillation, register) tokens {model} "
                    "has (no `num_prefix_tokens`, and no `cls_token`, `class_token`, "
                    "distillation or register token): pass `prefix_tokens=`."
                )
            prefix_tokens = self.prefix_tokens
        if query == "auto":
            if self.pool is not None and self.pool.startswith("avg"):
                query = None
            elif self.class_token:
                query = 0
            elif prefix_tokens == 0:
                query = None
            else:
                raise LayerError(
                    f"cannot tell which token {model} classifies from: pass `query=` (a token "
                    "index, or None for the mean of the patch tokens)."
                )
        if grid is None:
            grid = self._grid(tokens - prefix_tokens, image_size)
        return prefix_tokens, query, grid

    def _grid(self, patches: int, image_size: tuple[int, int] | None) -> tuple[int, int] | None:
        """The grid of ``patches`` patch tokens of an ``image_size`` input, ``None``: square."""
        candidates = [self.grid] if self.grid is not None else []
        if self.patch_size is not None and image_size is not None:
            (hh, ww), (ph, pw) = image_size, self.patch_size
            candidates[:0] = [(hh // ph, ww // pw), (-(-hh // ph), -(-ww // pw))]
        return next((c for c in candidates if c[0] * c[1] == patches), None)


def token_layout(model: nn.Module) -> TokenLayout:
    """Read a vision transformer's :class:`TokenLayout` from its structure, whole model.

    Searches every module of the unwrapped model (so ``nn.Sequential(normalize, vit)`` and a
    class token inside an ``embeddings`` submodule are found), in module order:

    - ``prefix_tokens``: timm's ``num_prefix_tokens`` (only read, never set) where a module
      has it; else the tokens of the tensors named ``cls_token`` / ``class_token``
      (torchvision), ``dist_token`` / ``distillation_token`` and ``reg_token`` /
      ``register_tokens`` (``(1, n, C)`` each: ``n`` tokens); ``None`` without either;
    - ``class_token``: a module holds a ``cls_token`` / ``class_token`` tensor;
    - ``pool``: timm's ``global_pool`` string of the module that holds the prefix tokens;
    - ``patch_size``: the first ``patch_size`` (int or pair) inside that module
      (timm's ``patch_embed.patch_size``, torchvision's ``patch_size``);
    - ``grid``: a non-square ``grid_size`` (timm's ``patch_embed.grid_size``), unless the
      model sizes its grid dynamically.

    Example:
        >>> token_layout(nn.Linear(2, 2))
        TokenLayout(prefix_tokens=None, grid=None, patch_size=None, class_token=False, pool=None)
    """
    model = unwrap_model(model)
    modules = list(model.modules())
    owner = next((m for m in modules if _count(m) is not None), None)
    tokens = [t for m in modules for t in _token_tensors(m, _TOKEN_PARAMETERS)]
    if owner is None:
        owner = next((m for m in modules if _token_tensors(m, _TOKEN_PARAMETERS)), model)
    count = _count(owner)
    if count is None and tokens:
        count = sum(int(t.shape[-2]) if t.dim() >= 2 else 1 for t in tokens)
    pool = getattr(owner, "global_pool", None)
    sizes = (_pair(getattr(m, "patch_size", None)) for m in owner.modules())
    patch = next((size for size in sizes if size is not None), None)
    return TokenLayout(
        prefix_tokens=count,
        grid=_declared_grid(model),
        patch_size=patch,
        class_token=any(_token_tensors(m, _CLASS_TOKENS) for m in modules),
        pool=pool if isinstance(pool, str) else None,
    )


def find_token_layer(model: nn.Module) -> str | None:
    """Default layer of a vision transformer with a single stack of blocks, or ``None``.

    For a model with exactly one stack of transformer blocks (:func:`transformer_stacks`:
    torchvision's ViT, timm's ViT / DeiT / EVA / BEiT, Hugging Face's ViT), the first norm of
    the last block: ``encoder.layers.encoder_layer_11.ln_1`` (torchvision ViT-B/16),
    ``blocks.11.norm1`` (timm), ``vit.layers.1.layernorm_before`` (Hugging Face). Its patch
    tokens reach the class token, which the head reads, through the last block's attention;
    the final norm's patch tokens do not reach the logits at all (a class-token head), so
    their gradient is zero. This is the layer of pytorch-grad-cam's ViT recipe.

    A **post-norm** last block (``nn.TransformerEncoderLayer`` with its default
    ``norm_first=False``, timm's ``ResPostBlock``) runs its first norm *after* the attention,
    where the patch tokens no longer reach the class token (Grad-CAM on it is zero). The
    tokens that do are the ones entering the last block: the previous block's output
    (``blocks.10`` of twelve), the post-norm analogue of the pre-norm choice. A stack of one
    post-norm block has no such layer (its input is the patch embedding's):
    :class:`~xai_feedback.errors.LayerError`, pass ``layer=``.

    ``None`` for a model without transformer blocks or with several stacks (Swin's stages:
    their pooled feature map is found by :func:`find_feature_layer`).

    Raises:
        LayerError: The only block of the stack is post-norm.

    Example:
        >>> find_token_layer(nn.Sequential(nn.Conv2d(3, 8, 3))) is None
        True
        >>> post = nn.Sequential(*[nn.TransformerEncoderLayer(8, 2, 16) for _ in range(3)])
        >>> find_token_layer(post)  # norm_first=False: the tokens entering the last block
        '1'
    """
    stacks = transformer_stacks(model)
    if len(stacks) != 1:
        return None
    name, stack = stacks[0]
    children = list(stack.named_children())
    index, block = children[-1]
    prefix = f"{name}." if name else ""  # the stack may be the model itself
    if not _is_post_norm(block):
        return f"{prefix}{index}.{pre_norm(block)}"
    if len(children) < 2:
        raise LayerError(
            f"{type(model).__name__}'s only transformer block {prefix}{index} is post-norm (its "
            f"{pre_norm(block)} runs after the attention, so its patch tokens never reach the "
            "class token): the tokens to explain are those entering the block, which come "
            "from the patch embedding. Pass `layer=` (a module or dotted name)."
        )
    return f"{prefix}{children[-2][0]}"


def _is_post_norm(block: nn.Module) -> bool:
    """A block that normalizes after its residual branches (torch's ``norm_first=False``).

    ``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer`` with ``norm_first=False``
    (their default) and timm's ``ResPostBlock`` family: their first norm's output has
    already been through the attention.
    """
    if getattr(block, "norm_first", None) is False:
        return True
    return "ResPost" in type(block).__name__


def _module_order(model: nn.Module) -> dict[str, int]:
    return {name: i for i, (name, _) in enumerate(model.named_modules())}


def find_feature_layer(model: nn.Module) -> str:
    """Dotted name of the spatial feature map that feeds the global pooling and the classifier.

    Read from the model's structure: the classifier head is the first child (at the top level,
    or inside the one child that holds the whole network) that holds a ``Linear`` or a global
    pooling and no convolution or transformer block; the feature layer is the last child
    before it that is not a pass-through (``Identity``, ``Dropout``, ``Flatten``, a
    ``Permute``) or pooling module. A model with a ``cam_layer`` attribute (a dotted name)
    uses it; a vision transformer with one stack of blocks uses :func:`find_token_layer`.
    A layer before the first transformer block (the patch embedding) is never returned.

    Raises:
        LayerError: The structure does not tell (also: it points at a transformer's patch
            embedding, or a transformer reads class tokens but has several stacks); the
            message lists candidate layers.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(8, 2))
        >>> find_feature_layer(net)
        '1'
    """
    model = unwrap_model(model)
    named = getattr(model, "cam_layer", None)
    if isinstance(named, str):
        return named
    token_layer = find_token_layer(model)
    if token_layer is not None:
        return token_layer
    found = _search(model, "")
    stacks = transformer_stacks(model)
    if found is not None and stacks:
        order, first = _module_order(model), stacks[0][0]
        if order[found] < order[first] and not first.startswith(found + "."):
            raise LayerError(
                f"the structure of {type(model).__name__} points at {found!r}, which runs "
                "before its first transformer block (the patch embedding): its map is of the "
                "input, not of the model's evidence. Pass `layer=` (a module or dotted name). "
                f"Candidates: {_candidates(model)}."
            )
        if token_layout(model).prefix_tokens:
            raise LayerError(
                f"{type(model).__name__} reads class (prefix) tokens and has "
                f"{len(stacks)} stacks of transformer blocks: which layer to explain is not "
                f"decidable from its structure. Pass `layer=`. Candidates: {_candidates(model)}."
            )
    if found is None:
        raise LayerError(
            f"cannot tell which layer of {type(model).__name__} feeds its global pooling and "
            f"classifier; pass `layer=` (a module or dotted name). Candidates: "
            f"{_candidates(model)}."
        )
    return found


_HEAD_NAMES = ("classifier", "fc", "head", "heads", "last_linear")
"""Attribute names under which models keep their classifier (torchvision, timm, Hugging Face)."""


def _is_pointwise_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1


def _is_classifier_layer(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or _is_pointwise_conv(module)


def find_classifier(model: nn.Module) -> ResolvedLayer:
    """The layer that produces the logits, ``(name, module)``: an ``nn.Linear`` or 1x1 conv.

    1. The last ``nn.Linear`` or 1x1 ``nn.Conv2d`` (``groups=1``) inside the model's
       classifier attribute, the first of ``classifier``, ``fc``, ``head``, ``heads`` and
       ``last_linear`` that holds one: ``fc`` of a ResNet, ``classifier.1`` of a MobileNetV2,
       EfficientNet or SqueezeNet (a 1x1 conv before the global pooling), ``heads.head`` of
       torchvision's ViT, ``head`` of timm's.
    2. Else the last such layer in module order, a 1x1 conv only in a model with a global
       pooling, and only if no spatial convolution (kernel larger than 1) comes after it:
       the layer must end the network, not sit inside its features (a squeeze-excitation
       block's ``nn.Linear`` is not the head).

    Raises:
        LayerError: No candidate, or the last one is followed by spatial convolutions (the
            message asks to name the head).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        ...                     nn.Linear(8, 10))
        >>> find_classifier(net).name
        '3'
    """
    model = unwrap_model(model)
    for attr in _HEAD_NAMES:
        spec = getattr(model, attr, None)
        if isinstance(spec, nn.Module):
            inside = [
                (f"{attr}.{name}" if name else attr, module)
                for name, module in spec.named_modules()
                if _is_classifier_layer(module)
            ]
            if inside:
                return ResolvedLayer(*inside[-1])
    order = list(model.named_modules())
    pooled = any(_is_global_pool(m) for _, m in order)
    candidates = [
        i
        for i, (_, m) in enumerate(order)
        if isinstance(m, nn.Linear) or (pooled and _is_pointwise_conv(m))
    ]
    if not candidates:
        raise LayerError(
            f"`model` must have a classifier (an nn.Linear, or a 1x1 nn.Conv2d in a model with "
            f"a global pooling), got a {type(model).__name__} without one."
        )
    name, module = order[candidates[-1]]
    later = [
        n
        for n, m in order[candidates[-1] + 1 :]
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d) and any(k > 1 for k in m.kernel_size)
    ]
    if later:
        raise LayerError(
            f"`model`'s classifier cannot be told from its structure: its last nn.Linear or "
            f"1x1 nn.Conv2d, {name!r}, is followed by the convolution {later[0]!r}, so it is "
            "inside the features. Name the layer that produces the logits (head='...')."
        )
    return ResolvedLayer(name, module)


def find_head(model: nn.Module) -> ResolvedLayer:
    """The model's linear classifier, ``(name, module)`` (:func:`find_classifier`, linear).

    Raises:
        LayerError: The model has no ``nn.Linear``, or its classifier is a 1x1 convolution
            or cannot be found (see :func:`find_classifier`).
    """
    model = unwrap_model(model)
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        raise LayerError("method 'cam' needs a linear head: `model` has no nn.Linear.")
    name, module = find_classifier(model)
    if not isinstance(module, nn.Linear):
        raise LayerError(
            f"method 'cam' needs a linear head: `model`'s classifier {name!r} is a 1x1 "
            f"{type(module).__name__}, not an nn.Linear; use a gradient method (grad_cam)."
        )
    return ResolvedLayer(name, module)


def resolve_layer(model: nn.Module, layer: nn.Module | str | None = None) -> ResolvedLayer:
    """Resolve ``layer`` (a module, a dotted name, or ``None``) to ``(name, module)``.

    Args:
        model: The model, possibly wrapped (DataParallel, DDP, ``torch.compile``).
        layer: A module of ``model``; a dotted name (``module.`` / ``_orig_mod.`` prefixes
            accepted); or ``None`` for :func:`find_feature_layer`. The first resolution of a
            default layer per model is logged (logger ``"xai_feedback"``, level INFO).

    Returns:
        The name in the unwrapped model and the module.

    Raises:
        LayerError: The name does not exist, the module is not part of ``model``, or there is
            no default (the message lists candidates).
        DTypeError: ``layer`` is neither a module, a string nor ``None``.

    Example:
        >>> from xai_feedback.models import GAPNet
        >>> resolve_layer(nn.DataParallel(GAPNet(width=4)), None).name
        'features'
    """
    inner = unwrap_model(model)
    if isinstance(layer, nn.Module):
        for name, module in inner.named_modules():
            if module is layer:
                return ResolvedLayer(name, module)
        raise LayerError(
            f"`layer` is a module ({type(layer).__name__}) that is not part of `model`."
        )
    default = layer is None
    if layer is None:
        layer = find_feature_layer(inner)
    if not isinstance(layer, str):
        raise DTypeError(
            f"`layer` must be an nn.Module, a dotted name or None, got {type(layer).__name__}."
        )
    name = _strip_prefixes(layer)
    modules = dict(inner.named_modules())
    if name not in modules:
        close = [n for n in modules if n and (name in n or n in name)][:5]
        raise LayerError(
            f"`layer` {layer!r} is not a module of the model"
            + (f"; similar names: {close}" if close else f"; candidates: {_candidates(inner)}")
            + "."
        )
    if default and _logged.get(inner) != name:
        _logged[inner] = name
        _log.info("xai_feedback: explaining layer %r of %s", name, type(inner).__name__)
    return ResolvedLayer(name, modules[name])
