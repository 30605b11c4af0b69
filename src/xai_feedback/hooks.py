"""Context-manager hooks that capture a layer's activations and turn them into CAMs.

The maps stay in the autograd graph: gradients come from ``torch.autograd.grad(...,
create_graph=True)``, so a penalty on the maps trains the model, and ``param.grad`` is never
touched. Hooks are removed when the ``with`` block ends, also when it raises.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any

import torch
from torch import nn

from xai_feedback._checks import check_choice, check_shape
from xai_feedback.errors import DTypeError, HookError, LayerError, RangeError, ShapeError
from xai_feedback.functional.cam import (
    cam_from_head,
    grad_cam,
    grad_cam_pp,
    hires_cam,
    normalize_maps,
    resize_maps,
)

__all__ = ["CAM_METHODS", "ActivationHook", "CAMHook", "Target", "resolve_layer", "resolve_targets"]

CAM_METHODS = ("cam", "grad_cam", "hires_cam", "grad_cam_pp")
"""Map methods understood by :meth:`CAMHook.cam`."""

Target = torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None
"""Labels ``(B,)``, a callable ``logits -> (B,)`` labels, or ``None`` (the predicted class)."""


def resolve_layer(model: nn.Module, layer: nn.Module | str | None) -> nn.Module:
    """Return the module named by ``layer`` (a module, a dotted name, or ``None``).

    ``None`` picks the model's ``cam_layer`` attribute when it has one (the reference models
    do), else the last ``nn.Conv2d`` of the model.

    Raises:
        LayerError: The name does not exist, the module is not part of ``model``, or there is
            no default.
    """
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise LayerError("`layer` is a module that is not part of `model`.")
        return layer
    if layer is None:
        name = getattr(model, "cam_layer", None)
        if isinstance(name, str):
            layer = name
        else:
            convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
            if not convs:
                raise LayerError(
                    "`layer` was not given and `model` has no `cam_layer` attribute and no Conv2d."
                )
            return convs[-1]
    if not isinstance(layer, str):
        raise DTypeError(
            f"`layer` must be an nn.Module, a dotted name or None, got {type(layer).__name__}."
        )
    modules: dict[str, nn.Module] = dict(model.named_modules())
    if layer not in modules:
        close = [n for n in modules if n and (layer in n or n in layer)][:5]
        raise LayerError(
            f"`layer` {layer!r} is not a module of the model"
            + (f"; similar names: {close}" if close else "")
            + "."
        )
    return modules[layer]


def resolve_targets(target: Target, logits: torch.Tensor) -> torch.Tensor:
    """Turn ``target`` into a ``(B,)`` long tensor of classes, checking length and range.

    Raises:
        ShapeError: Wrong number of targets.
        RangeError: A class outside ``[0, K)``.
    """
    dims = check_shape(logits, "B K", "logits")
    if target is None:
        return logits.argmax(dim=1)
    if callable(target) and not isinstance(target, torch.Tensor):
        target = target(logits)
    if not isinstance(target, torch.Tensor):
        raise DTypeError(
            f"`target` must be a tensor, a callable or None, got {type(target).__name__}."
        )
    if target.is_floating_point() or target.dtype == torch.bool:
        raise DTypeError(f"`target` must hold integer class indices, got dtype {target.dtype}.")
    check_shape(target, "B", "target", B=dims["B"])
    if target.numel() and (bool(target.min() < 0) or bool(target.max() >= dims["K"])):
        raise RangeError(
            f"`target` must hold classes in [0, {dims['K']}), got values in "
            f"[{int(target.min())}, {int(target.max())}]."
        )
    return target.to(device=logits.device, dtype=torch.long)


class ActivationHook:
    """Capture the output of one layer on every forward pass inside a ``with`` block.

    The captured tensor is *not* detached: it is part of the autograd graph of the forward
    that produced it. Each forward overwrites it.

    Args:
        model: The model.
        layer: A module of ``model``, its dotted name, or ``None`` (see :func:`resolve_layer`).
        leaf: Replace the layer's output by a leaf tensor that requires grad, cutting the
            graph before the layer. For explanation only (no training through the maps): with
            the parameters frozen, the forward then records no autograd history before the
            layer, which is about twice as fast.

    Example:
        >>> from xai_feedback.models import GAPNet
        >>> model = GAPNet(width=4)
        >>> with ActivationHook(model, "features") as hook:
        ...     _ = model(torch.rand(2, 1, 28, 28))
        ...     hook.activations.shape
        torch.Size([2, 16, 14, 14])
    """

    def __init__(
        self, model: nn.Module, layer: nn.Module | str | None = None, *, leaf: bool = False
    ) -> None:
        if not isinstance(model, nn.Module):
            raise DTypeError(f"`model` must be an nn.Module, got {type(model).__name__}.")
        self.model = model
        self.leaf = leaf
        self.layer = resolve_layer(model, layer)
        self._handle: torch.utils.hooks.RemovableHandle | None = None
        self._acts: torch.Tensor | None = None

    def _forward_hook(self, module: nn.Module, inputs: Any, output: Any) -> Any:
        if not isinstance(output, torch.Tensor):
            raise LayerError(
                f"the hooked layer ({type(module).__name__}) returned "
                f"{type(output).__name__}, not a tensor."
            )
        if self.leaf and output.is_floating_point():
            output = output.detach().requires_grad_()
        self._acts = output
        return output

    def __enter__(self) -> ActivationHook:
        if self._handle is not None:
            raise HookError("this hook is already active (nested `with` on the same hook).")
        self._handle = self.layer.register_forward_hook(self._forward_hook)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._handle is not None:
                self._handle.remove()
        finally:
            self._handle = None
            self._acts = None

    @property
    def active(self) -> bool:
        """Whether the hook is registered (inside its ``with`` block)."""
        return self._handle is not None

    @property
    def activations(self) -> torch.Tensor:
        """The layer's output from the most recent forward pass inside the block."""
        if self._handle is None:
            raise HookError("activations are only available inside the hook's `with` block.")
        if self._acts is None:
            raise HookError(
                "the hooked layer has not run yet: call the model inside the block first."
            )
        return self._acts


