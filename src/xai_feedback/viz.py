"""Figures (matplotlib, imported lazily: ``pip install 'xai-feedback[plot]'``)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from xai_feedback._checks import check_choice, check_int, check_number, check_shape
from xai_feedback.errors import DTypeError, RangeError, ShapeError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from xai_feedback.pcace import PCACEResult

__all__ = ["BETTER", "plot_channel_ranking", "plot_curves", "plot_maps"]

BETTER = ("auto", "higher", "lower", "none")
"""Values of ``plot_curves(better=...)``."""


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("plotting needs matplotlib: pip install 'xai-feedback[plot]'") from error
    return plt


def plot_channel_ranking(
    result: PCACEResult,
    activations: torch.Tensor,
    images: torch.Tensor,
    *,
    top: int = 4,
    bottom: int = 4,
    n_images: int = 5,
) -> Figure:
    """Activation maps of the best- and worst-ranked channels over a few images.

    One row per channel (``top`` best first, then ``bottom`` worst), one column per image:
    the image in gray with the channel's activation map (upsampled, scaled per row) on top.

    Args:
        result: A :class:`~xai_feedback.pcace.PCACEResult`.
        activations: The layer's activations ``(N, C, h, w)`` (see
            :func:`~xai_feedback.pcace.capture`).
        images: The images ``(N, c, H, W)`` they came from.
        top: Best channels shown.
        bottom: Worst channels shown.
        n_images: Images shown.

    Returns:
        The matplotlib figure.

    Shape:
        - activations: :math:`(N, C, h, w)`; images: :math:`(N, c, H, W)`.

    Example:
        Needs matplotlib (not run as a doctest; ``tests/test_ranking.py`` runs it):

        >>> from xai_feedback.models import GAPNet  # doctest: +SKIP
        >>> from xai_feedback.pcace import capture, pcace  # doctest: +SKIP
        >>> model, x = GAPNet(width=4), torch.rand(20, 1, 28, 28)  # doctest: +SKIP
        >>> result = pcace(model, "features", x, target=0)  # doctest: +SKIP
        >>> acts, _ = capture(model, "features", x)  # doctest: +SKIP
        >>> plot_channel_ranking(result, acts, x).savefig("channels.png")  # doctest: +SKIP
    """
    dims = check_shape(activations, "N C h w", "activations")
    check_shape(images, "N c H W", "images", N=dims["N"])
    check_int(top, "top", minimum=0)
    check_int(bottom, "bottom", minimum=0)
    check_int(n_images, "n_images", minimum=1, maximum=dims["N"])
    plt = _pyplot()
    channels = result.top(top) + result.bottom(bottom)
    size = (int(images.shape[-2]), int(images.shape[-1]))
    maps = torch.nn.functional.interpolate(
        activations[:n_images, channels].detach().float().cpu(), size=size, mode="bilinear"
    )
    gray = images[:n_images].detach().float().cpu().mean(dim=1)
    fig, axes = plt.subplots(
        len(channels), n_images, figsize=(1.5 * n_images, 1.5 * len(channels)), squeeze=False
    )
    for row, channel in enumerate(channels):
        scale = float(maps[:, row].abs().max()) or 1.0
        label = "top" if row < top else "bottom"
        for col in range(n_images):
            ax = axes[row][col]
            ax.imshow(gray[col].numpy(), cmap="gray")
            ax.imshow((maps[col, row] / scale).numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(
                    f"{label} c{channel}\n{float(result.scores[channel]):.3f}", fontsize=8
                )
    fig.suptitle(f"PCACE channels for class {result.target} ({result.score})", fontsize=9)
    fig.tight_layout()
    figure: Figure = fig
    return figure


def _gray_or_rgb(images: torch.Tensor) -> torch.Tensor:
    """Images ``(N, C, H, W)`` as ``(N, H, W)`` gray or ``(N, H, W, 3)`` RGB in [0, 1], on CPU."""
    x = images.detach().float().cpu()
    x = x if x.shape[1] == 3 else x.mean(dim=1, keepdim=True)
    low = x.amin(dim=(1, 2, 3), keepdim=True)
    high = x.amax(dim=(1, 2, 3), keepdim=True)
    x = (x - low) / (high - low).clamp_min(1e-12)
    return x.permute(0, 2, 3, 1) if x.shape[1] == 3 else x[:, 0]


def _map_rows(
    maps: Mapping[str, torch.Tensor] | torch.Tensor, row_names: Sequence[str] | None, n: int
) -> list[tuple[str, torch.Tensor]]:
    """``plot_maps``'s rows: ``(name, maps (N, h, w))``, checked against ``n`` images."""
    if isinstance(maps, torch.Tensor) and maps.dim() == 3:
        maps = maps.unsqueeze(1)  # (N, h, w): one row (attribute(), a one-class hook.maps)
        row_names = ["map"] if row_names is None else row_names
    if isinstance(maps, torch.Tensor):
        mdims = check_shape(maps, "N R h w", "maps", N=n)
        names = [f"class {r}" for r in range(mdims["R"])] if row_names is None else list(row_names)
        if len(names) != mdims["R"]:
            raise ShapeError(
                f"`row_names` must name the {mdims['R']} rows of `maps`, got {len(names)} names."
            )
        rows = [(names[r], maps[:, r]) for r in range(mdims["R"])]
    elif isinstance(maps, Mapping):
        rows = []
        for name, m in maps.items():
            check_shape(m, "N h w", f"maps[{name!r}]", N=n)
            rows.append((str(name), m))
    else:
        raise DTypeError(
            "`maps` must be a mapping name -> (N, h, w) tensor or an (N, R, h, w) tensor, "
            f"got {type(maps).__name__}."
        )
    if not rows:
        raise RangeError("`maps` must hold at least one row, got none.")
    return rows


