"""Relevance kernels against hand-written loop references, gradcheck, batch independence."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import gradcheck64
from xai_feedback.errors import RangeError, ShapeError
from xai_feedback.functional.relevance import (
    attention_rollout,
    chefer_relevance,
    relevance_matrix,
    rollout_matrix,
)
from xai_feedback.functional.tokens import tokens_to_grid


def _attn(
    b: int, h: int, n: int, layers: int, seed: int, dtype: torch.dtype = torch.float64
) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.softmax(torch.randn(b, h, n, n, generator=g, dtype=dtype) * 2, dim=-1)
        for _ in range(layers)
    ]


def _rollout_loops(attn: list[torch.Tensor], b: int) -> torch.Tensor:
    """Abnar & Zuidema by explicit loops: 0.5 * mean_h A + 0.5 I, product, later layers left."""
    n = attn[0].shape[-1]
    joint = [[1.0 if i == j else 0.0 for j in range(n)] for i in range(n)]
    for a in attn:
        heads = a.shape[1]
        aug = [
            [
                0.5 * sum(float(a[b, hh, i, j]) for hh in range(heads)) / heads
                + (0.5 if i == j else 0.0)
                for j in range(n)
            ]
            for i in range(n)
        ]
        joint = [
            [sum(aug[i][k] * joint[k][j] for k in range(n)) for j in range(n)] for i in range(n)
        ]
    return torch.tensor(joint, dtype=torch.float64)


def _chefer_loops(attn: list[torch.Tensor], grads: list[torch.Tensor], b: int) -> torch.Tensor:
    n = attn[0].shape[-1]
    rel = [[1.0 if i == j else 0.0 for j in range(n)] for i in range(n)]
    for a, g in zip(attn, grads, strict=True):
        heads = a.shape[1]
        cam = [
            [
                sum(max(float(g[b, hh, i, j] * a[b, hh, i, j]), 0.0) for hh in range(heads)) / heads
                for j in range(n)
            ]
            for i in range(n)
        ]
        add = [[sum(cam[i][k] * rel[k][j] for k in range(n)) for j in range(n)] for i in range(n)]
        rel = [[rel[i][j] + add[i][j] for j in range(n)] for i in range(n)]
    return torch.tensor(rel, dtype=torch.float64)


def test_rollout_matrix_equals_loops() -> None:
    attn = _attn(2, 3, 5, 3, seed=0)
    got = rollout_matrix(attn)
    for b in range(2):
        torch.testing.assert_close(got[b], _rollout_loops(attn, b))


def test_rollout_rows_are_distributions_even_with_dropout_like_rows() -> None:
    attn = [a * 1.3 for a in _attn(2, 2, 4, 2, seed=1)]  # rows summing to 1.3 (dropout scale)
    assert torch.allclose(rollout_matrix(attn).sum(-1), torch.ones(2, 4, dtype=torch.float64))


def test_relevance_matrix_equals_loops() -> None:
    attn = _attn(2, 3, 5, 3, seed=2)
    g = torch.Generator().manual_seed(3)
    grads = [torch.randn(a.shape, generator=g, dtype=torch.float64) for a in attn]
    got = relevance_matrix(attn, grads)
    for b in range(2):
        torch.testing.assert_close(got[b], _chefer_loops(attn, grads, b))


def test_maps_read_the_query_row_and_fold_row_major() -> None:
    attn = _attn(1, 2, 7, 2, seed=4)
    joint = rollout_matrix(attn)
    maps = attention_rollout(attn, (2, 3), prefix_tokens=1)
    assert maps.shape == (1, 2, 3)
    torch.testing.assert_close(maps[0, 1, 2], joint[0, 0, 6])  # patch 5 = row 1, col 2
    torch.testing.assert_close(maps[0, 0, 1], joint[0, 0, 2])
    # two prefix tokens (class + distillation), query 0
    maps2 = attention_rollout(_attn(1, 2, 6, 1, seed=5), prefix_tokens=2)
    assert maps2.shape == (1, 2, 2)
    # the mean of the patch rows for pooled models
    mean = attention_rollout(attn, (2, 3), prefix_tokens=1, query=None)
    torch.testing.assert_close(mean.flatten(1), joint[:, 1:, 1:].mean(dim=1))


@pytest.mark.parametrize("query", [0, 2, None])
@pytest.mark.parametrize("prefix", [1, 2])
def test_maps_propagate_the_matrix_row(query: int | None, prefix: int) -> None:
    # the kernels propagate the query row from the last layer down; the matrices multiply
    # the whole product first: the same row, its patch columns on the 2 x 2 grid
    attn = _attn(2, 3, prefix + 4, 4, seed=9)
    g = torch.Generator().manual_seed(10)
    grads = [torch.randn(a.shape, generator=g, dtype=torch.float64) for a in attn]
    for maps, matrix in (
        (
            chefer_relevance(attn, grads, prefix_tokens=prefix, query=query),
            relevance_matrix(attn, grads),
        ),
        (attention_rollout(attn, prefix_tokens=prefix, query=query), rollout_matrix(attn)),
    ):
        row = matrix[:, prefix:].mean(dim=1) if query is None else matrix[:, query]
        assert maps.shape == (2, 2, 2)
        torch.testing.assert_close(maps.flatten(1), row[:, prefix:])


def test_batched_equals_per_image() -> None:
    attn = _attn(3, 2, 5, 2, seed=6)
    g = torch.Generator().manual_seed(7)
    grads = [torch.randn(a.shape, generator=g, dtype=torch.float64) for a in attn]
    batched = chefer_relevance(attn, grads)
    rolled = attention_rollout(attn)
    for b in range(3):
        one = chefer_relevance([a[b : b + 1] for a in attn], [x[b : b + 1] for x in grads])
        torch.testing.assert_close(batched[b : b + 1], one)
        torch.testing.assert_close(
            rolled[b : b + 1], attention_rollout([a[b : b + 1] for a in attn])
        )


def test_gradcheck() -> None:
    logits = [torch.randn(2, 2, 5, 5, dtype=torch.float64) for _ in range(2)]
    grads = [torch.randn(2, 2, 5, 5, dtype=torch.float64) for _ in range(2)]

    def rollout(l0: torch.Tensor, l1: torch.Tensor) -> torch.Tensor:
        return attention_rollout([l0.softmax(-1), l1.softmax(-1)])

    def chefer(l0: torch.Tensor, l1: torch.Tensor, g0: torch.Tensor) -> torch.Tensor:
        return chefer_relevance([l0.softmax(-1), l1.softmax(-1)], [g0, grads[1]])

    gradcheck64(rollout, logits)
    # the ReLU's kink: gradcheck away from it (products with |g * a| bounded away from 0)
    gradcheck64(chefer, [*logits, grads[0]], second_order=False)


def test_follows_dtype() -> None:
    attn = _attn(1, 1, 5, 1, seed=8, dtype=torch.float32)
    assert attention_rollout(attn).dtype == torch.float32
    assert chefer_relevance(attn, attn).dtype == torch.float32


def test_bad_inputs() -> None:
    attn = _attn(1, 2, 5, 2, seed=9)
    with pytest.raises(ShapeError, match="at least one"):
        rollout_matrix([])
    with pytest.raises(ShapeError, match="sequence"):
        rollout_matrix(attn[0])  # type: ignore[arg-type]
    with pytest.raises(ShapeError, match="attentions\\[1\\]"):
        rollout_matrix([attn[0], attn[1][:, :, :4, :4]])
    with pytest.raises(ShapeError, match="one tensor per layer"):
        relevance_matrix(attn, attn[:1])
    with pytest.raises(ShapeError, match="square"):
        attention_rollout(_attn(1, 1, 6, 1, seed=0))
    with pytest.raises(ShapeError, match="grid"):
        tokens_to_grid(torch.zeros(1, 5), (3, 2))
    with pytest.raises(RangeError, match="query"):
        attention_rollout(attn, query=5)
