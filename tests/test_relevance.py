"""AttentionCapture and the relevance methods on a hand-written 2-block ViT (torch only).

The references are written here independently: a re-implementation of the ViT's forward that
exposes the attention probabilities, their gradients by autograd, and the relevance rules as
per-image loops of matrix products.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xai_feedback.attribution import attribute
from xai_feedback.errors import HookError, LayerError, RangeError, ShapeError
from xai_feedback.functional.cam import normalize_maps, resize_maps
from xai_feedback.losses import CenterPenalty, MaskPenalty
from xai_feedback.methods import get_method, method_names
from xai_feedback.relevance import AttentionCapture, attention_modules


class TimmStyleAttention(nn.Module):
    """timm's Attention in miniature: SDPA when ``fused_attn``, else softmax + ``attn_drop``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.scale = self.head_dim**-0.5
        self.fused_attn = True
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.fused_attn:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            out = self.attn_drop(attn) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn: nn.Module = (
            TimmStyleAttention(dim, heads)
            if kind == "timm"
            else nn.MultiheadAttention(dim, heads, batch_first=True)
        )
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        a = self.attn(h) if self.kind == "timm" else self.attn(h, h, h, need_weights=False)[0]
        x = x + a
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """2 blocks, 8 x 8 images, 4 x 4 patches (a 2 x 2 grid), class (+ distillation) token."""

    def __init__(
        self, kind: str = "timm", prefix: int = 1, grid: tuple[int, int] = (2, 2), seed: int = 0
    ) -> None:
        super().__init__()
        torch.manual_seed(seed)
        dim, self.patch_size = 8, 4
        self.num_prefix_tokens = prefix
        self.patch_embed = nn.Conv2d(1, dim, 4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, prefix, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, prefix + grid[0] * grid[1], dim))
        self.blocks = nn.ModuleList([Block(dim, 2, kind) for _ in range(2)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 3)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        return torch.cat([self.cls_token.expand(len(x), -1, -1), t], dim=1) + self.pos_embed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.tokens(x)
        for blk in self.blocks:
            t = blk(t)
        return self.head(self.norm(t)[:, 0])


def reference_forward(model: TinyViT, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The ViT's forward written out, its attention probabilities exposed."""
    t = model.tokens(x)
    attns = []
    for blk in model.blocks:
        h = blk.norm1(t)
        b, n, c = h.shape
        if blk.kind == "timm":
            w, bias, proj = blk.attn.qkv.weight, blk.attn.qkv.bias, blk.attn.proj
        else:
            w, bias, proj = blk.attn.in_proj_weight, blk.attn.in_proj_bias, blk.attn.out_proj
        qkv = h @ w.t() + bias  # (b, n, 3c): q, k, v blocks, heads contiguous
        heads, d = 2, c // 2
        q, k, v = (qkv[..., i * c : (i + 1) * c].reshape(b, n, heads, d) for i in range(3))
        scores = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(d)
        a = torch.exp(scores - scores.amax(-1, keepdim=True))
        a = a / a.sum(-1, keepdim=True)
        attns.append(a)
        out = torch.einsum("bhij,bjhd->bihd", a, v).reshape(b, n, c)
        t = t + proj(out)
        t = t + blk.mlp(blk.norm2(t))
    return model.head(model.norm(t)[:, 0]), attns


def reference_chefer(attns: list[torch.Tensor], grads: list[torch.Tensor], b: int) -> torch.Tensor:
    n = attns[0].shape[-1]
    rel = torch.eye(n, dtype=attns[0].dtype)
    for a, g in zip(attns, grads, strict=True):
        cam = sum(torch.clamp(g[b, h] * a[b, h], min=0) for h in range(a.shape[1])) / a.shape[1]
        rel = rel + torch.mm(cam, rel)
    return rel[0, 1:]


def reference_rollout(attns: list[torch.Tensor], b: int) -> torch.Tensor:
    n = attns[0].shape[-1]
    joint = torch.eye(n, dtype=attns[0].dtype)
    for a in attns:
        joint = torch.mm(0.5 * a[b].mean(0) + 0.5 * torch.eye(n, dtype=a.dtype), joint)
    return joint[0, 1:]


KINDS = ["timm", "mha"]


@pytest.fixture
def x() -> torch.Tensor:
    return torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("kind", KINDS)
def test_captured_attention_equals_the_unfused_computation(kind: str, x: torch.Tensor) -> None:
    model = TinyViT(kind).eval()
    fused = model(x)
    with AttentionCapture(model) as capture:
        logits = model(x)
    ref_logits, ref_attns = reference_forward(model, x)
    assert len(capture.attentions) == 2
    for got, ref in zip(capture.attentions, ref_attns, strict=True):
        assert got.shape == (3, 2, 5, 5)
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(logits, fused, atol=1e-5, rtol=1e-5)  # same model output
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)


def test_fused_flags_restored_each_its_own_also_on_error(x: torch.Tensor) -> None:
    model = TinyViT("timm")
    model.blocks[1].attn.fused_attn = False  # a user's own setting survives
    with AttentionCapture(model):
        assert [b.attn.fused_attn for b in model.blocks] == [False, False]
    assert [b.attn.fused_attn for b in model.blocks] == [True, False]
    with pytest.raises(ZeroDivisionError), AttentionCapture(model):
        _ = 1 / 0
    assert [b.attn.fused_attn for b in model.blocks] == [True, False]
    hooks = [len(b.attn.attn_drop._forward_hooks) for b in model.blocks]
    assert hooks == [0, 0] and not model._forward_pre_hooks


@pytest.mark.parametrize("kind", KINDS)
def test_chefer_relevance_equals_hand_reference(kind: str, x: torch.Tensor) -> None:
    model = TinyViT(kind).eval()
    target = torch.tensor([0, 2, 1])
    with AttentionCapture(model) as capture:
        maps = capture.maps(model(x), target, method="chefer_relevance")
    logits, attns = reference_forward(model, x)
    grads = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), attns)
    for b in range(3):
        expected = reference_chefer(attns, list(grads), b).reshape(2, 2)
        torch.testing.assert_close(maps[b], expected, atol=1e-5, rtol=1e-4)
    assert maps.shape == (3, 2, 2)


