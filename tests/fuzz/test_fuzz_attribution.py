"""Fuzz: attribute (at the input and at the grid), target resolution and PCACE (input checks)."""

from __future__ import annotations

import warnings

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.strategies import (
    FAST,
    SLOW,
    Spec,
    any_rank,
    assert_finite,
    close,
    expect_error,
    make,
    mostly,
    outcome,
    seeds,
    shapes,
    specs,
)
from xai_feedback.attribution import attribute
from xai_feedback.errors import DTypeError, LayerError, RangeError, ShapeError
from xai_feedback.functional import resize_maps
from xai_feedback.methods import method_names
from xai_feedback.models import GAPNet
from xai_feedback.pcace import channel_components, pcace
from xai_feedback.targets import resolve_targets

K = 3
_MODEL: list[GAPNet] = []


def _model() -> GAPNet:
    if not _MODEL:
        _MODEL.append(GAPNet(1, K, width=1, depth=2, generator=torch.Generator().manual_seed(0)))
    return _MODEL[0]


targets = st.one_of(
    st.none(),
    st.lists(st.integers(-2, K + 1), min_size=0, max_size=3),
    st.just("float"),
    st.just("callable"),
    st.just("string"),
)


def _target(kind: object, b: int) -> object:
    if kind is None or kind == "string":
        return kind
    if kind == "float":
        return torch.zeros(b)
    if kind == "callable":
        return lambda logits: logits.argmin(1)
    return torch.tensor(kind, dtype=torch.long)


def _target_ok(kind: object, b: int) -> bool:
    if kind in (None, "callable"):
        return True
    if kind in ("float", "string"):
        return False
    values = list(kind)  # type: ignore[call-overload]
    return len(values) == b and all(0 <= v < K for v in values)


@settings(SLOW, max_examples=60)
@given(
    images=specs(
        mostly(
            shapes((0, 3), (1, 1), (2, 6), (2, 6)),
            shapes((1, 2), (2, 2), (2, 4), (2, 4)),
            any_rank(),
        ),
        kinds=("uniform", "normal", "nan", "inf"),
        bad_dtype=0.05,
        meta=0.05,
    ),
    # the relevance kind needs a vision transformer (tests/test_relevance.py)
    method=st.sampled_from(
        [*(m for m in method_names() if m not in method_names("relevance")), "lrp"]
    ),
    target=targets,
    ensemble=st.sampled_from(["none", "none", "smoothgrad", "vargrad"]),
    reduce=st.sampled_from(["none", "sum", "abs_sum", "l1"]),
    seed=seeds,
)
def test_attribute(
    images: Spec, method: str, target: object, ensemble: str, reduce: str, seed: int
) -> None:
    model = _model()
    x = make(images, seed)
    b = x.shape[0] if x.dim() else 0
    t = _target(target, b)
    g = torch.Generator().manual_seed(seed)
    training = model.training
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out, error = outcome(
            "attribution",
            images.label() if _target_ok(target, b) else "target out of range/length/type",
            lambda: attribute(
                model,
                x,
                t,
                method=method,
                ensemble=ensemble,
                n_samples=2,
                reduce=reduce,
                generator=g,
            ),  # type: ignore[arg-type]
            ["images", "target", "method", "reduce", "ensemble"],
        )
    assert model.training == training  # flags restored, also after an error
    if method == "lrp" or reduce == "l1":
        expect_error(error, RangeError)
        return
    if x.dim() != 4 or x.shape[1] != 1 or not images.dtype.is_floating_point:
        expect_error(error, ShapeError, DTypeError)
        return
    if b == 0:
        expect_error(error, ShapeError)
        return
    if images.dtype != torch.float32 or images.device != "cpu":
        expect_error(error, DTypeError)
        return
    if not images.finite:
        expect_error(error, RangeError)
        return
    if not _target_ok(target, b):
        expect_error(error, RangeError, ShapeError, DTypeError)
        return
    assert out is not None, error
    h, w = x.shape[-2:]
    assert out.shape == ((b, 1, h, w) if reduce == "none" else (b, h, w))
    assert out.dtype == torch.float32 and not out.requires_grad
    assert_finite(out, f"{method} attributions")
    if method == "saliency" and ensemble == "none" and reduce == "none":
        # reference: |d logit_t / d x| by autograd
        xr = x.clone().requires_grad_()
        model.eval()
        logits = model(xr)
        model.train(training)
        classes = resolve_targets(t, logits.detach())  # type: ignore[arg-type]
        (grad,) = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), xr)
        close(out, grad.abs(), rtol=1e-4, atol=1e-6)


