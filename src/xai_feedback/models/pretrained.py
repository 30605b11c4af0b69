"""Pretrained weights from a file, and the two steps of fine-tuning a pretrained classifier.

Nothing here downloads: :func:`load_weights` reads a state-dict file that is already on disk
(torchvision's own ``.pth`` files, a checkpoint of your own, or a file shipped in a package)
into any ``nn.Module``. torchvision is not needed; its models are ordinary modules.

- :func:`load_weights` verifies the file's SHA-256 when the file name carries its first hex
  digits in torchvision's convention (``mobilenet_v2-b0353104.pth``: the digest starts with
  ``b0353104``), reads it with ``torch.load(..., weights_only=True)`` (tensors only, no code)
  and loads it, naming missing, unexpected and mismatched keys when they do not fit;
- :func:`replace_head` swaps the layer that produces the logits (``fc`` of a ResNet,
  ``classifier[-1]`` of a MobileNetV2 or an EfficientNet, the 1x1 conv ``classifier[1]`` of a
  SqueezeNet) for a new one with ``num_classes`` outputs;
- :func:`freeze_batchnorm` puts the model in training mode with every BatchNorm in eval mode,
  the usual recipe for fine-tuning on a small dataset: :func:`~xai_feedback.training.fit`
  keeps the per-module flags of a model already in training mode, so the ImageNet statistics
  stay as they are.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from xai_feedback._checks import check_int
from xai_feedback.errors import DTypeError, LayerError, WeightsError, WeightsNotFoundError
from xai_feedback.layers import find_classifier, resolve_layer, unwrap_model

__all__ = ["file_sha256", "freeze_batchnorm", "hash_prefix", "load_weights", "replace_head"]

_log = logging.getLogger("xai_feedback")

ModelT = TypeVar("ModelT", bound=nn.Module)

# torchvision (torch.hub): ``<name>-<first hex digits of the SHA-256>.<ext>``.
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")
# Checkpoints that hold the state dict under one of these keys are unwrapped.
_NESTED = ("state_dict", "model_state_dict", "model")
# Prefixes a state dict saved from a wrapped model carries (DataParallel/DDP, torch.compile).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_SHOWN = 5


def hash_prefix(path: str | os.PathLike[str]) -> str | None:
    """The SHA-256 prefix that a file name carries in torchvision's convention, or ``None``.

    The name must end in ``-<8 to 64 lowercase hex digits>.<extension>``, as torchvision's
    weight files do.

    Example:
        >>> hash_prefix("mobilenet_v2-b0353104.pth")
        'b0353104'
        >>> hash_prefix("my_checkpoint.pt") is None
        True
    """
    match = _HASH_IN_NAME.search(Path(path).name)
    return match.group(1) if match else None


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file, as 64 lowercase hex digits (read in 1 MiB chunks).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     file = Path(tmp) / "empty.bin"
        ...     _ = file.write_bytes(b"")
        ...     file_sha256(file)[:16]
        'e3b0c44298fc1c14'
    """
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_path(path: Any) -> Path:
    if not isinstance(path, str | os.PathLike):
        raise DTypeError(f"`path` must be a str or os.PathLike, got {type(path).__name__}.")
    file = Path(path)
    if not file.is_file():
        what = "is a folder" if file.is_dir() else "does not exist"
        raise WeightsNotFoundError(
            f"`path` must be a weights file on disk, got {str(file)!r}, which {what}. "
            "Nothing is downloaded: see the docs page 'Pretrained weights' for where to get "
            "the files."
        )
    return file


