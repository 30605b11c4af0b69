"""Figures: plot_maps (grid, shared row normalization, any device) and plot_curves."""

from __future__ import annotations

import pytest
import torch

from xai_feedback import DTypeError, RangeError, ShapeError
from xai_feedback.evaluation import Curves

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from xai_feedback.viz import plot_curves, plot_maps  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures() -> None:
    yield
    plt.close("all")


def _image_axes(fig) -> list:
    return [ax for ax in fig.axes if len(ax.images) == 2]


def test_plot_maps_grid_rows_share_one_scale(device: torch.device) -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 1, 28, 28, generator=g).to(device)
    signed = torch.randn(3, 14, 14, generator=g).to(device)
    positive = torch.rand(3, 7, 7, generator=g).to(device) * 5
    fig = plot_maps(images, {"signed": signed, "positive": positive}, titles=["a", "b", "c"])
    panels = _image_axes(fig)
    assert len(panels) == 2 * 3 and len(fig.axes) == 2 * 3 + 2  # + one color bar per row
    m_signed = float(signed.abs().max())
    m_positive = float(positive.max())
    for ax in panels[:3]:  # one normalization for the whole row: symmetric for signed maps
        assert ax.images[1].get_clim() == pytest.approx((-m_signed, m_signed))
        assert ax.images[1].get_array().shape == (28, 28)  # upsampled to the image size
    for ax in panels[3:]:  # [0, max] for non-negative maps
        assert ax.images[1].get_clim() == pytest.approx((0.0, m_positive))
    assert panels[0].get_ylabel() == "signed" and panels[3].get_ylabel() == "positive"
    assert [ax.get_title() for ax in panels[:3]] == ["a", "b", "c"]
    # the background is the image itself, scaled to [0, 1]
    x = images[1, 0].cpu()
    expected = (x - x.min()) / (x.max() - x.min())
    shown = torch.as_tensor(panels[1].images[0].get_array().data)
    torch.testing.assert_close(shown.float(), expected)


def test_plot_maps_from_an_all_class_tensor_and_rgb_images(device: torch.device) -> None:
    g = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 16, 16, generator=g).to(device)
    maps = torch.randn(2, 4, 4, 4, generator=g).to(device).requires_grad_()
    fig = plot_maps(images, maps * 2)  # a tensor in the graph is fine
    panels = _image_axes(fig)
    assert len(panels) == 4 * 2
    assert [panels[2 * r].get_ylabel() for r in range(4)] == [f"class {r}" for r in range(4)]
    for r in range(4):
        m = float((maps[:, r] * 2).detach().abs().max())
        assert panels[2 * r].images[1].get_clim() == pytest.approx((-m, m))
    assert panels[0].images[0].get_array().shape == (16, 16, 3)  # RGB background
    no_bar = plot_maps(images, maps.detach(), row_names=list("abcd"), colorbar=False)
    assert len(no_bar.axes) == 8


def test_plot_maps_takes_the_one_row_shape_attribute_returns() -> None:
    # (N, h, w): what attribute() and a one-class hook.maps give, the first thing a user plots
    from xai_feedback.attribution import attribute
    from xai_feedback.models import GAPNet

    g = torch.Generator().manual_seed(2)
    model, images = GAPNet(width=4, generator=g).eval(), torch.rand(3, 1, 28, 28, generator=g)
    maps = attribute(model, images, torch.tensor([0, 1, 2]), method="grad_cam", reduce="sum")
    assert maps.shape == (3, 28, 28)
    panels = _image_axes(plot_maps(images, maps))
    assert len(panels) == 3 and panels[0].get_ylabel() == "map"
    m = float(maps.abs().max())
    low = -m if bool((maps < 0).any()) else 0.0
    assert panels[0].images[1].get_clim() == pytest.approx((low, m))
    named = _image_axes(plot_maps(images, maps, row_names=["grad_cam"]))
    assert named[0].get_ylabel() == "grad_cam"
    with pytest.raises(ShapeError, match="maps"):
        plot_maps(images, maps[:2])


def test_plot_maps_rejects_bad_input() -> None:
    images = torch.rand(3, 1, 8, 8)
    with pytest.raises(ShapeError, match="maps\\['a'\\]"):
        plot_maps(images, {"a": torch.rand(2, 4, 4)})
    with pytest.raises(ShapeError, match="row_names"):
        plot_maps(images, torch.rand(3, 2, 4, 4), row_names=["x"])
    with pytest.raises(ShapeError, match="titles"):
        plot_maps(images, torch.rand(3, 2, 4, 4), titles=["x"])
    with pytest.raises(RangeError, match="at least one row"):
        plot_maps(images, {})
    with pytest.raises(DTypeError, match="maps"):
        plot_maps(images, [torch.rand(3, 4, 4)])  # type: ignore[arg-type]
    with pytest.raises(RangeError, match="alpha"):
        plot_maps(images, torch.rand(3, 1, 4, 4), alpha=1.5)


def _curves(name: str) -> Curves:
    c = Curves(name, "test accuracy", [0.1, 0.5, 0.9])
    for f, r, s in ((0.1, 0.95, 0.9), (0.5, 0.8, 0.5), (0.9, 0.4, 0.2)):
        c.add("random", f, r)
        c.add("saliency", f, s)
        c.add("saliency", f, s + 0.02)
    return c


def _texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_plot_curves_units_better_direction_and_baseline() -> None:
    ax = _curves("ROAR").plot()
    assert ax.get_xlabel() == "fraction of pixels removed"
    assert _texts(ax) == ["↓ better"]  # ROAR: lower accuracy = more faithful
    labels = ax.get_legend_handles_labels()[1]
    assert "random (baseline)" in labels and "worse than random" in labels
    # the shaded region lies above the random curve (the worse side for ROAR)
    shade = next(c for c in ax.collections if c.get_label() == "worse than random")
    ys = shade.get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(0.4) and ys.max() == pytest.approx(ax.get_ylim()[1])

    kar = _curves("KAR").plot()
    assert _texts(kar) == ["↑ better"]
    shade = next(c for c in kar.collections if c.get_label() == "worse than random")
    ys = shade.get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(kar.get_ylim()[0]) and ys.max() == pytest.approx(0.95)

    data = {"random": ([0.1, 0.5], [0.9, 0.6], None), "x": ([0.1, 0.5], [0.8, 0.3], None)}
    patches = plot_curves(data, ylabel="p", units="patches", title="ROAD MoRF")
    assert patches.get_xlabel() == "fraction of patches removed" and _texts(patches)
    plain = plot_curves(data, ylabel="p", title="something else", baseline=None)
    assert _texts(plain) == [] and "worse than random" not in plain.get_legend_handles_labels()[1]
    assert _texts(plot_curves(data, ylabel="p", better="higher")) == ["↑ better"]
    with pytest.raises(RangeError, match="better"):
        plot_curves(data, ylabel="p", better="up")


def test_plot_curves_labels_are_not_clipped() -> None:
    ax = plot_curves(
        {"random": ([0.1, 0.9], [0.9, 0.1], None)},
        ylabel="true-class probability\n(two lines)",
        title="ROAR",
    )
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    for label in (ax.xaxis.label, ax.yaxis.label, ax.title):
        extent = label.get_window_extent(renderer)
        assert extent.x0 >= box.x0 - 1 and extent.x1 <= box.x1 + 1
        assert extent.y0 >= box.y0 - 1 and extent.y1 <= box.y1 + 1
