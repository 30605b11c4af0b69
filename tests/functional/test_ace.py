"""The batched ACE and supersmoother against the reference ``ace`` package, problem by problem."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch

from xai_feedback import RangeError, ShapeError
from xai_feedback.functional.ace import ace, fixed_span_smooth, supersmooth

ace_ref = pytest.importorskip("ace.ace")
smoother_ref = pytest.importorskip("ace.smoother")
supersmoother_ref = pytest.importorskip("ace.supersmoother")


def _reference(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, int]:
    solver = ace_ref.ACESolver()
    solver.specify_data_set(list(x.T), y)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints on every iteration
        solver.solve()
    phi = np.stack(solver.x_transforms, axis=1)
    theta = np.asarray(solver.y_transform)
    return phi, theta, float(np.corrcoef(phi.sum(1), theta)[0, 1]), solver._outer_iters


def _problems(kind: str, p: int, n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(p, n, k))
    if kind == "relu":  # about half the observations tied at zero, like ReLU activations
        x = np.maximum(x, 0)
    if kind == "rounded":  # many small tie runs
        x = np.round(x, 1)
    if kind == "constant":  # one constant predictor per problem
        x[..., -1] = 0.3
    y = np.sin(2 * x[..., 0]) + (x[..., 1] ** 2 if k > 1 else 0) + 0.3 * rng.normal(size=(p, n))
    return x, y


@pytest.mark.parametrize(
    ("kind", "p", "n", "k"),
    [
        ("normal", 4, 300, 3),
        ("normal", 3, 40, 1),
        ("relu", 4, 200, 3),
        ("relu", 3, 60, 1),
        ("rounded", 3, 300, 2),
        ("constant", 3, 120, 3),
    ],
)
def test_ace_matches_reference_package(kind: str, p: int, n: int, k: int) -> None:
    x, y = _problems(kind, p, n, k, seed=n + k)
    result = ace(torch.from_numpy(x), torch.from_numpy(y))
    for i in range(p):
        phi, theta, corr, iterations = _reference(x[i], y[i])
        np.testing.assert_allclose(result.x_transforms[i].numpy(), phi, rtol=0, atol=1e-6)
        np.testing.assert_allclose(result.y_transform[i].numpy(), theta, rtol=0, atol=1e-6)
        assert result.correlation[i].item() == pytest.approx(corr, abs=1e-6)
        assert int(result.iterations[i]) == iterations


# Two PCA components of a random-init ResNet-18 channel (layer4, 16 images) and the class
# logit: the scaling's conjugate gradients converge exactly in the first pass, the second
# pass's gradient is ~1e-34 and its projection underflowed to 0 (0 / 0: NaN transforms).
_EXACT_X = [
    [0.05554333231550104, 0.5183662787026186],
    [-0.2948621463326531, 0.5336113013615122],
    [0.5408586077188172, -0.3195557274938123],
    [-1.017119665223093, 0.7470030542501095],
    [-0.5106480778918961, 0.39703190865160687],
    [2.0347816462010258, 1.6163976354146712],
    [0.16293997787810843, -2.0340010825528427],
    [-0.719026686283027, 0.32143740784597796],
    [3.1067041558041586, -0.6216415223225771],
    [-0.9011592163353818, -0.9425522187331792],
    [-0.8652534607306, 0.47969241269235463],
    [-0.5845189142313907, 1.1076959276385745],
    [-0.36626767042058717, -0.5629869745149716],
    [0.10100892930642102, 0.14537216554479704],
    [-1.2102497898787608, -0.6608113147959754],
    [0.46726897810335766, -0.7250592516888641],
]
_EXACT_Y = [
    0.12289796769618988,
    0.12751634418964386,
    0.12949800491333008,
    0.12171343713998795,
    0.1708601713180542,
    0.11966166645288467,
    0.18490786850452423,
    0.07349029928445816,
    0.12663975358009338,
    0.1473941057920456,
    0.1291743665933609,
    0.14939962327480316,
    0.12825298309326172,
    0.17167608439922333,
    0.1388997584581375,
    0.11314333975315094,
]


def test_ace_when_the_scaling_converges_exactly() -> None:
    x, y = np.array(_EXACT_X), np.array(_EXACT_Y)
    result = ace(torch.from_numpy(x)[None], torch.from_numpy(y)[None])
    phi, theta, corr, _ = _reference(x, y)
    assert bool(torch.isfinite(result.x_transforms).all())
    np.testing.assert_allclose(result.x_transforms[0].numpy(), phi, rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.y_transform[0].numpy(), theta, rtol=0, atol=1e-6)
    assert result.correlation[0].item() == pytest.approx(corr, abs=1e-6)


@pytest.mark.parametrize("n", [5, 9, 31, 300])
@pytest.mark.parametrize("ties", [False, True])
def test_smoothers_match_reference(n: int, ties: bool) -> None:
    rng = np.random.default_rng(n)
    x = np.sort(rng.normal(size=n))
    if ties:
        x = np.sort(np.maximum(x, 0))
    y = rng.normal(size=n) + x
    for span in (0.05, 0.2, 0.5):
        ref = np.asarray(smoother_ref.perform_smooth(x, y, span).smooth_result)
        ours = fixed_span_smooth(torch.from_numpy(x)[None], torch.from_numpy(y)[None], span)[0]
        np.testing.assert_allclose(ours.numpy(), ref, rtol=0, atol=1e-9)
    ref = smoother_ref.perform_smooth(x, y, smoother_cls=supersmoother_ref.SuperSmoother)
    # supersmooth sorts (stably) and answers in input order; the order within tied x matters
    perm = np.arange(n) if ties else rng.permutation(n)
    ours = supersmooth(torch.from_numpy(x[perm]), torch.from_numpy(y[perm]))
    np.testing.assert_allclose(ours.numpy(), np.asarray(ref.smooth_result)[perm], atol=1e-9)


def test_supersmoother_of_constant_x_is_the_mean_and_lines_are_kept() -> None:
    y = torch.arange(10, dtype=torch.float64)
    assert torch.allclose(supersmooth(torch.ones(10, dtype=torch.float64), y), y.mean().expand(10))
    x = torch.linspace(0, 1, 40, dtype=torch.float64)
    assert torch.allclose(supersmooth(x, 2 * x - 1), 2 * x - 1)


def test_ace_recovers_known_transforms() -> None:
    # y = exp(x1 + x2^3): the optimal theta is log y, phi_j the summands (Breiman-Friedman)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 400, 2, generator=g, dtype=torch.float64) * 2 - 1
    y = torch.exp(x[..., 0] + x[..., 1] ** 3)
    result = ace(x, y)
    assert bool((result.correlation > 0.995).all())
    target = torch.log(y) - torch.log(y).mean(dim=1, keepdim=True)
    corr = torch.nn.functional.cosine_similarity(result.y_transform, target, dim=1)
    assert bool((corr > 0.995).all())


def test_batch_equals_one_by_one_and_follows_dtype_option() -> None:
    x, y = _problems("normal", 5, 80, 2, seed=3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    batch = ace(xt, yt)
    for i in range(5):
        alone = ace(xt[i : i + 1], yt[i : i + 1])
        assert torch.allclose(alone.x_transforms[0], batch.x_transforms[i], atol=1e-12)
    single = ace(xt.float(), yt.float(), dtype=None)
    assert single.correlation.dtype == torch.float32
    assert torch.allclose(single.correlation.double(), batch.correlation, atol=1e-3)


def test_all_constant_predictors_score_zero() -> None:
    x, y = _problems("normal", 2, 50, 2, seed=4)
    xt = torch.from_numpy(x)
    xt[1] = 1.0
    result = ace(xt, torch.from_numpy(y))
    assert result.correlation[1].item() == 0.0
    assert bool((result.x_transforms[1] == 0).all())
    assert result.correlation[0].item() > 0.5


def test_ace_bad_inputs() -> None:
    x = torch.randn(2, 50, 3, dtype=torch.float64)
    y = torch.randn(2, 50, dtype=torch.float64)
    with pytest.raises(ShapeError, match="`x` must have shape"):
        ace(x[0], y)
    with pytest.raises(ShapeError, match="`y`"):
        ace(x, y[:, :10])
    with pytest.raises(RangeError, match="at least 5 observations"):
        ace(x[:, :4], y[:, :4])
    bad = x.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(RangeError, match="`x` must be finite"):
        ace(bad, y)
    with pytest.raises(ShapeError, match="same shape"):
        supersmooth(x[0, :, 0], y[0, :40])
    with pytest.raises(RangeError, match="constant in problem"):
        ace(x, torch.ones(2, 50, dtype=torch.float64))


def test_ace_on_device(device: torch.device) -> None:
    x, y = _problems("relu", 3, 100, 2, seed=5)
    cpu = ace(torch.from_numpy(x), torch.from_numpy(y))
    moved = ace(torch.from_numpy(x).to(device), torch.from_numpy(y).to(device))
    assert moved.correlation.device.type == device.type
    assert torch.allclose(moved.correlation.cpu(), cpu.correlation, atol=1e-9)