def _read(file: Path) -> Mapping[str, Any]:
    size = file.stat().st_size
    expected = (
        "`path` must be a state-dict file written by torch.save (a zip archive, or the legacy "
        "pickle format) that torch.load(..., weights_only=True) reads"
    )
    if size == 0:
        raise WeightsError(f"{expected}, got {str(file)!r}, which is empty (0 bytes).")
    try:
        loaded = torch.load(file, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as err:
        # a damaged file fails anywhere in torch's parsers (the legacy format: IndexError,
        # KeyError, struct.error; the zip one: RuntimeError; weights_only: UnpicklingError)
        with file.open("rb") as handle:
            head = handle.read(16)
        detail = (str(err).splitlines() or [""])[0]
        raise WeightsError(
            f"{expected}, got {str(file)!r} ({size} bytes, starting with {head!r}): "
            f"{type(err).__name__}: {detail or repr(err)}. The file is truncated, damaged, "
            "not a torch.save file, or holds objects other than tensors and containers."
        ) from err
    if isinstance(loaded, Mapping) and not _is_state_dict(loaded):
        nested = [k for k in _NESTED if isinstance(loaded.get(k), Mapping)]
        if nested and _is_state_dict(loaded[nested[0]]):
            loaded = loaded[nested[0]]
    if not isinstance(loaded, Mapping) or not _is_state_dict(loaded):
        kind = type(loaded).__name__
        keys = f" with keys {list(loaded)[:_SHOWN]}" if isinstance(loaded, Mapping) else ""
        raise WeightsError(
            f"`path` must hold a state dict (names -> tensors, or one under "
            f"{' / '.join(repr(k) for k in _NESTED)}), got a {kind}{keys} in {str(file)!r}."
        )
    return loaded


def _is_state_dict(obj: Mapping[Any, Any]) -> bool:
    return len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _strip_wrapper_prefix(state: Mapping[str, Any], wanted: set[str]) -> dict[str, Any]:
    for prefix in _WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state) and not any(
            k.startswith(prefix) for k in wanted
        ):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return f"{len(names)} ({', '.join(names[:_SHOWN])}{more})"


def load_weights(
    model: ModelT,
    path: str | os.PathLike[str],
    *,
    check_hash: bool = True,
    strict: bool = True,
) -> ModelT:
    """Load a state-dict file into ``model``, in place; verify its checksum first.

    Nothing is ever downloaded. The steps:

    1. If ``check_hash`` and the file name carries a SHA-256 prefix in torchvision's
       convention (:func:`hash_prefix`: ``resnet18-f37072fd.pth``), the file's SHA-256 must
       start with it. A name without one is not checked.
    2. ``torch.load(path, map_location="cpu", weights_only=True)``: tensors and plain
       containers only, never code. A checkpoint holding the state dict under
       ``"state_dict"``, ``"model_state_dict"`` or ``"model"`` is unwrapped, and a
       ``module.`` / ``_orig_mod.`` prefix on every key (a state dict saved from a
       DataParallel or compiled model) is removed.
    3. The keys and shapes are compared with ``model``'s own (that of the model inside
       ``DataParallel``, DDP or ``torch.compile``). With ``strict``, the keys must be the
       same; without, missing and unexpected keys are skipped (and logged, logger
       ``"xai_feedback"``, level WARNING) but at least one key must match. A shape that
       differs is always an error: to fine-tune on other classes, load into the original
       architecture, then call :func:`replace_head`.

    The tensors are copied into the model's parameters and buffers, on their devices and in
    their dtypes.

    Args:
        model: Any module (a torchvision model built with ``weights=None`` is one).
        path: The state-dict file (``.pth``, ``.pt``).
        check_hash: Verify the SHA-256 prefix the file name carries. Turn off for a name
            whose suffix only looks like one (``model-20240101.pt``).
        strict: Require the file's keys to be exactly the model's.

    Returns:
        ``model`` itself, for chaining.

    Raises:
        DTypeError: ``model`` is not an ``nn.Module`` or ``path`` not a path.
        WeightsNotFoundError: ``path`` does not exist or is a folder (also a
            ``FileNotFoundError``).
        WeightsError: The checksum differs from the name's prefix; the file is not a state
            dict that ``weights_only=True`` reads; keys (with ``strict``) or shapes differ
            (the message lists the first few and their counts); no key matches.

    Shape:
        - every tensor of the file: the shape of the model's tensor of the same name

    Example:
        >>> import tempfile
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        ...                     nn.Linear(4, 2))
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     raw = Path(tmp) / "net.pth"
        ...     torch.save(net.state_dict(), raw)
        ...     named = raw.with_name(f"net-{file_sha256(raw)[:8]}.pth")  # torchvision's name
        ...     _ = raw.rename(named)
        ...     copy = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1),
        ...                          nn.Flatten(), nn.Linear(4, 2))
        ...     copy = load_weights(copy, named)
        >>> bool(torch.equal(copy[3].weight, net[3].weight))
        True
    """
    if not isinstance(model, nn.Module):
        raise DTypeError(f"`model` must be an nn.Module, got {type(model).__name__}.")
    file = _check_path(path)
    expected = hash_prefix(file) if check_hash else None
    if expected is not None:
        actual = file_sha256(file)
        if not actual.startswith(expected):
            raise WeightsError(
                f"`path` {file.name!r} must have a SHA-256 starting with {expected!r} (its name "
                f"says so, torchvision's convention), got {actual[: len(expected)]!r} "
                f"(full: {actual}): the file is damaged or not the one its name claims. "
                "Pass check_hash=False if the suffix of the name is not a checksum."
            )
    target = unwrap_model(model)
    own = target.state_dict()
    state = _strip_wrapper_prefix(_read(file), set(own))
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    where = f"{file.name!r} into {type(target).__name__}"
    if shapes:
        raise WeightsError(
            f"`path` {where}: the tensors must have the model's shapes, got "
            f"{_listed(shapes)} that differ. To fine-tune on other classes, load into the "
            "architecture the file was saved from, then call replace_head(model, num_classes)."
        )
    if strict and (missing or unexpected):
        parts = [f"missing {_listed(missing)}"] if missing else []
        parts += [f"unexpected {_listed(unexpected)}"] if unexpected else []
        raise WeightsError(
            f"`path` {where}: the file's keys must be the model's (strict=True), got "
            f"{'; '.join(parts)}. Is it the same architecture? strict=False skips these keys."
        )
    if len(missing) == len(own):
        raise WeightsError(
            f"`path` {where}: at least one key must match, got none of the file's "
            f"{_listed(unexpected)} among the model's {_listed(missing)}."
        )
    if missing or unexpected:
        _log.warning(
            "xai_feedback: load_weights(%s, strict=False) skipped missing %s, unexpected %s",
            where,
            _listed(missing),
            _listed(unexpected),
        )
    target.load_state_dict(state, strict=False)
    return model