def plot_maps(
    images: torch.Tensor,
    maps: Mapping[str, torch.Tensor] | torch.Tensor,
    *,
    row_names: Sequence[str] | None = None,
    titles: Sequence[str] | None = None,
    alpha: float = 0.55,
    size: float = 1.5,
    colorbar: bool = True,
) -> Figure:
    r"""A grid of images with heat-map overlays: one row per method or class, a column per image.

    Every map is upsampled (bilinearly) to the image size and drawn over the image in gray
    (or RGB for 3-channel images). A row shares one normalization, so its maps compare
    directly: signed rows (any negative value) use a diverging color map on
    :math:`[-m, m]`, non-negative rows :math:`[0, m]`, with :math:`m` the row's largest
    :math:`|\text{map}|`; one color bar per row shows the scale. Tensors may live on any
    device (they are copied to the CPU for drawing).

    Args:
        images: The images ``(N, C, H, W)``.
        maps: ``{row name: maps (N, h, w)}`` (e.g. one entry per attribution method), one
            tensor ``(N, R, h, w)`` (e.g. all-class CAMs, one row per class), or one tensor
            ``(N, h, w)`` (one row: what :func:`~xai_feedback.attribution.attribute` and a
            one-class ``hook.maps`` return).
        row_names: Labels of the rows of a tensor ``maps`` (default ``"class r"``, or
            ``"map"`` for an ``(N, h, w)`` tensor); not used with a mapping.
        titles: Column titles, one per image (e.g. the labels).
        alpha: Opacity of the heat maps, in [0, 1].
        size: Size of one panel, in inches.
        colorbar: Draw one color bar per row.

    Returns:
        The matplotlib figure (``R * N`` image axes, then ``R`` color-bar axes).

    Raises:
        ShapeError: A map batch does not match the images, or the names/titles have the
            wrong length.
        RangeError: ``maps`` is empty, or ``alpha`` is outside [0, 1].
        DTypeError: ``maps`` is neither a mapping nor a tensor.

    Shape:
        - images: :math:`(N, C, H, W)`
        - maps: :math:`(N, h, w)` per row, :math:`(N, R, h, w)`, or one :math:`(N, h, w)`

    Example:
        Needs matplotlib (not run as a doctest; ``tests/test_viz.py`` runs it):

        >>> from xai_feedback.hooks import CAMHook  # doctest: +SKIP
        >>> from xai_feedback.models import GAPNet  # doctest: +SKIP
        >>> model, x = GAPNet(width=4), torch.rand(4, 1, 28, 28)  # doctest: +SKIP
        >>> with CAMHook(model) as hook:  # doctest: +SKIP
        ...     maps = hook.maps(model(x), all_classes=True)  # (4, 10, 14, 14)
        >>> fig = plot_maps(x, maps[:, :3], row_names=["0", "1", "2"])  # doctest: +SKIP
        >>> fig.savefig("maps.png")  # doctest: +SKIP
    """
    dims = check_shape(images, "N C H W", "images")
    n = dims["N"]
    rows = _map_rows(maps, row_names, n)
    if titles is not None and len(titles) != n:
        raise ShapeError(f"`titles` must have one title per image ({n}), got {len(titles)}.")
    check_number(alpha, "alpha", minimum=0, maximum=1)
    check_number(size, "size", minimum=0, strict_minimum=True)
    plt = _pyplot()
    background = _gray_or_rgb(images)
    hw = (dims["H"], dims["W"])
    fig, axes = plt.subplots(
        len(rows),
        n,
        figsize=(size * n + (0.8 if colorbar else 0.2), size * len(rows) + 0.3),
        squeeze=False,
        layout="constrained",
    )
    for r, (name, m) in enumerate(rows):
        raw = m.detach().float().cpu()
        scale = float(raw.abs().max()) or 1.0
        signed = bool((raw < 0).any())
        low, cmap = (-scale, "RdBu_r") if signed else (0.0, "inferno")
        up = torch.nn.functional.interpolate(raw[:, None], size=hw, mode="bilinear")[:, 0]
        shown = None
        for col in range(n):
            ax = axes[r][col]
            ax.imshow(background[col].numpy(), cmap="gray", vmin=0, vmax=1)
            shown = ax.imshow(up[col].numpy(), cmap=cmap, vmin=low, vmax=scale, alpha=alpha)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(name, fontsize=8)
            if r == 0 and titles is not None:
                ax.set_title(str(titles[col]), fontsize=8)
        if colorbar and shown is not None:
            bar = fig.colorbar(shown, ax=list(axes[r]), shrink=0.9, pad=0.02)
            bar.ax.tick_params(labelsize=6)
    figure: Figure = fig
    return figure


