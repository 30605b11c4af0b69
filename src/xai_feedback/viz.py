"""Figures (matplotlib, imported lazily: ``pip install 'xai-feedback[plot]'``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from xai_feedback._checks import check_int, check_shape

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from xai_feedback.ranking import PCACEResult

__all__ = ["plot_channel_ranking", "plot_curves"]


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
    the image in grey with the channel's activation map (upsampled, scaled per row) on top.

    Args:
        result: A :class:`~xai_feedback.ranking.PCACEResult`.
        activations: The layer's activations ``(N, C, h, w)`` (see
            :func:`~xai_feedback.ranking.capture`).
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
        >>> from xai_feedback.ranking import capture, pcace  # doctest: +SKIP
        >>> model, x = GAPNet(width=4), torch.rand(20, 1, 28, 28)  # doctest: +SKIP
        >>> result = pcace(model, "features", x, class_idx=0)  # doctest: +SKIP
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
    grey = images[:n_images].detach().float().cpu().mean(dim=1)
    fig, axes = plt.subplots(
        len(channels), n_images, figsize=(1.5 * n_images, 1.5 * len(channels)), squeeze=False
    )
    for row, channel in enumerate(channels):
        scale = float(maps[:, row].abs().max()) or 1.0
        label = "top" if row < top else "bottom"
        for col in range(n_images):
            ax = axes[row][col]
            ax.imshow(grey[col].numpy(), cmap="gray")
            ax.imshow((maps[col, row] / scale).numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(
                    f"{label} c{channel}\n{float(result.scores[channel]):.3f}", fontsize=8
                )
    fig.suptitle(f"PCACE channels for class {result.class_idx} ({result.score})", fontsize=9)
    fig.tight_layout()
    figure: Figure = fig
    return figure


def plot_curves(
    curves: dict[str, tuple[Sequence[float], Sequence[float], Sequence[float] | None]],
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    ax: Any = None,
) -> Any:
    """Plot named curves ``{name: (x, mean, std or None)}`` with a shaded ±1 std band."""
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 3.2))
    for name, (x, mean, std) in curves.items():
        (line,) = ax.plot(x, mean, marker="o", ms=3, label=name)
        if std is not None:
            low = [m - s for m, s in zip(mean, std, strict=True)]
            high = [m + s for m, s in zip(mean, std, strict=True)]
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.15)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return ax