@FAST
@given(
    b=st.integers(0, 4),
    k=st.integers(1, 4),
    target=targets,
    logits_kind=st.sampled_from(["normal", "nan"]),
    seed=seeds,
)
def test_resolve_targets(b: int, k: int, target: object, logits_kind: str, seed: int) -> None:
    logits = make(Spec((b, k), torch.float32, logits_kind), seed)
    t = _target(target, b)
    ok = target in (None, "callable") or (
        target not in ("float", "string") and len(target) == b and all(0 <= v < k for v in target)  # type: ignore[arg-type]
    )
    out, error = outcome(
        "attribution",
        "target" if not ok else "valid",
        lambda: resolve_targets(t, logits),
        ["target", "logits"],  # type: ignore[arg-type]
    )
    if not ok:
        expect_error(error, RangeError, ShapeError, DTypeError)
        return
    assert out is not None, error
    assert out.dtype == torch.long and out.shape == (b,)
    if out.numel():
        assert int(out.min()) >= 0 and int(out.max()) < k


@SLOW
@given(
    b=st.integers(0, 3),
    method=st.sampled_from(["cam", "grad_cam", "hires_cam", "grad_cam_pp", "saliency"]),
    target=targets,
    layer=st.sampled_from([None, "features", "classifier", "nope"]),
    seed=seeds,
)
def test_grid_and_reduced_attribute(
    b: int, method: str, target: object, layer: str | None, seed: int
) -> None:
    model = _model()
    x = torch.rand(b, 1, 4, 4, generator=torch.Generator().manual_seed(seed))
    t = _target(target, b)
    out, error = outcome(
        "attribution",
        "valid" if _target_ok(target, b) else "target out of range/length/type",
        lambda: attribute(model, x, t, method=method, reduce="abs_sum", layer=layer),  # type: ignore[arg-type]
        ["images", "target", "layer", "method", "4-D", "head", "nope", "classifier"],
    )
    if b == 0:
        expect_error(error, ShapeError)
        return
    bad_layer = method != "saliency" and layer in ("classifier", "nope")
    if not _target_ok(target, b) or bad_layer:
        kinds = [RangeError, ShapeError, DTypeError] if not _target_ok(target, b) else []
        expect_error(error, *kinds, *([LayerError] if bad_layer else []))
        return
    assert out is not None, error
    assert_finite(out, "maps")
    assert out.shape == (b, 4, 4)  # pixel maps for every method
    if method != "saliency":  # the CAM kind: |layer maps|, resized to the input
        direct = attribute(model, x, t, method=method, layer=layer, size=None, reduce="sum")  # type: ignore[arg-type]
        close(out, resize_maps(direct, (4, 4)).abs())


@settings(SLOW, max_examples=15)
@given(
    n=st.integers(0, 8),
    target=st.one_of(st.integers(-1, K), st.just(1.0)),
    n_components=st.integers(0, 3),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=seeds,
)
def test_pcace(
    n: int, target: int | float, n_components: int, dtype: torch.dtype, seed: int
) -> None:
    model = _model()
    x = torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    result, error = outcome(
        "pcace",
        "empty" if n == 0 else ("dtype float64" if dtype == torch.float64 else "valid"),
        lambda: pcace(model, "features", x, target, n_components=n_components),  # type: ignore[arg-type]
        ["target", "n_components", "images", "observations", "`y`"],
    )
    if n_components < 1 or isinstance(target, float):
        expect_error(error, RangeError, DTypeError)
        return
    if n == 0:
        expect_error(error, ShapeError)
        return
    if dtype != torch.float32:
        expect_error(error, DTypeError)
        return
    if not 0 <= target < K or n_components > min(n, 4) or n < 5:
        expect_error(error, RangeError)
        return
    if error is not None:  # a class logit constant over the images, or constant channels
        assert isinstance(error, RangeError), error
        return
    assert result is not None
    assert result.scores.shape == (2,) and sorted(result.ranking.tolist()) == [0, 1]
    assert_finite(result.scores)
    assert bool((result.scores.abs() <= 1 + 1e-6).all())


@FAST
@given(
    acts=specs(
        mostly(shapes((1, 6), (1, 3), (1, 3), (1, 3)), any_rank()),
        kinds=("uniform", "constant", "zeros", "huge"),
    ),
    k=st.integers(0, 4),
    seed=seeds,
)
def test_channel_components(acts: Spec, k: int, seed: int) -> None:
    a = make(acts, seed, budget=4)
    out, error = outcome(
        "pcace", acts.label(), lambda: channel_components(a, k), ["activations", "n_components"]
    )
    if a.dim() != 4:
        expect_error(error, ShapeError, DTypeError)
        return
    n, hw = a.shape[0], a.shape[2] * a.shape[3]
    if k < 1 or k > min(n, hw):
        expect_error(error, RangeError)
        return
    assert out is not None, error
    scores, ratio = out
    assert scores.shape == (a.shape[1], n, k) and ratio.shape == (a.shape[1], k)
    assert_finite(scores)
    assert_finite(ratio)
    assert bool((ratio >= 0).all()) and bool((ratio.sum(1) <= 1 + 1e-4).all())