@pytest.mark.parametrize("kind", KINDS)
def test_rollout_equals_hand_reference(kind: str, x: torch.Tensor) -> None:
    model = TinyViT(kind).eval()
    with AttentionCapture(model) as capture:
        maps = capture.maps(model(x), method="rollout")
    _, attns = reference_forward(model, x)
    for b in range(3):
        expected = reference_rollout(attns, b).reshape(2, 2)
        torch.testing.assert_close(maps[b], expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method", ["rollout", "chefer_relevance"])
def test_batched_equals_per_image(method: str, x: torch.Tensor) -> None:
    model = TinyViT("mha").eval()
    target = torch.tensor([1, 0, 2])
    batched = attribute(model, x, target, method=method, size=None, reduce="sum")
    for b in range(3):
        one = attribute(
            model, x[b : b + 1], target[b : b + 1], method=method, size=None, reduce="sum"
        )
        torch.testing.assert_close(batched[b : b + 1], one, atol=1e-6, rtol=1e-5)


def test_distillation_token_is_dropped() -> None:
    model = TinyViT("timm", prefix=2).eval()
    x = torch.rand(2, 1, 8, 8)
    with AttentionCapture(model) as capture:
        maps = capture.maps(model(x), torch.tensor([0, 1]))
    assert capture.attentions[0].shape[-1] == 6 and maps.shape == (2, 2, 2)
    _, attns = reference_forward(model, x)
    with torch.no_grad():
        joint = torch.eye(6)
        for a in attns:
            joint = torch.mm(0.5 * a[1].mean(0) + 0.5 * torch.eye(6), joint)
    with AttentionCapture(model) as capture:
        rolled = capture.maps(model(x), method="rollout")
    torch.testing.assert_close(rolled[1].flatten(), joint[0, 2:], atol=1e-6, rtol=1e-5)


def test_grid_follows_the_input_size() -> None:
    model = TinyViT("mha", grid=(3, 2)).eval()  # 12 x 8 images: 3 x 2 patches, not square
    maps = attribute(model, torch.rand(2, 1, 12, 8), method="rollout", size=None, reduce="sum")
    assert maps.shape == (2, 3, 2)


def test_gradcheck_through_the_maps() -> None:
    """d maps / d images in float64, second order through dy/dA (create_graph)."""
    model = TinyViT("timm").double().eval()
    target = torch.tensor([1, 2])

    def fn(images: torch.Tensor) -> torch.Tensor:
        with AttentionCapture(model) as capture:
            return capture.maps(model(images), target, create_graph=True)

    images = torch.rand(2, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (images,), eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


@pytest.mark.parametrize("create_graph", [True, False])
def test_penalties_on_relevance_train_the_vit(create_graph: bool, x: torch.Tensor) -> None:
    model = TinyViT("mha").train()
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[:, :4] = True
    with AttentionCapture(model) as capture:
        logits = model(x)
        maps = capture.maps(logits, torch.tensor([0, 1, 2]), create_graph=create_graph)
    for penalty in (CenterPenalty(sigma=0.5), MaskPenalty()):
        value = penalty(maps, masks=masks)
        names = [
            "blocks.0.attn.in_proj_weight",
            "blocks.1.attn.in_proj_weight",
            "patch_embed.weight",
        ]
        params = dict(model.named_parameters())
        grads = torch.autograd.grad(value, [params[n] for n in names], retain_graph=True)
        for grad in grads:
            assert torch.isfinite(grad).all() and float(grad.abs().sum()) > 0
    # the penalty's gradient with respect to one weight against a finite difference
    w = model.blocks[0].attn.in_proj_weight

    def penalty_at(model: TinyViT) -> torch.Tensor:
        with AttentionCapture(model) as capture:
            m = capture.maps(model(x), torch.tensor([0, 1, 2]), create_graph=True)
        return MaskPenalty()(m, masks=masks)

    model.double().eval()
    xd = x.double()
    x = xd
    value = penalty_at(model)
    (g,) = torch.autograd.grad(value, [w])
    eps = 1e-6
    with torch.no_grad():
        w[3, 2] += eps
    up = penalty_at(model)
    with torch.no_grad():
        w[3, 2] -= 2 * eps
    down = penalty_at(model)
    fd = (up - down) / (2 * eps)
    torch.testing.assert_close(g[3, 2], fd.detach(), atol=1e-7, rtol=1e-4)


def _by_hand(model: nn.Module, x: torch.Tensor, target: torch.Tensor, method: str) -> torch.Tensor:
    """The relevance kernel through AttentionCapture.maps, detached: what attribute wraps."""
    with AttentionCapture(model) as capture:
        logits = model(x.detach().requires_grad_())
        return capture.maps(logits, target, method=method, create_graph=False).detach()


def test_registry_and_attribute(x: torch.Tensor) -> None:
    assert method_names("relevance") == ("rollout", "chefer_relevance")
    assert get_method("chefer_relevance").kind == "relevance"
    model = TinyViT("timm").eval()
    target = torch.tensor([2, 0, 1])
    for method in method_names("relevance"):
        got = attribute(model, x, target, method=method)
        expected = resize_maps(_by_hand(model, x, target, method), (8, 8))
        assert got.shape == (3, 1, 8, 8)
        torch.testing.assert_close(got[:, 0], expected)
    with pytest.raises(RangeError, match="does not take"):
        attribute(model, x, target, method="rollout", options={"relu": True})


def test_all_classes_and_predicted_target(x: torch.Tensor) -> None:
    model = TinyViT("timm").eval()
    with AttentionCapture(model) as capture:
        logits = model(x)
        every = capture.maps(logits, all_classes=True)
        predicted = capture.maps(logits)
        rolled = capture.maps(logits, method="rollout", all_classes=True)
    assert every.shape == (3, 3, 2, 2) and rolled.shape == (3, 3, 2, 2)
    pred = logits.argmax(1)
    torch.testing.assert_close(every[torch.arange(3), pred], predicted)


def test_misuse_is_reported(x: torch.Tensor) -> None:
    model = TinyViT("timm").eval()
    with pytest.raises(LayerError, match="no attention module"):
        AttentionCapture(nn.Sequential(nn.Conv2d(1, 2, 3))).__enter__()
    with AttentionCapture(model) as capture, pytest.raises(HookError, match="captured nothing"):
        capture.maps(torch.zeros(3, 3))
    with AttentionCapture(model) as capture:
        model(x)
        other = model(x.flip(-1))  # a second forward replaces the capture ...
        with torch.no_grad():
            stale = TinyViT("timm", seed=1)(x)
        with pytest.raises(HookError):  # ... logits without a graph to the attentions
            capture.maps(stale, torch.zeros(3, dtype=torch.long))
        assert capture.maps(other, torch.zeros(3, dtype=torch.long)).shape == (3, 2, 2)
    with AttentionCapture(model) as capture, pytest.raises(RangeError, match="method"):
        capture.maps(model(x), method="grad_cam")
    with torch.no_grad(), AttentionCapture(model) as capture:
        logits = model(x)
        with pytest.raises(HookError, match="no_grad"):
            capture.maps(logits, method="chefer_relevance")
    assert [n for n, _ in attention_modules(model)] == ["blocks.0.attn", "blocks.1.attn"]


def test_relevance_penalty_objective_is_the_hand_written_step(x: torch.Tensor) -> None:
    """The objective equals its three lines: CE + w * penalty(relevance) + c * L_cls."""
    from xai_feedback.functional.penalties import robustvit_classification_loss
    from xai_feedback.losses import RobustViTPenalty
    from xai_feedback.objectives import relevance_penalty_objective
    from xai_feedback.training import Batch

    model = TinyViT("timm").eval()  # no dropout: the two forwards are the same
    labels = torch.tensor([0, 1, 2])
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[:, :, :2] = True  # the excluded region (a confound's), as MaskPenalty takes it
    batch = Batch(images=x, labels=labels, masks=masks, epoch=0, step=0, total_epochs=1)
    penalty = RobustViTPenalty(marks="excluded")
    loss, logits = relevance_penalty_objective(penalty, 2.0, classification=0.25)(model, batch)
    with AttentionCapture(model) as capture:
        expected_logits = model(x)
        maps = capture.maps(expected_logits, labels, create_graph=False)
    foreground = RobustViTPenalty()(maps, masks=(~masks).float())
    expected = (
        torch.nn.functional.cross_entropy(expected_logits, labels)
        + 2.0 * foreground
        + 0.25 * robustvit_classification_loss(expected_logits)
    )
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(logits, expected_logits)
    assert torch.autograd.grad(loss, model.blocks[0].attn.qkv.weight)[0].abs().sum() > 0
    # the fused flags are back, the penalty off at weight 0 is the cross-entropy alone
    assert all(blk.attn.fused_attn for blk in model.blocks)
    ce, _ = relevance_penalty_objective("mask", 0.0)(model, batch)
    torch.testing.assert_close(ce, torch.nn.functional.cross_entropy(expected_logits, labels))
    with pytest.raises(RangeError, match="relevance"):
        relevance_penalty_objective("mask", method="grad_cam")


@pytest.mark.parametrize("method", ["rollout", "chefer_relevance"])
def test_attribute_at_the_patch_grid_is_the_kernel(method: str, x: torch.Tensor) -> None:
    """``size=None, reduce="sum"``: the relevance maps at the patch grid, exactly."""
    model = TinyViT("timm").eval()
    target = torch.tensor([2, 0, 1])
    got = attribute(model, x, target, method=method, size=None, reduce="sum")
    assert got.shape == (3, 2, 2)
    assert torch.equal(got, _by_hand(model, x, target, method))
    chunked = attribute(model, x, target, method=method, size=None, reduce="sum", batch_size=2)
    torch.testing.assert_close(chunked, got, atol=1e-6, rtol=1e-5)
    there = attribute(model, x, target, method=method, size=(5, 3))
    assert there.shape == (3, 1, 5, 3)
    torch.testing.assert_close(there[:, 0], resize_maps(got, (5, 3)))


def test_capture_maps_normalize_and_size(x: torch.Tensor) -> None:
    """``normalize`` then ``size``: functional.normalize_maps, then functional.resize_maps."""
    model = TinyViT("timm").eval()
    target = torch.tensor([2, 0, 1])
    with AttentionCapture(model) as capture:
        logits = model(x)
        raw = capture.maps(logits, target)
        done = capture.maps(logits, target, normalize="minmax", size=(8, 8))
        with pytest.raises(RangeError, match="`normalize` must be one of"):
            capture.maps(logits, target, normalize="peak")
        with pytest.raises(ShapeError, match="`size` must be a pair"):
            capture.maps(logits, target, size=(8,))  # type: ignore[arg-type]
    assert done.shape == (3, 8, 8) and done.requires_grad
    torch.testing.assert_close(done, resize_maps(normalize_maps(raw, "minmax"), (8, 8)))


def test_attribute_refuses_more_targets_than_images(x: torch.Tensor) -> None:
    """Chunks of ``batch_size`` images once sliced ``target`` too, so extra targets passed."""
    model = TinyViT("timm").eval()
    four = torch.tensor([0, 1, 2, 0])

    def call(target: torch.Tensor, batch_size: int) -> torch.Tensor:
        return attribute(
            model,
            x,
            target,
            method="chefer_relevance",
            size=None,
            reduce="sum",
            batch_size=batch_size,
        )

    with pytest.raises(ShapeError, match="target"):
        call(four, 1)
    with pytest.raises(ShapeError, match="target"):
        call(four[:2], 2)
    assert call(four[:3], 2).shape == (3, 2, 2)


def test_all_class_relevance_is_bounded_before_the_first_backward(x: torch.Tensor) -> None:
    """K classes keep K sets of attention gradients: a bound checked up front, not an OOM."""
    model = TinyViT("timm").eval()
    calls = []
    with AttentionCapture(model) as capture:
        logits = model(x)
        hook = capture.attentions[0].register_hook(lambda g: calls.append(1))
        per_class = sum(a.numel() * a.element_size() for a in capture.attentions)
        with pytest.raises(RangeError, match="max_bytes"):
            capture.maps(logits, all_classes=True, max_bytes=3 * per_class - 1)
        assert calls == []  # refused before any backward
        every = capture.maps(logits, all_classes=True, max_bytes=3 * per_class)
        assert len(calls) == 3  # class_chunk 1 (the default): one backward per class
        unbounded = capture.maps(logits, all_classes=True, max_bytes=None)
        hook.remove()
    torch.testing.assert_close(every, unbounded)


@pytest.mark.parametrize("method", ["chefer_relevance", "rollout"])
def test_all_class_relevance_in_batched_backwards_equals_one_class_at_a_time(
    x: torch.Tensor, method: str
) -> None:
    """Chunks of ``class_chunk`` classes per batched backward give each class's own maps,
    also through the gradients kept in the graph (create_graph)."""
    from xai_feedback.methods import get_method
    from xai_feedback.methods.relevance import AttentionInputs

    model = TinyViT("timm").eval()
    spec = get_method(method, "relevance")
    with AttentionCapture(model) as capture:
        logits = model(x)
        weights = torch.linspace(-1.0, 1.0, int(logits.shape[1]))
        prefix, query, grid = capture.tokens()
        results = []
        for chunk in (1, 2, 16):
            inputs = AttentionInputs(
                list(capture.attentions), logits, grid, prefix, query, True, None, chunk
            )
            every = spec.maps(inputs, None)  # type: ignore[attr-defined]
            loss = (every * weights.view(1, -1, 1, 1)).pow(2).sum()
            params = [p for p in model.parameters() if p.requires_grad]
            got = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            grads = [
                torch.zeros_like(p) if g is None else g for p, g in zip(params, got, strict=True)
            ]
            results.append((every, grads))
        one = [
            spec.maps(inputs, torch.full((len(x),), c))  # type: ignore[attr-defined]
            for c in range(int(logits.shape[1]))
        ]
    torch.testing.assert_close(results[0][0], torch.stack(one, 1))
    for every, grads in results[1:]:
        torch.testing.assert_close(every, results[0][0])
        for a, b in zip(grads, results[0][1], strict=True):
            torch.testing.assert_close(a, b)
    assert every.shape == (3, 3, 2, 2)
    with AttentionCapture(model) as capture:  # rollout takes no gradient: nothing to bound
        rolled = capture.maps(model(x), method="rollout", all_classes=True, max_bytes=0)
    assert rolled.shape == (3, 3, 2, 2)


def test_two_threads_share_the_fused_attention_switch(x: torch.Tensor) -> None:
    """A enters, B enters, A exits, B runs and exits: B captures, every flag comes back."""
    import threading

    model = TinyViT("timm").eval()
    model.blocks[1].attn.fused_attn = False  # a user's own choice, kept
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    got: list[object] = []

    def first() -> None:
        with AttentionCapture(model):
            a_in.set()
            b_in.wait(5)
        a_out.set()

    def second() -> None:
        a_in.wait(5)
        try:
            with AttentionCapture(model) as capture:
                b_in.set()
                a_out.wait(5)
                logits = model(x)
                got.append(capture.maps(logits, torch.tensor([0, 1, 2])))
                got.append(len(capture.attentions))
        except Exception as err:  # reported in the main thread
            got.append(err)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 2 and isinstance(got[0], torch.Tensor), got
    assert got[0].shape == (3, 2, 2) and got[1] == 2  # both blocks captured in B's block
    assert [blk.attn.fused_attn for blk in model.blocks] == [True, False]


def test_a_capture_ignores_another_threads_forward(x: torch.Tensor) -> None:
    """Forwards run by a thread that did not enter the block are not captured."""
    import threading

    model = TinyViT("mha").eval()
    with AttentionCapture(model) as capture:
        logits = model(x)
        other = threading.Thread(target=lambda: model(x[:1]))
        other.start()
        other.join()
        assert [tuple(a.shape) for a in capture.attentions] == [(3, 2, 5, 5)] * 2
        assert capture.maps(logits, torch.tensor([0, 1, 2])).shape == (3, 2, 2)


# ----- the token layout is read from the whole model -----------------------------------------


class Normalize(nn.Module):
    """A preprocessing module put before the ViT, as ``nn.Sequential(normalize, vit)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 0.5) / 0.25


@pytest.mark.parametrize("declared", [True, False])
@pytest.mark.parametrize("method", ["rollout", "chefer_relevance"])
def test_wrapped_vit_gives_the_bare_vits_maps(declared: bool, method: str) -> None:
    """``Sequential(normalize, vit)``: the bare ViT's relevance maps and CAMs of ``normalize(x)``.

    Without ``num_prefix_tokens`` (``declared=False``) the class token, a parameter of the
    submodule ``1``, tells the prefix, the row read and (with ``patch_size``) the grid.
    """
    from xai_feedback.hooks import CAMHook

    vit = TinyViT("timm").eval()
    if not declared:
        del vit.num_prefix_tokens
    wrapped = nn.Sequential(Normalize(), vit).eval()
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    target = torch.tensor([2, 0])
    with AttentionCapture(vit) as capture:
        expected = capture.maps(vit(Normalize()(x)), target, method=method)
    with AttentionCapture(wrapped) as capture:
        got = capture.maps(wrapped(x), target, method=method)
        assert capture.tokens() == (1, 0, (2, 2))
    assert got.shape == (2, 2, 2)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    with CAMHook(vit) as hook:
        cams = hook.maps(vit(Normalize()(x)), target, method="grad_cam")
    with CAMHook(wrapped) as hook:
        torch.testing.assert_close(hook.maps(wrapped(x), target, method="grad_cam"), cams)


def test_layout_that_cannot_be_told_names_the_knob() -> None:
    enc = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True)
    model = nn.Sequential(enc)  # tokens in, no class token, no num_prefix_tokens
    tokens = torch.randn(2, 5, 8)
    with AttentionCapture(model) as capture:
        logits = model(tokens)[:, 0, :3]
        with pytest.raises(LayerError, match="pass `prefix_tokens=`"):
            capture.maps(logits, method="rollout")
    with AttentionCapture(model, prefix_tokens=1) as capture:
        logits = model(tokens)[:, 0, :3]
        with pytest.raises(LayerError, match="pass `query=`"):
            capture.maps(logits, method="rollout")
    with AttentionCapture(model, prefix_tokens=1, query=0) as capture:
        assert capture.maps(model(tokens)[:, 0, :3], method="rollout").shape == (2, 2, 2)