def replace_head(
    model: ModelT,
    num_classes: int,
    *,
    head: str | None = None,
    generator: torch.Generator | None = None,
) -> ModelT:
    r"""Replace the classifier (a Linear or 1x1 conv) by a new one with ``num_classes`` outputs.

    The head is the layer that produces the logits, found from the model's structure
    (:func:`~xai_feedback.layers.find_classifier`): the last ``nn.Linear`` or 1x1
    ``nn.Conv2d`` of the model's ``classifier`` / ``fc`` / ``head`` / ``heads`` attribute,
    else the last one of the model if nothing but pooling follows it. So ``fc`` of a ResNet,
    ``classifier.1`` of a MobileNetV2, an EfficientNet or a SqueezeNet (a 1x1 conv),
    ``classifier.6`` of a VGG, never the ``nn.Linear`` of a squeeze-excitation block inside the
    features. The new layer has the old one's kind and inputs, bias (or none), device and
    dtype; its weights are PyTorch's default initialization, or uniform in
    :math:`\pm 1/\sqrt{\text{in}}` (bias 0) from ``generator``. Everything else is untouched:
    the pretrained features, their ``requires_grad`` flags and the modes.

    Args:
        model: Any classifier (possibly wrapped: DataParallel, DDP, ``torch.compile``).
        num_classes: Outputs of the new head.
        head: Dotted name of the ``nn.Linear`` or 1x1 ``nn.Conv2d`` to replace (default:
            found as above).
        generator: Random generator for the new weights (reproducible runs).

    Returns:
        ``model`` itself, for chaining.

    Raises:
        DTypeError: ``model`` is not an ``nn.Module``, or ``num_classes`` not an int.
        RangeError: ``num_classes < 1``.
        LayerError: The model has no classifier, the last candidate is inside the features
            (followed by spatial convolutions: name it with ``head``), or ``head`` names
            neither an ``nn.Linear`` nor a 1x1 ``nn.Conv2d`` (or no module at all).

    Shape:
        - head weight: :math:`(K_{old}, F) \to (K, F)` (a 1x1 conv:
          :math:`(K_{old}, F, 1, 1) \to (K, F, 1, 1)`), with :math:`K` = ``num_classes``

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        ...                     nn.Dropout(0.2), nn.Linear(8, 1000))
        >>> net = replace_head(net, 10, generator=torch.Generator().manual_seed(0))
        >>> net[4], net(torch.rand(2, 3, 16, 16)).shape
        (Linear(in_features=8, out_features=10, bias=True), torch.Size([2, 10]))
    """
    if not isinstance(model, nn.Module):
        raise DTypeError(f"`model` must be an nn.Module, got {type(model).__name__}.")
    check_int(num_classes, "num_classes", minimum=1)
    target = unwrap_model(model)
    if head is not None and not isinstance(head, str):
        raise DTypeError(f"`head` must be a dotted name or None, got {type(head).__name__}.")
    name, old = find_classifier(target) if head is None else resolve_layer(target, head)
    new = _new_head(name, old, num_classes)
    if generator is not None:
        bound = 1.0 / new.weight[0].numel() ** 0.5
        with torch.no_grad():
            new.weight.copy_(
                torch.empty(new.weight.shape, dtype=new.weight.dtype).uniform_(
                    -bound, bound, generator=generator
                )
            )
            if new.bias is not None:
                new.bias.zero_()
    new.train(old.training)
    parent_name, _, child = name.rpartition(".")
    parent = target.get_submodule(parent_name) if parent_name else target
    setattr(parent, child, new)
    return model


