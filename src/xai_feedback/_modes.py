"""Every switch the library makes for a moment, and the two rules that give each value back.

**A mode for the length of a call.** ``model.train(was_training)`` is not a restore: it sets
*every* submodule's flag, so a BatchNorm frozen for fine-tuning (``bn.eval()`` inside a model
in training mode, the usual recipe) comes back in training mode. :func:`eval_mode` records
each module's own ``training`` flag and restores exactly those flags, also when the block
raises. Every public call of the library that evaluates a model in the middle of training
goes through it, and :func:`train_mode` is its twin for the calls that train (``fit``, proxy
training): a model already in training mode keeps the flags its user set (a frozen BatchNorm
stays frozen).

**A switch a block makes for its own computation** while other code may hold the same model
(the math attention kernel, timm's ``fused_attn``, per-example BatchNorm, frozen parameters):
:func:`switched`, **one locked, counted switch per object and attribute**, shared by every
thread. The first block in records the object's own value and sets the new one; the last
block out restores the recorded value. Two threads whose blocks overlap in any order (A
enters, B enters, A exits, B exits) therefore never leave a value switched, and B's block
keeps the switch until B leaves. Two blocks that ask for different values of one attribute
at once are refused (:class:`~xai_feedback.errors.HookError`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any

from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from xai_feedback.errors import HookError

__all__ = [
    "eval_mode",
    "frozen_parameters",
    "math_attention",
    "module_flags",
    "per_example_batchnorm",
    "restore_flags",
    "switched",
    "train_mode",
    "unfused_attention",
]


def module_flags(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    """Every module of ``model`` with its own ``training`` flag, in ``modules()`` order."""
    return [(module, module.training) for module in model.modules()]


def restore_flags(flags: Sequence[tuple[nn.Module, bool]]) -> None:
    """Give each module the flag recorded by :func:`module_flags` (no recursion)."""
    for module, flag in flags:
        module.training = flag


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode inside the block; restore each module's own flag after it.

    Example:
        >>> model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).train()
        >>> _ = model[1].eval()  # a frozen BatchNorm inside a model in training mode
        >>> with eval_mode(model):
        ...     model[0].training
        False
        >>> model.training, model[0].training, model[1].training
        (True, True, False)
    """
    flags = module_flags(model)
    model.eval()
    try:
        yield model
    finally:
        restore_flags(flags)


@contextmanager
def train_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Train ``model`` inside the block; restore each module's own flag after it.

    A model whose root is in training mode is left as its user set it, submodules included
    (``model.train()`` then ``bn.eval()``: the fine-tuning recipe that freezes BatchNorm
    statistics); a model in eval mode is switched to training mode as a whole, as
    ``model.train()`` does.

    Example:
        >>> model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).train()
        >>> _ = model[1].eval()  # frozen statistics
        >>> with train_mode(model):
        ...     model[0].training, model[1].training
        (True, False)
        >>> _ = model.eval()
        >>> with train_mode(model):
        ...     model[1].training
        True
        >>> model.training, model[1].training
        (False, False)
    """
    flags = module_flags(model)
    if not model.training:
        model.train()
    try:
        yield model
    finally:
        restore_flags(flags)


class _Switches:
    """The process-wide table of held switches: key -> (value, restore, users), under a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[Any, tuple[Any, Callable[[], None], int]] = {}

    def acquire(self, key: Any, value: Any, turn_on: Callable[[], Callable[[], None]]) -> None:
        with self._lock:
            held = self._held.get(key)
            if held is None:
                self._held[key] = (value, turn_on(), 1)
                return
            if held[0] != value:
                raise HookError(
                    f"{key[1] if isinstance(key, tuple) else key!r} is switched to {held[0]!r} "
                    f"by another block that is still open; this block needs {value!r}."
                )
            self._held[key] = (held[0], held[1], held[2] + 1)

    def release(self, key: Any) -> None:
        with self._lock:
            value, restore, users = self._held[key]
            if users > 1:
                self._held[key] = (value, restore, users - 1)
                return
            del self._held[key]
            restore()


_SWITCHES = _Switches()


