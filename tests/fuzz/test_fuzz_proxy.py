"""Fuzz: proxy images, hard-example mining and proxy schedules (proxy.py)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.strategies import (
    FAST,
    Spec,
    any_rank,
    assert_finite,
    expect_error,
    make,
    mostly,
    outcome,
    seeds,
    shapes,
    specs,
)
from xai_feedback.errors import DTypeError, RangeError, ShapeError
from xai_feedback.proxy import ProxySchedule, mine_hard_examples, proxy_images


@FAST
@given(
    images=specs(mostly(shapes((0, 3), (1, 2), (1, 8), (1, 8)), any_rank()), bad_dtype=0.1),
    map_kind=st.sampled_from(["uniform", "huge", "constant", "nan"]),
    factor=st.sampled_from([1, 2, 3]),
    mode=st.sampled_from(["replace", "blend", "cutout"]),
    fill=st.sampled_from(["zero", "mean", "max", "min"]),
    threshold=st.floats(-0.2, 1.2),
    seed=seeds,
)
def test_proxy_images(
    images: Spec, map_kind: str, factor: int, mode: str, fill: str, threshold: float, seed: int
) -> None:
    x = make(images, seed, budget=1)
    if x.dim() == 4:
        b, _, h, w = x.shape
        mh, mw = (h // factor or 1), (w // factor or 1)
    else:
        b, h, w, mh, mw = 1, 1, 1, 1, 1
    maps = make(Spec((b, mh, mw), torch.float32, map_kind), seed + 1, budget=1)
    out, error = outcome(
        "proxy",
        images.label() if map_kind != "nan" else "NaN/Inf",
        lambda: proxy_images(x, maps, threshold=threshold, mode=mode, fill=fill),
        ["images", "maps", "threshold", "mode"],
    )
    if x.dim() != 4 or not images.dtype.is_floating_point:
        expect_error(error, ShapeError, DTypeError)
        return
    if mh * w != mw * h or h * w == 0:
        expect_error(error, ShapeError)
        return
    if not 0 <= threshold <= 1 or mode == "cutout":
        expect_error(error, RangeError)
        return
    if b and (not images.finite or map_kind == "nan"):
        expect_error(error, RangeError)
        return
    assert out is not None, error
    assert out.shape == x.shape and out.dtype == x.dtype
    if not b:
        return
    assert_finite(out, "proxy images")
    if mode == "replace":
        # every pixel is either kept or replaced by its image's fill value
        flat = x.flatten(2)
        value = {
            "zero": torch.zeros_like(flat[..., 0]),
            "mean": flat.mean(2),
            "max": flat.amax(2),
            "min": flat.amin(2),
        }[fill][..., None, None].expand_as(x)
        assert bool(((out == x) | (out == value)).all())
        # reference: min-max normalized, resized map above the threshold
        m = maps.double().flatten(1)
        low, high = m.amin(1, keepdim=True), m.amax(1, keepdim=True)
        norm = ((m - low) / (high - low + 1e-8)).view(b, mh, mw)
        if (mh, mw) != (h, w):
            norm = F.interpolate(norm[:, None], size=(h, w), mode="bilinear", align_corners=False)[
                :, 0
            ]
        chosen = norm > threshold
        # away from the threshold (rounding), the replaced pixels are the chosen ones
        safe = (norm - threshold).abs() > 1e-4
        replaced = (out != x).any(1)
        assert not bool((replaced & ~chosen & safe).any())


@FAST
@given(
    n=st.integers(0, 6),
    k=st.integers(1, 4),
    labels=st.lists(st.integers(-2, 5), min_size=0, max_size=6),
    by=st.sampled_from(["misclassified", "loss", "entropy"]),
    fraction=st.one_of(st.none(), st.floats(-0.5, 1.5)),
    count=st.one_of(st.none(), st.integers(-1, 8)),
    kind=st.sampled_from(["normal", "huge", "nan"]),
    seed=seeds,
)
def test_mine_hard_examples(
    n: int,
    k: int,
    labels: list[int],
    by: str,
    fraction: float | None,
    count: int | None,
    kind: str,
    seed: int,
) -> None:
    logits = make(Spec((n, k), torch.float32, kind), seed, budget=1)
    y = torch.tensor(labels, dtype=torch.long)
    bad_labels = len(labels) != n or any(v < 0 or v >= k for v in labels)
    label = (
        "labels out of range/length" if bad_labels else Spec((n, k), torch.float32, kind).label()
    )
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out, error = outcome(
            "proxy",
            label,
            lambda: mine_hard_examples(logits, y, by=by, fraction=fraction, count=count),
            ["logits", "labels", "target", "by", "fraction", "count"],
        )
    if len(labels) != n or by == "entropy":
        expect_error(error, ShapeError, RangeError)
        return
    if count is not None and count < 0:
        expect_error(error, RangeError)
        return
    if count is None and (fraction is None or not 0 <= fraction <= 1):
        expect_error(error, RangeError, ValueError)
        return
    if kind == "nan" and n:
        expect_error(error, RangeError)
        return
    if bad_labels:
        expect_error(error, RangeError)
        return
    assert out is not None, error
    assert out.dtype == torch.long and len(set(out.tolist())) == len(out)
    loss = F.cross_entropy(logits.double(), y, reduction="none")
    candidates = [i for i in range(n) if by == "loss" or int(logits[i].argmax()) != labels[i]]
    keep = count if count is not None else math.ceil(float(fraction or 0) * len(candidates))
    assert len(out) == min(keep, len(candidates))
    assert set(out.tolist()) <= set(candidates)
    losses = loss[out]
    assert bool((losses[:-1] >= losses[1:] - 1e-6).all())  # hardest first


@FAST
@given(
    steps=st.lists(
        st.one_of(st.integers(-1, 5), st.sampled_from(["p", "q"]), st.floats(0.5, 2.0)), max_size=6
    )
)
def test_proxy_schedule(steps: list[int | str | float]) -> None:
    schedule, error = outcome(
        "proxy", "arguments", lambda: ProxySchedule(steps), ["steps", "schedule"]
    )  # type: ignore[arg-type]
    valid = (
        bool(steps)
        and all((isinstance(s, int) and s >= 1) or s == "p" for s in steps)
        and isinstance(steps[-1], int)
    )
    if not valid:
        expect_error(error, RangeError, DTypeError)
        return
    assert schedule is not None
    assert schedule.epochs == sum(s for s in steps if isinstance(s, int))
    assert schedule.without_proxies().epochs == schedule.epochs