def _new_head(name: str, old: nn.Module, num_classes: int) -> nn.Linear | nn.Conv2d:
    """A layer like ``old`` (``nn.Linear`` or 1x1 ``nn.Conv2d``) with ``num_classes`` outputs."""
    if isinstance(old, nn.Linear | nn.Conv2d):
        bias, device, dtype = old.bias is not None, old.weight.device, old.weight.dtype
        if isinstance(old, nn.Linear):
            return nn.Linear(old.in_features, num_classes, bias=bias, device=device, dtype=dtype)
        if old.kernel_size == (1, 1) and old.groups == 1:
            return nn.Conv2d(old.in_channels, num_classes, 1, bias=bias, device=device, dtype=dtype)
    what = type(old).__name__
    if isinstance(old, nn.Conv2d):
        what += f" with kernel {old.kernel_size} and groups {old.groups}"
    raise LayerError(
        f"`head` {name!r} must name an nn.Linear or a 1x1 nn.Conv2d (groups 1) of `model`, "
        f"got {what}."
    )


def freeze_batchnorm(model: ModelT, *, parameters: bool = False) -> ModelT:
    """Training mode with every BatchNorm in eval mode: fine-tune without moving the statistics.

    The recipe ``model.train()`` then ``bn.eval()`` for each BatchNorm, in one call. A model
    in eval mode is first put in training mode as a whole (so that
    :func:`~xai_feedback.training.fit`, which keeps the flags of a model already in training
    mode, keeps these); a model already in training mode keeps its other flags. The running
    mean and variance then stay those of the pretrained model. Call it again after a
    ``model.train()`` of your own, which sets every flag back to training.

    Args:
        model: Any module; every ``nn.BatchNorm1d/2d/3d`` and ``nn.SyncBatchNorm`` in it is
            frozen.
        parameters: Also freeze the BatchNorms' affine weight and bias
            (``requires_grad=False``).

    Returns:
        ``model`` itself, for chaining.

    Raises:
        DTypeError: ``model`` is not an ``nn.Module``.

    Shape:
        - no tensor is read or changed; only the modules' flags

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
        >>> net = freeze_batchnorm(net)
        >>> net.training, net[0].training, net[1].training
        (True, True, False)
    """
    if not isinstance(model, nn.Module):
        raise DTypeError(f"`model` must be an nn.Module, got {type(model).__name__}.")
    if not model.training:
        model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
            if parameters:
                for param in module.parameters(recurse=False):
                    param.requires_grad_(False)
    return model