_LOWER_IS_BETTER = ("roar", "morf", "deletion", "most relevant first")
_HIGHER_IS_BETTER = ("kar", "lerf", "insertion", "least relevant first")


def _better(better: str, title: str) -> str:
    if better != "auto":
        return better
    text = " " + re.sub(r"[^a-z]+", " ", title.lower()) + " "
    if any(f" {word} " in text for word in _LOWER_IS_BETTER):
        return "lower"
    if any(f" {word} " in text for word in _HIGHER_IS_BETTER):
        return "higher"
    return "none"


def plot_curves(
    curves: dict[str, tuple[Sequence[float], Sequence[float], Sequence[float] | None]],
    *,
    xlabel: str | None = None,
    ylabel: str,
    title: str = "",
    units: str = "pixels",
    better: str = "auto",
    baseline: str | None = "random",
    ax: Any = None,
) -> Any:
    """Plot named curves ``{name: (x, mean, std or None)}`` with shaded ±1 std bands.

    The ``baseline`` curve (the random ranking) is drawn gray and dashed, and the region on
    its *worse* side is shaded: a faithful method's curve lies outside the shading. An arrow
    in the corner marks the better direction. A new figure uses matplotlib's constrained
    layout, so axis labels are never clipped.

    Args:
        curves: ``{name: (fractions, mean, std or None)}``.
        xlabel: The x label; default ``"fraction of {units} removed"``.
        ylabel: The y label (the metric).
        title: The title.
        units: What the fractions count: ``"pixels"`` or ``"patches"`` (or any plural noun).
        better: ``"lower"`` (ROAR, MoRF, deletion), ``"higher"`` (KAR, LeRF, insertion),
            ``"none"``, or ``"auto"``: guessed from those words in ``title``.
        baseline: Name of the baseline curve in ``curves`` (``None``: no baseline).
        ax: Axes to draw on (default: a new figure).

    Returns:
        The matplotlib axes.

    Example:
        Needs matplotlib (not run as a doctest; ``tests/test_viz.py`` runs it):

        >>> curves = {"random": ([0.1, 0.5], [0.9, 0.6], None),  # doctest: +SKIP
        ...           "saliency": ([0.1, 0.5], [0.8, 0.3], [0.02, 0.05])}
        >>> ax = plot_curves(curves, ylabel="accuracy", title="ROAR")  # doctest: +SKIP
        >>> ax.figure.savefig("roar.png")  # doctest: +SKIP
    """
    check_choice(better, "better", BETTER)
    direction = _better(better, title)
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 3.2), layout="constrained")
    shade: tuple[Sequence[float], Sequence[float]] | None = None
    for name, (x, mean, std) in curves.items():
        is_baseline = name == baseline
        style: dict[str, Any] = (
            {"color": "0.45", "ls": "--", "label": f"{name} (baseline)"}
            if is_baseline
            else {"label": name}
        )
        (line,) = ax.plot(x, mean, marker="o", ms=3, **style)
        if std is not None:
            low = [m - s for m, s in zip(mean, std, strict=True)]
            high = [m + s for m, s in zip(mean, std, strict=True)]
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.15, lw=0)
        if is_baseline:
            shade = (x, mean)
    if shade is not None and direction != "none":
        ax.autoscale_view()
        bottom, top = ax.get_ylim()
        edge = top if direction == "lower" else bottom
        x, mean = shade
        ax.fill_between(
            x, mean, [edge] * len(mean), color="0.5", alpha=0.15, lw=0, label="worse than random"
        )
        ax.set_ylim(bottom, top)
    if direction != "none":
        arrow = "↓" if direction == "lower" else "↑"
        ax.annotate(
            f"{arrow} better",
            xy=(0.98, 0.04 if direction == "lower" else 0.96),
            xycoords="axes fraction",
            ha="right",
            va="bottom" if direction == "lower" else "top",
            fontsize=8,
            color="0.25",
        )
    ax.set_xlabel(xlabel if xlabel is not None else f"fraction of {units} removed")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return ax