class CAMHook(ActivationHook):
    r"""Differentiable class activation maps of a layer, batched, on the input's device.

    Inside the ``with`` block, run the model, then ask for maps of its logits:

    - ``"cam"``: exact CAM from a GAP + linear head
      (:func:`~xai_feedback.functional.cam_from_head`), needs no gradient; signed evidence
      (``relu=False``) is its default, as training needs,
    - ``"grad_cam"``, ``"hires_cam"``, ``"grad_cam_pp"``: from ``dy/dA`` computed by
      ``torch.autograd.grad(create_graph=...)``.

    Args:
        model: The model.
        layer: The layer whose output ``A`` (4-D) is explained; ``None`` uses
            ``model.cam_layer`` or the last Conv2d.
        head: The linear head for ``"cam"`` (module or dotted name); ``None`` uses
            ``model.classifier`` when it is an ``nn.Linear``, else the last ``nn.Linear``.
        eval_mode: Put the model in eval mode for the block (restoring every module's
            ``training`` flag on exit). Off by default, for use inside training steps.
        leaf: Cut the graph before the layer (explanation only; see :class:`ActivationHook`).

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
        ...     maps = hook.cam(logits, y, method="grad_cam")
        >>> maps.shape, maps.requires_grad
        (torch.Size([2, 14, 14]), True)
    """

    def __init__(
        self,
        model: nn.Module,
        layer: nn.Module | str | None = None,
        *,
        head: nn.Module | str | None = None,
        eval_mode: bool = False,
        leaf: bool = False,
    ) -> None:
        super().__init__(model, layer, leaf=leaf)
        self._head_spec = head
        self.eval_mode = eval_mode
        self._flags: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> CAMHook:
        super().__enter__()
        if self.eval_mode:
            self._flags = [(m, m.training) for m in self.model.modules()]
            self.model.eval()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            super().__exit__(exc_type, exc, tb)
        finally:
            for module, flag in self._flags:
                module.training = flag
            self._flags = []

    @property
    def head(self) -> nn.Linear:
        """The linear head used by ``method="cam"``."""
        spec = self._head_spec
        if spec is None:
            spec = getattr(self.model, "classifier", None)
            if not isinstance(spec, nn.Linear):
                linears = [m for m in self.model.modules() if isinstance(m, nn.Linear)]
                if not linears:
                    raise LayerError("method 'cam' needs a linear head: `model` has no nn.Linear.")
                spec = linears[-1]
        module = resolve_layer(self.model, spec)
        if not isinstance(module, nn.Linear):
            raise LayerError(f"`head` must be an nn.Linear, got {type(module).__name__}.")
        return module

    def _acts4d(self) -> torch.Tensor:
        acts = self.activations
        if acts.dim() != 4:
            raise LayerError(
                "the hooked layer must produce a 4-D (B, C, h, w) output, "
                f"got shape {tuple(acts.shape)}."
            )
        return acts

    def cam(
        self,
        logits: torch.Tensor,
        target: Target = None,
        *,
        method: str = "cam",
        all_classes: bool = False,
        relu: bool | None = None,
        normalize: str = "none",
        size: tuple[int, int] | None = None,
        create_graph: bool = True,
    ) -> torch.Tensor:
        r"""Maps of ``logits`` (from the forward inside this block).

        Args:
            logits: ``(B, K)`` logits of the most recent forward.
            target: Labels ``(B,)``, a callable ``logits -> labels``, or ``None`` for the
                predicted class. Ignored with ``all_classes=True``.
            method: One of :data:`CAM_METHODS`.
            all_classes: Return the maps of every class, ``(B, K, h, w)``.
            relu: Keep only positive evidence. Default: ``False`` for ``"cam"`` (exact,
                signed evidence) and ``True`` for the gradient methods (their definitions).
            normalize: Per-map normalisation (:func:`~xai_feedback.functional.normalize_maps`).
            size: Resize the maps to ``(H, W)`` (e.g. the input's size), bilinearly.
            create_graph: Keep the gradient in the graph (needed to train through the maps).

        Returns:
            Maps ``(B, h, w)``, or ``(B, K, h, w)`` with ``all_classes``.

        Shape:
            - logits: :math:`(B, K)`; output: :math:`(B, h, w)` or :math:`(B, K, h, w)`
        """
        check_choice(method, "method", CAM_METHODS)
        dims = check_shape(logits, "B K", "logits")
        acts = self._acts4d()
        if acts.shape[0] != dims["B"]:
            raise ShapeError(
                f"`logits` has batch size {dims['B']} but the hooked activations have "
                f"{acts.shape[0]}: pass the logits of the most recent forward."
            )
        if not all_classes:
            classes = resolve_targets(target, logits)
        if relu is None:
            relu = method != "cam"
        if method == "cam":
            weight = self.head.weight
            if weight.shape[1] != acts.shape[1]:
                raise LayerError(
                    f"the head's weight has {weight.shape[1]} inputs but the hooked layer has "
                    f"{acts.shape[1]} channels: method 'cam' needs the layer that feeds the head."
                )
            maps = cam_from_head(acts, weight, None if all_classes else classes)
            maps = torch.relu(maps) if relu else maps
        else:
            kernel = {"grad_cam": grad_cam, "hires_cam": hires_cam, "grad_cam_pp": grad_cam_pp}[
                method
            ]
            if not acts.requires_grad:
                raise HookError(
                    f"method {method!r} needs gradients, but the activations do not require grad "
                    "(was the forward run under torch.no_grad()?)."
                )
            if all_classes:
                per_class = []
                for k in range(dims["K"]):  # one gradient per class (K is small)
                    (grads,) = torch.autograd.grad(
                        logits[:, k].sum(), acts, create_graph=create_graph, retain_graph=True
                    )
                    per_class.append(kernel(acts, grads, relu=relu))
                maps = torch.stack(per_class, dim=1)
            else:
                score = logits.gather(1, classes[:, None]).sum()
                (grads,) = torch.autograd.grad(
                    score, acts, create_graph=create_graph, retain_graph=True
                )
                maps = kernel(acts, grads, relu=relu)
        maps = normalize_maps(maps, normalize)
        if size is not None:
            maps = resize_maps(maps, size)
        return maps