def _set_attribute(obj: Any, attr: str, value: Any) -> Callable[[], Callable[[], None]]:
    def turn_on() -> Callable[[], None]:
        own = getattr(obj, attr)
        setattr(obj, attr, value)
        return lambda: setattr(obj, attr, own)

    return turn_on


@contextmanager
def switched(items: Iterable[tuple[Any, str]], value: Any) -> Iterator[None]:
    """Set ``obj.attr = value`` for every ``(obj, attr)`` inside the block, counted per item.

    The first block to switch an item records its own value, the last block out restores it
    (see the module docstring), also when the block raises.

    Raises:
        HookError: Another open block holds an item at a different value.

    Example:
        >>> norm = nn.BatchNorm2d(2)
        >>> with switched([(norm, "training")], False):
        ...     with switched([(norm, "training")], False):  # a second user, nested
        ...         pass
        ...     norm.training  # the first user still holds it
        False
        >>> norm.training
        True
    """
    stack = ExitStack()
    with stack:
        for obj, attr in items:
            key = (id(obj), attr)
            _SWITCHES.acquire(key, value, _set_attribute(obj, attr, value))
            stack.callback(_SWITCHES.release, key)
        yield


def _math_kernel() -> Callable[[], None]:
    stack = ExitStack()
    stack.enter_context(sdpa_kernel(SDPBackend.MATH))
    return stack.close


@contextmanager
def math_attention(enabled: bool = True) -> Iterator[None]:
    """Scaled-dot-product attention on its math kernel inside the block (counted, locked).

    The fused kernels (flash / memory-efficient, also on CPU) have no double backward, which
    a loss on input gradients or on differentiable maps of a transformer needs. torch's
    kernel choice is process-wide, so the switch is one counted switch: the first block in
    selects the math kernel, the last block out restores the choice that was there.

    Example:
        >>> import torch
        >>> with math_attention():
        ...     torch.backends.cuda.flash_sdp_enabled()
        False
    """
    if not enabled:
        yield
        return
    _SWITCHES.acquire("sdpa_math", True, _math_kernel)
    try:
        yield
    finally:
        _SWITCHES.release("sdpa_math")


def unfused_attention(modules: Sequence[nn.Module]) -> AbstractContextManager[None]:
    """Timm attention modules on their unfused path (``fused_attn = False``) inside the block.

    The unfused path materializes the attention probabilities (``attn_drop``'s input), which
    :class:`~xai_feedback.relevance.AttentionCapture` reads. Counted per module.
    """
    return switched([(m, "fused_attn") for m in modules], False)


def per_example_batchnorm(model: nn.Module) -> AbstractContextManager[None]:
    r"""Put ``model``'s batch-norm layers in eval mode (running statistics) inside the block.

    An input-gradient penalty differentiates :math:`\sum_b \sum_k \log p_{bk}` with respect
    to each image. With batch statistics, image ``b``'s gradient also holds the terms through
    the batch mean and variance that every other image's output depends on, and a network
    trained with RRR learns to make those cancel: on the frame confound, the batch-statistics
    penalty of an RRR-trained GAPNet was 33x smaller than the per-example one on the same
    batch while the frame still decided the class. With running statistics each example's
    gradient is its own (Ross et al.'s MLP has no batch norm, so this is their penalty).
    Other layers (dropout) keep their mode; each flag is restored by the last block out.

    Example:
        >>> from xai_feedback.models import GAPNet
        >>> model = GAPNet(width=4).train()
        >>> with per_example_batchnorm(model):
        ...     model.features[0][1].training
        False
        >>> model.features[0][1].training
        True
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return switched([(m, "training") for m in norms], False)


def frozen_parameters(model: nn.Module) -> AbstractContextManager[None]:
    """``requires_grad = False`` on ``model``'s trainable parameters inside the block.

    For explanation only: the forward then records no history for the weights. Every
    parameter is switched (a frozen one to what it was), so a parameter frozen by another
    thread's open block is counted too and given back only by the last block out.

    Example:
        >>> layer = nn.Linear(2, 2)
        >>> with frozen_parameters(layer):
        ...     layer.weight.requires_grad
        False
        >>> layer.weight.requires_grad
        True
    """
    return switched([(p, "requires_grad") for p in model.parameters()], False)
