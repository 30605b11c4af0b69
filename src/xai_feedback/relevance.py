r"""Relevance maps of vision transformers, in the training loop: capture attention, explain.

:class:`AttentionCapture` records one forward's attention probabilities ``(B, heads, N, N)``
of every self-attention block, in forward order; :meth:`AttentionCapture.maps` turns them
into maps ``(B, h, w)`` on the patch grid with a method of the registry's ``"relevance"``
kind (:mod:`xai_feedback.methods.relevance`):

- ``"rollout"``: attention rollout (Abnar & Zuidema 2020), class-agnostic;
- ``"chefer_relevance"``: Chefer et al.'s gradient-weighted relevance (ICCV 2021), of the
  target class.

Both are kernels of :mod:`xai_feedback.functional.relevance`, batched and differentiable, so a
penalty on the maps trains the transformer (:mod:`xai_feedback.losses`).

How the probabilities are captured
----------------------------------
Fused attention (``F.scaled_dot_product_attention``) never materializes them, so for the
duration of the ``with`` block:

- **timm** (``Attention`` modules of ViT, DeiT, ...: a ``fused_attn`` flag and an
  ``attn_drop`` module): each module's ``fused_attn`` is set to False, so timm runs its own
  unfused path ``softmax(q k^T * scale)``, and a forward hook on ``attn_drop`` keeps its
  output, the tensor that multiplies ``v`` (the probabilities after attention dropout, the
  tensor Chefer et al.'s code keeps). Each module's flag is restored on exit.
- **torchvision** (``nn.MultiheadAttention`` called with ``need_weights=False`` inside
  ``EncoderBlock``): a forward hook on the module recomputes the attention from the module's
  own ``in_proj``/``out_proj`` weights, :math:`A = \operatorname{softmax}(QK^\top/\sqrt d)`,
  and returns ``out_proj(A V)`` as the module's output, so ``A`` is in the logits' graph (the
  weights ``need_weights=True`` would return are a view that is not). The module's own
  (fused) computation still runs and is discarded: that is the cost of not patching
  ``forward``.

``benchmarks/relevance.py`` measures both against the fused forward.

Limits: timm's attention pool (``global_pool="map"``, ``AttentionPoolLatent``) is not
captured: such a model's maps read the mean of the patch rows and ignore the pool's own
attention; ``torch.compile``'d models are untested (call the
uncompiled ``model._orig_mod`` inside the block); an
``nn.MultiheadAttention`` with masks, separate q/k/v projections, ``bias_k`` or
``add_zero_attn`` is refused with a ``LayerError``.

Prefix tokens and the grid
--------------------------
Read from the whole model by :func:`~xai_feedback.layers.token_layout` (the reader
:class:`~xai_feedback.hooks.CAMHook`'s fold uses too), so ``nn.Sequential(normalize, vit)``
works as the bare ``vit``. The class token (torchvision, timm), distillation token (DeiT)
and register tokens (timm's ``num_prefix_tokens`` counts them all; it is only read) are
dropped from the maps' columns; the class token's row is read (``query=0``), or the mean of
the patch rows for a timm model pooled by ``global_pool="avg"`` (``query=None``). The grid
is the input's size divided by the patch size (timm ``patch_embed.patch_size``,
torchvision ``patch_size``), else the square grid; ``prefix_tokens=``, ``grid=`` and
``query=`` override the inference.
"""

from __future__ import annotations

import math
import threading
from contextlib import ExitStack
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from xai_feedback._checks import check_int
from xai_feedback._maps import Capture, finish_maps, map_classes, map_logits
from xai_feedback._modes import unfused_attention
from xai_feedback.errors import HookError, LayerError
from xai_feedback.layers import token_layout, unwrap_model
from xai_feedback.methods import AttentionInputs, RelevanceMethod, get_method
from xai_feedback.methods._gradients import ALL_CLASSES_MAX_BYTES, CLASS_CHUNK
from xai_feedback.targets import Target

__all__ = ["AttentionCapture", "attention_modules"]

Query = int | None | Literal["auto"]
"""A token index, ``None`` (mean of the patch rows) or ``"auto"`` (inferred from the model)."""


