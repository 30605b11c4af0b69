"""Switch a model's mode for a moment and give every module its own flag back.

``model.train(was_training)`` is not a restore: it sets *every* submodule's flag, so a
BatchNorm frozen for fine-tuning (``bn.eval()`` inside a model in training mode, the usual
recipe) comes back in training mode. :func:`eval_mode` records each module's own
``training`` flag and restores exactly those flags, also when the block raises. Every public
call of the library that evaluates a model in the middle of training goes through it, and
:func:`train_mode` is its twin for the calls that train (``fit``, proxy training): a model
already in training mode keeps the flags its user set (a frozen BatchNorm stays frozen).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from torch import nn

__all__ = ["eval_mode", "module_flags", "restore_flags", "train_mode"]


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
