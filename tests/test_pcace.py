"""PCACE against scikit-learn's StandardScaler + PCA and the reference ``ace`` package."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from xai_feedback import DTypeError, LayerError, RangeError
from xai_feedback.data import load_digits
from xai_feedback.models import GAPNet
from xai_feedback.pcace import capture, channel_components, pcace
from xai_feedback.training import fit

ace_ref = pytest.importorskip("ace.ace")


@pytest.fixture(scope="module")
def trained() -> tuple[GAPNet, torch.Tensor]:
    train = load_digits("train")
    model = GAPNet(width=4, generator=torch.Generator().manual_seed(0))
    fit(model, train, epochs=2, generator=torch.Generator().manual_seed(1))
    return model.eval(), train.images[train.labels == 3][:120]


def _reference_scores(acts: np.ndarray, logit: np.ndarray, k: int) -> np.ndarray:
    scores = []
    for c in range(acts.shape[1]):
        maps = StandardScaler().fit_transform(acts[:, c].reshape(len(acts), -1))
        comps = PCA(n_components=k, svd_solver="full").fit_transform(maps)
        solver = ace_ref.ACESolver()
        solver.specify_data_set(list(comps.T), logit)
        with contextlib.redirect_stdout(io.StringIO()):
            solver.solve()
        total = np.sum(solver.x_transforms, axis=0)
        scores.append(np.corrcoef(total, solver.y_transform)[0, 1])
    return np.asarray(scores)


def test_pcace_matches_sklearn_pca_and_reference_ace(trained: tuple[GAPNet, torch.Tensor]) -> None:
    model, images = trained
    result = pcace(model, "features", images, target=3, n_components=3)
    acts, logits = capture(model, "features", images)
    ref = _reference_scores(acts.double().numpy(), logits[:, 3].double().numpy(), 3)
    np.testing.assert_allclose(result.scores.numpy(), ref, rtol=0, atol=1e-6)
    assert result.ranking.tolist() == np.argsort(-ref, kind="stable").tolist()
    assert result.n_observations == 120 and result.scores.shape == (16,)


@pytest.mark.parametrize("pool", [1, 4], ids=["more-positions-than-images", "fewer"])
def test_components_equal_sklearn_including_sign(
    trained: tuple[GAPNet, torch.Tensor], pool: int
) -> None:
    model, images = trained
    acts, _ = capture(model, "features", images)
    acts = torch.nn.functional.avg_pool2d(acts, pool)  # 14x14 = 196 or 3x3 = 9 positions
    ours, ratio = channel_components(acts.double(), 4)
    for c in (0, 5, 15):
        maps = StandardScaler().fit_transform(acts[:, c].flatten(1).double().numpy())
        pca = PCA(n_components=4, svd_solver="full").fit(maps)
        np.testing.assert_allclose(ours[c].numpy(), pca.transform(maps), atol=1e-8)
        np.testing.assert_allclose(ratio[c].numpy(), pca.explained_variance_ratio_, atol=1e-10)


def test_first_component_score_equals_max_corr_for_one_component(
    trained: tuple[GAPNet, torch.Tensor],
) -> None:
    model, images = trained
    one = pcace(model, "features", images, target=3, n_components=1)
    assert torch.allclose(one.max_correlation, one.first_component.abs(), atol=1e-9)
    three = pcace(model, "features", images, target=3, n_components=3, score="first_component")
    assert torch.equal(three.scores, three.first_component)
    # more components never explain less: the max correlation with 3 is >= with 1 (up to ACE)
    assert float((three.max_correlation - one.max_correlation).mean()) > 0


def test_loader_input_and_training_flag(trained: tuple[GAPNet, torch.Tensor]) -> None:
    model, images = trained
    labels = torch.full((len(images),), 3)
    loader = list(zip(images.split(50), labels.split(50), strict=True))
    model.train()
    from_loader = pcace(model, "features", loader, target=3, n_components=2)
    assert model.training
    model.eval()
    from_tensor = pcace(model, "features", images, target=3, n_components=2, batch_size=7)
    assert torch.allclose(from_loader.scores, from_tensor.scores, atol=1e-6)


def test_dead_channel_scores_zero(trained: tuple[GAPNet, torch.Tensor]) -> None:
    model, images = trained
    acts, _ = capture(model, "features", images)
    acts[:, 2] = 0.0
    scores, _ = channel_components(acts.double(), 2)
    assert bool((scores[2] == 0).all())


def test_pcace_errors(trained: tuple[GAPNet, torch.Tensor]) -> None:
    model, images = trained
    with pytest.raises(RangeError, match="target"):
        pcace(model, "features", images, target=10)
    with pytest.raises(DTypeError, match="target"):
        pcace(model, "features", images, target=3.0)  # type: ignore[arg-type]
    with pytest.raises(RangeError, match="n_components"):
        pcace(model, "features", images[:6], target=3, n_components=7)
    with pytest.raises(RangeError, match="at least 5 observations"):
        pcace(model, "features", images[:4], target=3, n_components=2)
    with pytest.raises(LayerError, match="4-D"):
        pcace(model, "classifier", images, target=3)
    with pytest.raises(RangeError, match="score"):
        pcace(model, "features", images, target=3, score="auc")
    bad = images.clone()
    bad[0] = float("nan")
    with pytest.raises(RangeError, match="NaN"):
        pcace(model, "features", bad, target=3)


def test_channel_figure(trained: tuple[GAPNet, torch.Tensor]) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    from xai_feedback.viz import plot_channel_ranking

    model, images = trained
    result = pcace(model, "features", images, target=3, n_components=2)
    acts, _ = capture(model, "features", images)
    fig = plot_channel_ranking(result, acts, images, top=2, bottom=3, n_images=4)
    assert len(fig.axes) == 5 * 4
    assert f"c{result.top(1)[0]}" in fig.axes[0].get_ylabel()
    with pytest.raises(RangeError, match="n_images"):
        plot_channel_ranking(result, acts, images, n_images=len(images) + 1)