# --- capture ---------------------------------------------------------------------------------


def _is_timm_attention(module: nn.Module) -> bool:
    return isinstance(getattr(module, "fused_attn", None), bool) and isinstance(
        getattr(module, "attn_drop", None), nn.Module
    )


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The self-attention modules :class:`AttentionCapture` hooks, in ``named_modules`` order.

    timm-style modules (a boolean ``fused_attn`` and an ``attn_drop`` module) and
    ``nn.MultiheadAttention``.

    Example:
        >>> layer = nn.TransformerEncoderLayer(8, 2, batch_first=True)
        >>> [name for name, _ in attention_modules(layer)]
        ['self_attn']
    """
    found = []
    for name, module in unwrap_model(model).named_modules():
        if _is_timm_attention(module) or isinstance(module, nn.MultiheadAttention):
            found.append((name, module))
    return found


def _bind_mha_inputs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[torch.Tensor]:
    names = ("query", "key", "value")
    values = [args[i] if i < len(args) else kwargs.get(n) for i, n in enumerate(names)]
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    if len(tensors) != 3:
        raise LayerError("nn.MultiheadAttention was called without query, key and value tensors.")
    return tensors


class AttentionCapture(Capture):
    r"""Capture every self-attention block's probabilities ``(B, heads, N, N)`` in a ``with``.

    Inside the block each forward of the model run by the thread that entered it (re)fills
    :attr:`attentions`, first block first; :meth:`maps` turns them into maps. The hooks
    are removed on exit, also when the block raises; timm's ``fused_attn`` flags are one
    counted switch per module (:func:`xai_feedback._modes.unfused_attention`), so captures
    of one model open in several threads keep them off until the last one leaves, which
    restores each module's own flag. See the module
    docstring for how the probabilities are obtained from timm and torchvision models.

    Args:
        model: A vision transformer (wrappers are unwrapped).
        prefix_tokens: Leading non-patch tokens (default: read by
            :func:`~xai_feedback.layers.token_layout`: timm's ``num_prefix_tokens``, else
            the class, distillation and register tokens the model holds).
        grid: Patch grid ``(h, w)`` (default: the input's size over the patch size, else the
            square grid).
        query: The token row read: an index, ``None`` for the mean of the patch rows, or
            ``"auto"``: ``None`` for timm's ``global_pool="avg"``, else the class token (0).

    Raises:
        LayerError: The model has no attention module this class can capture, or an
            ``nn.MultiheadAttention`` in a configuration it does not reproduce.

    Example:
        >>> enc = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True)
        >>> model = nn.Sequential(enc)
        >>> tokens = torch.randn(3, 5, 8)  # class token + 2 x 2 patches
        >>> with AttentionCapture(model, prefix_tokens=1, query=0) as capture:
        ...     out = model(tokens)
        ...     logits = out[:, 0, :4]
        ...     maps = capture.maps(logits, torch.tensor([0, 1, 2]))
        >>> len(capture.attentions), tuple(capture.attentions[0].shape), tuple(maps.shape)
        (1, (3, 2, 5, 5), (3, 2, 2))
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        prefix_tokens: int | None = None,
        grid: tuple[int, int] | None = None,
        query: Query = "auto",
    ) -> None:
        self.model = unwrap_model(model)
        if prefix_tokens is not None:
            check_int(prefix_tokens, "prefix_tokens", minimum=0)
        if query is not None and query != "auto":
            check_int(query, "query", minimum=0)
        self.prefix_tokens = prefix_tokens
        self.layout = token_layout(self.model)
        """The model's token layout, read once (:func:`~xai_feedback.layers.token_layout`)."""
        self.grid = grid
        self.query: Query = query
        self.attentions: list[torch.Tensor] = []
        """The last forward's attention probabilities, one ``(B, heads, N, N)`` per block."""
        self.image_size: tuple[int, int] | None = None
        self._handles: list[RemovableHandle] = []
        self._switch: ExitStack | None = None
        self._owner: int | None = None

    # -- the with block -------------------------------------------------------------------

    def __enter__(self) -> AttentionCapture:
        if self._switch is not None:
            raise HookError("this AttentionCapture is already active (nested `with`).")
        modules = attention_modules(self.model)
        if not modules:
            raise LayerError(
                f"{type(self.model).__name__} has no attention module to capture (timm "
                "`Attention` with `fused_attn` and `attn_drop`, or nn.MultiheadAttention)."
            )
        self._switch = ExitStack()
        self._owner = threading.get_ident()
        try:
            for name, module in modules:
                if isinstance(module, nn.MultiheadAttention):
                    self._check_mha(name, module)
            timm = [m for _, m in modules if not isinstance(m, nn.MultiheadAttention)]
            self._switch.enter_context(unfused_attention(timm))
            self._handles.append(self.model.register_forward_pre_hook(self._start))
            for module in timm:
                drop = cast(nn.Module, module.attn_drop)
                self._handles.append(drop.register_forward_hook(self._keep))
            for _, module in modules:
                if isinstance(module, nn.MultiheadAttention):
                    self._handles.append(
                        module.register_forward_hook(self._mha_hook, with_kwargs=True)
                    )
        except BaseException:
            self._close()
            raise
        return self

    def _close(self) -> None:
        try:
            for handle in self._handles:
                handle.remove()
        finally:
            self._handles.clear()
            switch, self._switch, self._owner = self._switch, None, None
            if switch is not None:
                switch.close()

    # -- hooks ----------------------------------------------------------------------------

    def _mine(self) -> bool:
        """Whether the running forward is this capture's (its thread entered the block)."""
        return threading.get_ident() == self._owner

    def _start(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if not self._mine():
            return  # another thread's forward: not ours to capture
        self.attentions = []
        first = args[0] if args else None
        if isinstance(first, torch.Tensor) and first.dim() >= 2:
            self.image_size = (int(first.shape[-2]), int(first.shape[-1]))

    def _keep(self, module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        if self._mine():
            self.attentions.append(output)

    @staticmethod
    def _check_mha(name: str, module: nn.MultiheadAttention) -> None:
        if not module._qkv_same_embed_dim or module.bias_k is not None or module.add_zero_attn:
            raise LayerError(
                f"nn.MultiheadAttention {name!r} uses separate q/k/v projections, bias_k/bias_v "
                "or add_zero_attn; AttentionCapture reproduces only the packed in_proj form "
                "(torchvision's ViT, nn.TransformerEncoderLayer)."
            )

    def _mha_hook(
        self,
        module: nn.Module,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        output: tuple[torch.Tensor, torch.Tensor | None],
    ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        if not self._mine():
            return None  # another thread's forward: its own output, untouched
        mha = cast(nn.MultiheadAttention, module)
        for option in ("key_padding_mask", "attn_mask"):
            if kwargs.get(option) is not None:
                raise LayerError(
                    f"AttentionCapture does not reproduce an MHA call with `{option}`."
                )
        if kwargs.get("is_causal"):
            raise LayerError("AttentionCapture does not reproduce a causal MHA call.")
        query, key, value = _bind_mha_inputs(args, kwargs)
        if query.dim() != 3:
            raise LayerError(
                f"AttentionCapture needs batched MHA inputs (3-D), got {query.dim()}-D."
            )
        if not mha.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        e, heads = mha.embed_dim, mha.num_heads
        d = e // heads
        w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
        bias = mha.in_proj_bias
        b_q, b_k, b_v = bias.chunk(3) if bias is not None else (None, None, None)
        b, n, _ = query.shape

        def split(x: torch.Tensor, w: torch.Tensor, bb: torch.Tensor | None) -> torch.Tensor:
            return F.linear(x, w, bb).view(b, int(x.shape[1]), heads, d).transpose(1, 2)

        q, k, v = split(query, w_q, b_q), split(key, w_k, b_k), split(value, w_v, b_v)
        attn = torch.softmax((q * (1.0 / math.sqrt(d))) @ k.transpose(-2, -1), dim=-1)
        if mha.training and mha.dropout > 0:
            attn = F.dropout(attn, p=mha.dropout)
        self.attentions.append(attn)
        out = (attn @ v).transpose(1, 2).reshape(b, n, e)
        out = F.linear(out, mha.out_proj.weight, mha.out_proj.bias)
        if not mha.batch_first:
            out = out.transpose(0, 1)
        return out, output[1]

    # -- maps -----------------------------------------------------------------------------

    def tokens(self) -> tuple[int, int | None, tuple[int, int] | None]:
        """``(prefix_tokens, query, grid)`` of the captured forward, given or read.

        Read by :meth:`~xai_feedback.layers.TokenLayout.resolve` from :attr:`layout`.
        """
        if not self.attentions:
            raise HookError(
                "AttentionCapture captured nothing: run the model's forward inside the `with` "
                "block before asking for maps."
            )
        return self.layout.resolve(
            int(self.attentions[0].shape[-1]),
            self.image_size,
            prefix_tokens=self.prefix_tokens,
            grid=self.grid,
            query=self.query,
            model=type(self.model).__name__,
        )

    def maps(
        self,
        logits: torch.Tensor | Any,
        target: Target = None,
        *,
        method: str = "chefer_relevance",
        all_classes: bool = False,
        normalize: str = "none",
        size: tuple[int, int] | None = None,
        create_graph: bool = True,
        max_bytes: int | None = ALL_CLASSES_MAX_BYTES,
        class_chunk: int = CLASS_CHUNK,
    ) -> torch.Tensor:
        r"""Relevance maps of the captured forward, on the patch grid, in the logits' graph.

        The keywords are those of :meth:`~xai_feedback.hooks.CAMHook.maps` (less the CAM
        kind's own ``relu``, ``scale``, ``check``), with the same meaning.

        Args:
            logits: ``(B, K)`` logits of the last forward inside the block, or the model's
                output object with a ``.logits`` tensor (Hugging Face).
            target: Labels ``(B,)``, a callable ``logits -> labels``, or ``None`` (predicted).
                Ignored with ``all_classes=True``.
            method: A method of the ``"relevance"`` kind (``method_names("relevance")``).
            all_classes: Maps of every class ``(B, K, h, w)`` instead of ``target``'s.
            normalize: Per-map normalization (:func:`~xai_feedback.functional.normalize_maps`).
            size: Resize the maps to ``(H, W)`` (e.g. the input's size), bilinearly
                (:func:`~xai_feedback.functional.resize_maps`); ``None``: the patch grid.
            create_graph: Keep the gradients ``dy/dA`` in the graph, so a loss on the maps
                trains through them too (second order). ``False`` treats them as constants:
                the maps still depend on ``A`` and train the model through it (RobustViT's
                choice, cheaper).
            max_bytes: As :meth:`~xai_feedback.hooks.CAMHook.maps` (the estimate from the
                captured attentions' size).
            class_chunk: As :meth:`~xai_feedback.hooks.CAMHook.maps`.

        Returns:
            ``(B, h, w)`` maps (``(B, K, h, w)`` with ``all_classes``).

        Raises:
            HookError: Nothing was captured, or the logits come from another forward.
            RangeError: ``method`` is not a relevance method, an unknown ``normalize``, or
                ``all_classes`` maps would keep more than ``max_bytes`` of gradients.
            ShapeError: A ``size`` that is not a pair.

        Shape:
            - logits: :math:`(B, K)`; output: :math:`(B, h, w)` or :math:`(B, K, h, w)`
              (:math:`(H, W)` = ``size`` in place of :math:`(h, w)` when given)
        """
        spec = cast(RelevanceMethod, get_method(method, "relevance"))
        batch = int(self.attentions[0].shape[0]) if self.attentions else None
        logits = map_logits(logits, normalize, size, batch)
        prefix_tokens, query, grid = self.tokens()
        inputs = AttentionInputs(
            list(self.attentions),
            logits,
            grid,
            prefix_tokens,
            query,
            bool(create_graph),
            max_bytes,
            class_chunk,
        )
        maps = spec.maps(inputs, map_classes(target, logits, all_classes))
        return finish_maps(maps, normalize, size)
