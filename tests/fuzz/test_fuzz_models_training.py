"""Fuzz: models, data sets and the training loop (models/*, data/*, training.py)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.strategies import (
    FAST,
    SLOW,
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
from xai_feedback.data import ImageDataset
from xai_feedback.data.confounds import CONFOUND_FAMILIES, confounded_digits
from xai_feedback.errors import DTypeError, RangeError, ShapeError
from xai_feedback.models import WARN, GAPNet, ResidualAttentionNet, SimpleCNN
from xai_feedback.training import accuracy, fit, predict

_MODELS: dict[str, torch.nn.Module] = {}


def _model(name: str) -> torch.nn.Module:
    if name not in _MODELS:
        g = torch.Generator().manual_seed(0)
        _MODELS[name] = {
            "gapnet": lambda: GAPNet(1, 3, width=1, depth=2, generator=g),
            "simplecnn": lambda: SimpleCNN(1, 3, width=1, cbam=True, generator=g),
            "resattnet": lambda: ResidualAttentionNet(1, 3, width=1, generator=g),
            "warn": lambda: WARN(1, 3, widen=1, units=1, heads=1, generator=g),
        }[name]()
    return _MODELS[name]


SIDE = {"gapnet": 2, "simplecnn": 4, "resattnet": 8, "warn": 4}


@settings(FAST, max_examples=300)
@given(
    name=st.sampled_from(sorted(SIDE)),
    images=specs(
        mostly(
            shapes((0, 3), (1, 1), (1, 11), (1, 11)),
            shapes((1, 3), (1, 1), (8, 11), (8, 11)),
            any_rank(),
        ),
        dtypes=(torch.float32, torch.float64),
        kinds=("uniform", "normal", "huge"),
        bad_dtype=0.1,
        meta=0.1,
    ),
    train=st.booleans(),
    seed=seeds,
)
def test_model_forward(name: str, images: Spec, train: bool, seed: int) -> None:
    model = _model(name)
    x = make(images, seed, budget=4)
    flags = model.training
    model.train(train)
    try:
        with torch.no_grad():
            out, error = outcome("models", images.label(), lambda: model(x), ["images"])
    finally:
        model.train(flags)
    if x.dim() != 4 or x.shape[1] != 1:
        expect_error(error, ShapeError, DTypeError)
        return
    if (
        not images.dtype.is_floating_point
        or images.dtype != torch.float32
        or images.device != "cpu"
    ):
        expect_error(error, DTypeError)
        return
    side = SIDE[name]
    if min(x.shape[-2:]) < side:
        expect_error(error, ShapeError)
        return
    if train and x.shape[0] == 1 and error is not None:
        # BatchNorm cannot normalize one value per channel in training mode
        assert isinstance(error, ShapeError) and "training mode" in str(error), error
        return
    assert out is not None, error
    assert out.shape == (x.shape[0], 3) and out.dtype == torch.float32
    assert_finite(out, "logits")


@FAST
@given(
    images=specs(
        mostly(shapes((0, 4), (1, 2), (1, 5), (1, 5)), any_rank()),
        kinds=("uniform", "nan", "inf"),
        bad_dtype=0.1,
    ),
    delta=mostly(st.just(0), st.sampled_from([-1, 1])),
    negative=st.integers(0, 5).map(lambda i: i == 0),
    float_labels=st.integers(0, 5).map(lambda i: i == 0),
    masks=st.booleans(),
    name=mostly(st.just("x"), st.just(3)),
    seed=seeds,
)
def test_image_dataset(
    images: Spec,
    delta: int,
    negative: bool,
    float_labels: bool,
    masks: bool,
    name: str | int,
    seed: int,
) -> None:
    x = make(images, seed)
    n = max((x.shape[0] if x.dim() else 1) + delta, 0)
    labels = torch.randint(0, 4, (n,), generator=torch.Generator().manual_seed(seed)).tolist()
    if negative and labels:
        labels[-1] = -1
    y = torch.tensor(labels, dtype=torch.float32 if float_labels else torch.long)
    m = torch.zeros(x.shape[0], *x.shape[2:], dtype=torch.bool) if masks and x.dim() == 4 else None
    data, error = outcome(
        "data",
        images.label(),
        lambda: ImageDataset(x, y, m, name),  # type: ignore[arg-type]
        ["images", "labels", "masks", "name"],
    )
    if x.dim() != 4 or not images.dtype.is_floating_point or len(labels) != x.shape[0]:
        expect_error(error, ShapeError, DTypeError)
        return
    faults = []
    if float_labels:
        faults.append(DTypeError)
    if not isinstance(name, str):
        faults.append(DTypeError)
    if (negative and labels) or (not images.finite and x.numel()):
        faults.append(RangeError)
    if faults:
        expect_error(error, *faults)
        return
    assert data is not None, error
    assert len(data) == x.shape[0]
    assert data.num_classes == (max(labels) + 1 if labels else 0)
    half = data.subset(torch.arange(len(data)) % 2 == 0)
    assert len(half) == (len(data) + 1) // 2


@FAST
@given(
    family=st.sampled_from([*CONFOUND_FAMILIES, "cdep", "ring"]),
    size=st.one_of(st.none(), st.integers(-1, 30)),
)
def test_confounded_digits(family: str, size: int | None) -> None:
    out, error = outcome(
        "data",
        "arguments",
        lambda: confounded_digits("test", family, size=size, rule="none"),
        ["family", "size"],
    )
    if family not in CONFOUND_FAMILIES or (size is not None and not 1 <= size <= 28):
        expect_error(error, RangeError)
        return
    assert out is not None, error
    assert out.masks is not None and out.masks.dtype == torch.bool
    assert out.masks.shape == (len(out), 28, 28)
    if size is not None and family in ("swatch", "center_dot", "patch"):
        assert out.masks.flatten(1).sum(1).tolist() == [size * size] * len(out)


@SLOW
@given(
    n=st.integers(0, 5),
    labels_high=st.integers(1, 4),
    negative=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    side=st.integers(1, 5),
    batch_size=st.integers(0, 3),
    epochs=st.integers(0, 2),
    seed=seeds,
)
def test_fit_predict_accuracy(
    n: int,
    labels_high: int,
    negative: bool,
    dtype: torch.dtype,
    side: int,
    batch_size: int,
    epochs: int,
    seed: int,
) -> None:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, side, side, generator=g, dtype=dtype)
    labels = torch.randint(0, labels_high, (n,), generator=g)
    if negative and n:
        labels[0] = -1
    data, error = outcome("training", "labels", lambda: ImageDataset(images, labels), ["labels"])
    if negative and n:
        expect_error(error, RangeError)
        return
    assert data is not None
    model = GAPNet(1, 3, width=1, depth=2, generator=torch.Generator().manual_seed(0))
    before = [p.detach().clone() for p in model.parameters()]
    label = "empty" if n == 0 else ("dtype float64" if dtype == torch.float64 else "valid")
    history, error = outcome(
        "training",
        label,
        lambda: fit(model, data, epochs=epochs, batch_size=batch_size, generator=g),
        ["epochs", "batch_size", "data", "labels", "images"],
    )
    if epochs < 1 or batch_size < 1:
        expect_error(error, RangeError)
        return
    if n == 0:
        expect_error(error, ShapeError)
        return
    if dtype != torch.float32:
        expect_error(error, DTypeError)
        return
    if side < 2:
        expect_error(error, ShapeError)
        return
    if int(labels.max()) >= 3:
        expect_error(error, RangeError)
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
        return
    if error is not None:  # BatchNorm: one value per channel in training mode
        assert isinstance(error, ShapeError) and "training mode" in str(error), error
        return
    assert history is not None
    assert len(history.loss) == epochs
    assert all(torch.isfinite(torch.tensor(history.loss)))
    logits = predict(model, images)
    assert logits.shape == (n, 3)
    acc = accuracy(model, data)
    assert acc == float((logits.argmax(1) == labels).float().mean())
