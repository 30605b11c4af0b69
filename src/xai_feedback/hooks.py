"""Context-manager hooks that capture a layer's activations and turn them into CAMs.

The maps stay in the autograd graph: gradients come from ``torch.autograd.grad(...,
create_graph=True)``, so a penalty on the maps trains the model, and ``param.grad`` is never
touched. Hooks are removed when the ``with`` block ends, also when it raises.

Which layer (:mod:`xai_feedback.layers`): a module, a dotted name, or ``None`` for the
spatial feature map that feeds the model's global pooling and classifier. Wrapped models
(``nn.DataParallel``, ``DistributedDataParallel``, ``torch.compile``) are unwrapped.

Safety rules, each enforced by an error rather than a silently wrong map:

- **Per-call state.** A hook captures only forwards run by the thread that entered its
  ``with`` block, so two hooks on one model used from two threads never mix activations.
- **In-place operations.** Code after the layer may modify its output in place
  (``ReLU(inplace=True)``, ``out += identity``, ``x.relu_()``). ``inplace="raise"`` (the
  default for a layer other than the pooled feature map) detects it from the tensor's
  version counter and raises;
  ``"copy"`` hands the network a copy, so the captured tensor stays the layer's own output;
  ``"follow"`` (the default for the feature map that feeds the pooling, whether named or
  resolved, e.g. DenseNet's functional ReLU after ``features``) explains the tensor as
  modified, which is what feeds the pooling.
- **torch.compile.** A compiled graph may not run hooks added after compilation; then the
  hook never fires and the first use raises, naming the cause.

Vision transformers (:mod:`xai_feedback.tokens`): a layer that outputs tokens ``(B, N, C)``
or a channels-last grid ``(B, H, W, C)`` is folded to ``(B, C, h, w)`` by the hook's
``reshape`` (read from the model's structure by default), and its gradients the same way.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any, Literal, cast

import torch
from torch import nn

from xai_feedback._checks import check_choice
from xai_feedback._maps import Capture, finish_maps, map_classes, map_logits
from xai_feedback._modes import math_attention, module_flags, restore_flags
from xai_feedback.errors import DTypeError, HookError, LayerError, ShapeError
from xai_feedback.layers import find_feature_layer, find_head, resolve_layer, unwrap_model
from xai_feedback.methods import SCALES, CAMMethod, MapInputs, get_method
from xai_feedback.methods._gradients import ALL_CLASSES_MAX_BYTES, CLASS_CHUNK
from xai_feedback.targets import Target
from xai_feedback.tokens import TokenReshape, default_reshape

__all__ = ["INPLACE_POLICIES", "ActivationHook", "CAMHook", "Reshape"]

INPLACE_POLICIES = ("raise", "copy", "follow")
"""What a hook does when later code modifies the captured tensor in place."""

Reshape = TokenReshape | Callable[[torch.Tensor], torch.Tensor]
"""How a hook folds its layer's output to ``(B, C, h, w)``: a :class:`TokenReshape` or a
function that only selects and rearranges entries (pytorch-grad-cam's ``reshape_transform``)."""


def _default_name(model: nn.Module) -> str | None:
    try:
        return find_feature_layer(model)
    except LayerError:
        return None


def _check_not_data_parallel_on_gpus(model: nn.Module) -> None:
    ids = getattr(model, "device_ids", None)
    if type(model).__name__ == "DataParallel" and ids and len(ids) > 1:
        raise HookError(
            "nn.DataParallel over several GPUs runs its replicas in worker threads, whose "
            "activations a hook cannot attribute to your call; use DistributedDataParallel "
            "(one process per GPU) or explain `model.module`."
        )


class ActivationHook(Capture):
    """Capture the output of one layer on every forward pass inside a ``with`` block.

    The captured tensor is *not* detached: it is part of the autograd graph of the forward
    that produced it. Each forward overwrites it. Only forwards run by the thread that entered
    the block are captured.

    Args:
        model: The model, possibly wrapped (DataParallel, DDP, ``torch.compile``).
        layer: A module of ``model``, its dotted name, or ``None`` (the feature map feeding
            the global pooling; see :func:`xai_feedback.layers.resolve_layer`).
        leaf: Replace the layer's output by a leaf tensor that requires grad, cutting the
            graph before the layer. For explanation only (no training through the maps): with
            the parameters frozen, the forward then records no autograd history before the
            layer, which is about twice as fast.
        inplace: One of :data:`INPLACE_POLICIES` (see the module docstring). ``None``:
            ``"follow"`` for the feature map feeding the pooling (the default layer, also when
            named), ``"raise"`` for any other layer.

    Attributes:
        layer: The hooked module.
        layer_name: Its dotted name in the unwrapped model.

    Example:
        >>> from xai_feedback.models import GAPNet
        >>> model = GAPNet(width=4)
        >>> with ActivationHook(model, "features") as hook:
        ...     _ = model(torch.rand(2, 1, 28, 28))
        ...     hook.activations.shape
        torch.Size([2, 16, 14, 14])
    """

    def __init__(
        self,
        model: nn.Module,
        layer: nn.Module | str | None = None,
        *,
        leaf: bool = False,
        inplace: Literal["raise", "copy", "follow"] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise DTypeError(f"`model` must be an nn.Module, got {type(model).__name__}.")
        if inplace is not None:
            check_choice(inplace, "inplace", INPLACE_POLICIES)
        self.model = model
        self.module = unwrap_model(model)
        self.leaf = leaf
        self.layer_name, self.layer = resolve_layer(model, layer)
        self.inplace: str = inplace or (
            "follow" if layer is None or self.layer_name == _default_name(self.module) else "raise"
        )
        self._handle: torch.utils.hooks.RemovableHandle | None = None
        self._owner: int | None = None
        self._acts: torch.Tensor | None = None
        self._version = 0

    def _forward_hook(self, module: nn.Module, inputs: Any, output: Any) -> Any:
        if threading.get_ident() != self._owner:
            return None  # another thread's forward: not ours to capture or change
        if not isinstance(output, torch.Tensor):
            raise LayerError(
                f"the hooked layer {self.layer_name!r} ({type(module).__name__}) returned "
                f"{type(output).__name__}, not a tensor."
            )
        passed = output
        if self.leaf and output.is_floating_point():
            if getattr(output, "_xai_feedback_cut", False):
                captured = output  # a nested leaf hook already cut the graph here
            else:
                cut = output.detach().requires_grad_()
                captured = passed = cut.clone()  # not a leaf: in-place ops downstream work
                captured._xai_feedback_cut = True  # type: ignore[attr-defined]
        else:
            captured = output
        if self.inplace == "copy":
            passed = captured.clone()
        self._acts = captured
        self._version = captured._version
        return passed if passed is not output else None

    def __enter__(self) -> ActivationHook:
        if self._handle is not None:
            raise HookError("this hook is already active (nested `with` on the same hook).")
        _check_not_data_parallel_on_gpus(self.model)
        self._owner = threading.get_ident()
        self._handle = self.layer.register_forward_hook(self._forward_hook)
        return self

    def _close(self) -> None:
        try:
            if self._handle is not None:
                self._handle.remove()
        finally:
            self._handle = None
            self._owner = None
            self._acts = None

    @property
    def active(self) -> bool:
        """Whether the hook is registered (inside its ``with`` block)."""
        return self._handle is not None

    @property
    def activations(self) -> torch.Tensor:
        """The layer's output from the most recent forward pass inside the block.

        Raises:
            HookError: Outside the block; the layer has not run (also: a compiled graph that
                bypasses hooks); or the output was modified in place with ``inplace="raise"``.
        """
        if self._handle is None:
            raise HookError("activations are only available inside the hook's `with` block.")
        if threading.get_ident() != self._owner:
            raise HookError("a hook's activations belong to the thread that entered its block.")
        if self._acts is None:
            compiled = type(self.model).__name__ == "OptimizedModule"
            raise HookError(
                f"the hooked layer {self.layer_name!r} has not run yet: call the model inside "
                "the block first."
                + (
                    " The model is compiled (torch.compile): a graph compiled before the hook "
                    "was registered does not run it, and dynamo may skip a hook on a layer "
                    "nested inside a traced block (seen for a vision transformer block's norm "
                    "on torch 2.14.1). Enter the hook before the first call of the compiled "
                    "model, or explain the uncompiled model (`model._orig_mod`)."
                    if compiled
                    else ""
                )
            )
        if self.inplace == "raise" and self._acts._version != self._version:
            raise HookError(
                f"the output of layer {self.layer_name!r} was modified in place after it was "
                "captured (e.g. by ReLU(inplace=True), `out += identity` or `x.relu_()`), so "
                "it no longer holds the layer's output. Pass inplace='copy' to keep the "
                "layer's own output, inplace='follow' to explain the modified tensor, or hook "
                "a module after the in-place operation."
            )
        return self._acts


class CAMHook(ActivationHook):
    r"""Differentiable class activation maps of a layer, batched, on the input's device.

    Inside the ``with`` block, run the model, then ask for maps of its logits with any method
    of the ``"cam"`` kind of :mod:`xai_feedback.methods`:

    - ``"cam"``: exact CAM from a GAP + linear head, needs no gradient. The head is verified
      once per model and layer: the maps' means plus the bias must reproduce the logits;
    - ``"grad_cam"``, ``"hires_cam"``, ``"grad_cam_pp"``: from ``dy/dA`` computed by
      ``torch.autograd.grad(create_graph=...)``, on the CAM scale by default (for a GAP +
      linear head Grad-CAM equals CAM), so a penalty weight transfers between methods.

    **One rule for the sign.** The hook is the training path: its maps are **signed** for
    every method (``relu=False``) unless you pass ``relu=True``, and the objectives
    (:func:`~xai_feedback.objectives.cam_penalty_objective`) use the same maps, so the three
    lines of your own loop and the objective give the same loss with any method. Signed
    evidence is what a penalty needs: a shortcut turned into *negative* evidence for the
    other classes is hidden by a ReLU (measured: docs, *Which penalty*); a penalty's own
    ``signed=False`` applies the ReLU where wanted. The explanation calls
    (:func:`~xai_feedback.attribution.attribute`) returns the published definitions instead
    (ReLU for the gradient methods), as the peers do.

    Args:
        model: The model, possibly wrapped (DataParallel, DDP, ``torch.compile``).
        layer: The layer whose output ``A`` is explained: ``(B, C, h, w)``, or tokens folded
            by ``reshape``; ``None``: the feature map feeding the global pooling
            (``model.cam_layer`` for the reference models), or for a vision transformer the
            first norm of its last block (:func:`~xai_feedback.layers.find_token_layer`).
        head: The linear head for ``"cam"`` (module or dotted name); ``None`` uses
            ``model.classifier`` when it is an ``nn.Linear``, else the last ``nn.Linear``.
        eval_mode: Put the model in eval mode for the block (restoring every module's
            ``training`` flag on exit). Off by default, for use inside training steps.
        leaf: Cut the graph before the layer (explanation only; see :class:`ActivationHook`).
        inplace: In-place policy (see :class:`ActivationHook`).
        reshape: How the layer's output becomes ``(B, C, h, w)``: a
            :class:`~xai_feedback.tokens.TokenReshape` (prefix tokens dropped, patch tokens
            folded to the grid, channels-last grids permuted), a function that only selects
            and rearranges entries, or ``None``: read from the model's structure
            (:func:`~xai_feedback.tokens.default_reshape`; nothing for a CNN).
        sdpa_math: Run scaled-dot-product attention with its math kernel inside the block.
            The fused kernels (flash / memory-efficient, also on CPU; timm's ``fused_attn``,
            ``nn.MultiheadAttention``, Hugging Face's ``sdpa``) have no double backward,
            which a loss on differentiable maps of a transformer needs. ``None``: on unless
            ``leaf`` (explanation only, one backward). The switch is process-wide (torch's
            backend flags): :func:`xai_feedback._modes.math_attention`, counted over every
            open block of every thread, undone when the last one ends.

    Note:
        Gradient methods take one gradient of the summed target scores for the whole batch.
        That equals per-image gradients when images do not interact after ``layer`` (true of
        GAP heads; not of BatchNorm in training mode *after* the hooked layer).

    Example:
        >>> from xai_feedback.models import GAPNet
        >>> model = GAPNet(width=4)
        >>> x, y = torch.rand(2, 1, 28, 28), torch.tensor([3, 5])
        >>> with CAMHook(model) as hook:
        ...     logits = model(x)
        ...     maps = hook.maps(logits, y, method="grad_cam")
        >>> maps.shape, maps.requires_grad, hook.layer_name
        (torch.Size([2, 14, 14]), True, 'features')

        A vision transformer's tokens ``(B, 1 + 7 * 7, C)`` give ``(B, 7, 7)`` maps:

        >>> class Block(nn.Module):
        ...     def __init__(self) -> None:
        ...         super().__init__()
        ...         self.norm1 = nn.LayerNorm(8)
        ...         self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        ...     def forward(self, x):
        ...         y = self.norm1(x)
        ...         return x + self.attn(y, y, y, need_weights=False)[0]
        >>> class ViT(nn.Module):
        ...     def __init__(self) -> None:
        ...         super().__init__()
        ...         self.patch_embed = nn.Conv2d(3, 8, 4, stride=4)
        ...         self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
        ...         self.blocks = nn.Sequential(Block(), Block())
        ...         self.head = nn.Linear(8, 3)
        ...     def forward(self, x):
        ...         t = self.patch_embed(x).flatten(2).transpose(1, 2)
        ...         t = torch.cat([self.cls_token.expand(len(x), -1, -1), t], 1)
        ...         return self.head(self.blocks(t)[:, 0])
        >>> vit = ViT()
        >>> with CAMHook(vit) as hook:
        ...     maps = hook.maps(vit(torch.rand(2, 3, 28, 28)), method="grad_cam")
        >>> hook.layer_name, maps.shape
        ('blocks.1.norm1', torch.Size([2, 7, 7]))
    """

    def __init__(
        self,
        model: nn.Module,
        layer: nn.Module | str | None = None,
        *,
        head: nn.Module | str | None = None,
        eval_mode: bool = False,
        leaf: bool = False,
        inplace: Literal["raise", "copy", "follow"] | None = None,
        reshape: Reshape | None = None,
        sdpa_math: bool | None = None,
    ) -> None:
        super().__init__(model, layer, leaf=leaf, inplace=inplace)
        if reshape is not None and not callable(reshape):
            raise DTypeError(
                "`reshape` must be a TokenReshape, a function or None, got "
                f"{type(reshape).__name__}."
            )
        self._head_spec = head
        self.eval_mode = eval_mode
        self.reshape: Reshape | None = (
            default_reshape(self.module, self.layer) if reshape is None else reshape
        )
        self.sdpa_math = (not leaf) if sdpa_math is None else bool(sdpa_math)
        self._flags: list[tuple[nn.Module, bool]] = []
        self._stack: contextlib.ExitStack | None = None

    def __enter__(self) -> CAMHook:
        super().__enter__()
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(math_attention(self.sdpa_math))
            if self.eval_mode:
                self._flags = module_flags(self.model)
                self.model.eval()
        except BaseException:
            stack.close()
            super()._close()
            raise
        self._stack = stack
        return self

    def _close(self) -> None:
        try:
            super()._close()
        finally:
            try:
                restore_flags(self._flags)
            finally:
                self._flags = []
                if self._stack is not None:
                    self._stack.close()
                    self._stack = None

    @property
    def head(self) -> nn.Linear:
        """The linear head used by ``method="cam"``."""
        if self._head_spec is None:
            return find_head(self.module).module  # type: ignore[return-value]
        module = resolve_layer(self.model, self._head_spec).module
        if not isinstance(module, nn.Linear):
            raise LayerError(f"`head` must be an nn.Linear, got {type(module).__name__}.")
        return module

    def _grid(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The captured output and its ``(B, C, h, w)`` fold (the same tensor for a CNN)."""
        raw = self.activations
        acts = self.reshape(raw) if self.reshape is not None else raw
        if not isinstance(acts, torch.Tensor) or acts.dim() != 4:
            got = tuple(acts.shape) if isinstance(acts, torch.Tensor) else type(acts).__name__
            raise LayerError(
                f"the hooked layer {self.layer_name!r} must produce a 4-D (B, C, h, w) output "
                f"(or tokens folded by `reshape=`), got {got} from an output of shape "
                f"{tuple(raw.shape)}. For a transformer, pass reshape=TokenReshape(...)."
            )
        if acts.shape[0] != batch:
            raise ShapeError(
                f"`logits` has batch size {batch} but the hooked activations have "
                f"{acts.shape[0]}: pass the logits of the most recent forward."
            )
        return raw, acts

    def feature_map(self, batch: int) -> torch.Tensor:
        """The captured activations as a ``(B, C, h, w)`` map (tokens folded by ``reshape``).

        For losses of their own on the layer's activations; ``batch`` is checked against
        the captured batch (the logits' batch size).

        Raises:
            LayerError: The layer's output is not 4-D and no ``reshape`` folds it.
            ShapeError: ``batch`` is not the captured batch size.

        Example:
            >>> from xai_feedback.models import GAPNet
            >>> model = GAPNet(width=4)
            >>> with CAMHook(model) as hook:
            ...     logits = model(torch.rand(2, 1, 28, 28))
            ...     tuple(hook.feature_map(2).shape)
            (2, 16, 14, 14)
        """
        return self._grid(batch)[1]

    def maps(
        self,
        logits: torch.Tensor | Any,
        target: Target = None,
        *,
        method: str = "cam",
        all_classes: bool = False,
        normalize: str = "none",
        size: tuple[int, int] | None = None,
        create_graph: bool = True,
        max_bytes: int | None = ALL_CLASSES_MAX_BYTES,
        class_chunk: int = CLASS_CHUNK,
        relu: bool = False,
        scale: str = "cam",
        check: bool = True,
    ) -> torch.Tensor:
        r"""Maps of ``logits`` (from the forward inside this block).

        The keywords up to ``class_chunk`` are those of
        :meth:`~xai_feedback.relevance.AttentionCapture.maps`, with the same meaning; ``relu``,
        ``scale`` and ``check`` are the CAM kind's own.

        Args:
            logits: ``(B, K)`` logits of the most recent forward, or the model's output
                object with a ``.logits`` tensor (Hugging Face).
            target: Labels ``(B,)``, a callable ``logits -> labels``, or ``None`` for the
                predicted class. Ignored with ``all_classes=True``.
            method: A method of the ``"cam"`` kind (``method_names("cam")`` of
                :mod:`xai_feedback.methods`).
            all_classes: Return the maps of every class, ``(B, K, h, w)``.
            normalize: Per-map normalization (:func:`~xai_feedback.functional.normalize_maps`).
            size: Resize the maps to ``(H, W)`` (e.g. the input's size), bilinearly
                (:func:`~xai_feedback.functional.resize_maps`); ``None``: the layer's grid.
            create_graph: Keep the gradient in the graph (needed to train through the maps).
            max_bytes: With ``all_classes``, the most bytes of gradients the ``K`` classes'
                maps may keep alive (estimated before the first backward; 4 GiB by default);
                ``None``: no bound.
            class_chunk: With ``all_classes``, the classes whose gradients are taken in one
                batched backward (``is_grads_batched``); 1 (default): one backward per class,
                measured the faster on CPU (``benchmarks/README.md``, *ViT penalty step*);
                larger chunks trade memory (``class_chunk`` times one backward's) for fewer,
                larger kernels.
            relu: Keep only positive evidence. Default ``False`` for every method: signed
                maps, the training path's rule (see the class docstring; ``True`` gives the
                published Grad-CAM / HiResCAM / Grad-CAM++).
            scale: ``"cam"`` (Grad-CAM and HiResCAM times ``h w``, Grad-CAM++ times 2: on the
                scale of CAM) or ``"paper"`` (the published definitions); see
                :mod:`xai_feedback.methods`.
            check: For ``"cam"``, verify (once per model, layer and head) that the layer feeds
                a global-average-pool + linear head. Turn off for a head that is not exact in
                training mode (e.g. dropout before the linear layer).

        Returns:
            Maps ``(B, h, w)``, or ``(B, K, h, w)`` with ``all_classes``.

        Raises:
            LayerError: ``"cam"`` on a layer whose maps do not reproduce the logits (use
                ``"grad_cam"`` or ``"hires_cam"`` there; a ViT's class-token head is refused
                so), or a layer that is not 4-D after ``reshape``.
            ShapeError: Token counts that do not fold to the grid (see
                :class:`~xai_feedback.tokens.TokenReshape`), or a ``size`` that is not a pair.
            RangeError: An unknown ``method``, ``normalize`` or ``scale``, or ``all_classes``
                maps would keep more than ``max_bytes`` of gradients.

        Shape:
            - logits: :math:`(B, K)`; output: :math:`(B, h, w)` or :math:`(B, K, h, w)`
              (:math:`(H, W)` = ``size`` in place of :math:`(h, w)` when given)
        """
        spec = cast(CAMMethod, get_method(method, "cam"))
        check_choice(scale, "scale", SCALES)
        logits = map_logits(logits, normalize, size)
        raw, acts = self._grid(int(logits.shape[0]))
        classes = map_classes(target, logits, all_classes)
        inputs = MapInputs(
            acts,
            logits,
            source=raw if acts is not raw else None,
            fold=self.reshape if acts is not raw else None,
            create_graph=create_graph,
            head=lambda: self.head,
            check=check,
            owner=self.module,
            layer_name=self.layer_name,
            compiled=type(self.model).__name__ == "OptimizedModule",
            max_bytes=max_bytes,
            class_chunk=class_chunk,
        )
        maps = spec.maps(inputs, classes, relu=bool(relu))
        if scale == "cam":
            maps = maps * spec.cam_scale(int(acts.shape[2]), int(acts.shape[3]))
        return finish_maps(maps, normalize, size)
