"""Relevance on real vision transformers: torchvision's VisionTransformer and timm's ViT/DeiT.

The references are built here without the library: each block's input taken by a plain
forward pre-hook and its attention recomputed from the block's own weights; for timm, the
model's own unfused path (``fused_attn=False`` set by hand) with the probabilities kept from
``attn_drop`` by a hand-written hook, their gradients by autograd, and the relevance rules as
per-image loops of matrix products.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from xai_feedback.attribution import attribute
from xai_feedback.functional.cam import resize_maps
from xai_feedback.losses import CenterPenalty, MaskPenalty, RobustViTPenalty
from xai_feedback.relevance import AttentionCapture


def torchvision_vit() -> nn.Module:
    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
        num_classes=5,
    ).eval()  # fmt: skip
    nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision starts the head at 0
    return model


def timm_vit(name: str, **kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, img_size=32, num_classes=5, **kwargs).eval()


TIMM = {
    "vit_tiny": lambda: timm_vit("vit_tiny_patch16_224", depth=2),
    "deit_tiny_distilled": lambda: timm_vit("deit_tiny_distilled_patch16_224", depth=2),
    "vit_registers": lambda: timm_vit("vit_tiny_patch16_224", depth=2, reg_tokens=4),
}
PREFIX = {"vit_tiny": 1, "deit_tiny_distilled": 2, "vit_registers": 5}


def _images(b: int = 3) -> torch.Tensor:
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _block_inputs(
    model: nn.Module, modules: list[nn.Module], x: torch.Tensor
) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    handles = [m.register_forward_pre_hook(lambda _m, a: seen.append(a[0])) for m in modules]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def _softmax_attention(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    scores = torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(q.shape[-1])
    return torch.exp(scores - scores.amax(-1, keepdim=True)) / torch.exp(
        scores - scores.amax(-1, keepdim=True)
    ).sum(-1, keepdim=True)


def _chefer_loops(attns: list[torch.Tensor], grads: list[torch.Tensor], b: int) -> torch.Tensor:
    n = attns[0].shape[-1]
    rel = torch.eye(n)
    for a, g in zip(attns, grads, strict=True):
        heads = a.shape[1]
        cam = sum(torch.clamp(g[b, h] * a[b, h], min=0) for h in range(heads)) / heads
        rel = rel + cam @ rel
    return rel


def _rollout_loops(attns: list[torch.Tensor], b: int) -> torch.Tensor:
    n = attns[0].shape[-1]
    joint = torch.eye(n)
    for a in attns:
        joint = (0.5 * a[b].mean(0) + 0.5 * torch.eye(n)) @ joint
    return joint


# --- torchvision -----------------------------------------------------------------------------


def test_torchvision_capture_equals_the_attention_of_the_weights() -> None:
    model, x = torchvision_vit(), _images()
    blocks = list(model.encoder.layers)
    inputs = _block_inputs(model, blocks, x)
    fused = model(x)
    with AttentionCapture(model) as capture:
        logits = model(x)
    torch.testing.assert_close(logits, fused, atol=1e-5, rtol=1e-4)  # the output is unchanged
    assert len(capture.attentions) == 2
    for blk, inp, got in zip(blocks, inputs, capture.attentions, strict=True):
        h = blk.ln_1(inp)
        mha = blk.self_attention
        weights, biases = mha.in_proj_weight.chunk(3), mha.in_proj_bias.chunk(3)
        q, k = (h @ w.t() + b for w, b in zip(weights[:2], biases[:2], strict=True))
        split = lambda t: t.view(3, -1, 2, 16).transpose(1, 2)  # noqa: E731
        torch.testing.assert_close(
            got, _softmax_attention(split(q), split(k)), atol=1e-6, rtol=1e-5
        )
    assert not any(m._forward_hooks for m in model.modules())


def test_torchvision_relevance_and_attribute() -> None:
    model, x = torchvision_vit(), _images()
    target = torch.tensor([0, 4, 2])
    maps = attribute(model, x, target, method="chefer_relevance", size=None, reduce="sum")
    assert maps.shape == (3, 4, 4) and bool((maps >= 0).all()) and float(maps.sum()) > 0
    rolled = attribute(model, x, method="rollout", size=None, reduce="sum")
    assert torch.allclose(rolled.flatten(1).sum(1) <= 1.0 + 1e-6, torch.ones(3, dtype=torch.bool))
    got = attribute(model, x, target, method="chefer_relevance")
    torch.testing.assert_close(got[:, 0], resize_maps(maps, (32, 32)))


# --- timm ------------------------------------------------------------------------------------


def _timm_reference(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """timm's own unfused path, switched by hand, probabilities kept from attn_drop."""
    attn_modules = [blk.attn for blk in model.blocks]
    flags = [m.fused_attn for m in attn_modules]
    kept: list[torch.Tensor] = []
    handles = [
        m.attn_drop.register_forward_hook(lambda _m, _a, out: kept.append(out))
        for m in attn_modules
    ]
    try:
        for m in attn_modules:
            m.fused_attn = False
        logits = model(x)
    finally:
        for m, flag in zip(attn_modules, flags, strict=True):
            m.fused_attn = flag
        for h in handles:
            h.remove()
    grads = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), kept)
    return logits, kept, list(grads)


@pytest.mark.parametrize("name", list(TIMM))
def test_timm_capture_relevance_and_flags(name: str) -> None:
    model: nn.Module = TIMM[name]()
    x, target = _images(), torch.tensor([1, 3, 0])
    assert all(blk.attn.fused_attn for blk in model.blocks)  # timm's default: SDPA
    fused = model(x)
    inputs = _block_inputs(model, [blk.attn for blk in model.blocks], x)
    with AttentionCapture(model) as capture:
        assert not any(blk.attn.fused_attn for blk in model.blocks)
        logits = model(x)
        maps = capture.maps(logits, target)
        rolled = capture.maps(logits, method="rollout")
    assert all(blk.attn.fused_attn for blk in model.blocks)  # restored
    torch.testing.assert_close(logits, fused, atol=1e-5, rtol=1e-4)
    # captured == softmax(q k^T / sqrt(d)) from the block's qkv weights
    for blk, inp, got in zip(model.blocks, inputs, capture.attentions, strict=True):
        b, n, c = inp.shape
        heads = blk.attn.num_heads
        qkv = blk.attn.qkv(inp).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        torch.testing.assert_close(got, _softmax_attention(qkv[0], qkv[1]), atol=1e-6, rtol=1e-5)
    # relevance == the hand reference built from timm's unfused attention
    _, attns, grads = _timm_reference(model, x, target)
    prefix = PREFIX[name]
    assert maps.shape == (3, 2, 2) and capture.attentions[0].shape[-1] == prefix + 4
    assert float(maps.detach().abs().sum()) > 0
    for i in range(3):
        expected = _chefer_loops(attns, grads, i)[0, prefix:].reshape(2, 2)
        torch.testing.assert_close(maps[i], expected, atol=1e-5, rtol=1e-4)
        expected = _rollout_loops(attns, i)[0, prefix:].reshape(2, 2)
        torch.testing.assert_close(rolled[i], expected, atol=1e-6, rtol=1e-5)


def test_timm_flags_restored_after_an_error() -> None:
    model = TIMM["vit_tiny"]()
    model.blocks[1].attn.fused_attn = False  # the user's own choice
    with pytest.raises(AssertionError), AttentionCapture(model):
        model(torch.randn(1, 3, 31, 31))  # wrong size: timm raises inside the block
    assert [blk.attn.fused_attn for blk in model.blocks] == [True, False]
    assert not any(m._forward_hooks for m in model.modules())


def test_timm_mean_pooled_model_reads_the_patch_rows() -> None:
    model = timm_vit("vit_tiny_patch16_224", depth=2, class_token=False, global_pool="avg")
    x = _images(2)
    with AttentionCapture(model) as capture:
        maps = capture.maps(model(x), method="rollout")
    joint = _rollout_loops([a.detach() for a in capture.attentions], 0)
    torch.testing.assert_close(maps[0].flatten(), joint.mean(0), atol=1e-6, rtol=1e-5)


MODELS: dict[str, Callable[[], nn.Module]] = {"torchvision": torchvision_vit, **TIMM}


@pytest.mark.parametrize("name", ["torchvision", "vit_tiny"])
@pytest.mark.parametrize("penalty", [CenterPenalty(), MaskPenalty(), RobustViTPenalty()])
def test_penalties_on_relevance_reach_the_vit_parameters(name: str, penalty: nn.Module) -> None:
    model = MODELS[name]().train()
    x = _images(2)
    masks = torch.zeros(2, 32, 32)
    masks[:, 8:24, 8:24] = 1
    with AttentionCapture(model) as capture:
        logits = model(x)
        maps = capture.maps(logits, torch.tensor([1, 2]))
    loss = F.cross_entropy(logits, torch.tensor([1, 2])) + penalty(maps, masks=masks)
    first_attention = next(
        p for n, p in model.named_parameters() if "in_proj_weight" in n or "qkv.weight" in n
    )
    (grad,) = torch.autograd.grad(penalty(maps, masks=masks), [first_attention], retain_graph=True)
    assert torch.isfinite(grad).all() and float(grad.abs().sum()) > 0
    loss.backward()


def test_timm_captures_in_two_threads_keep_the_flags_and_both_capture() -> None:
    """A enters, B enters, A exits, B runs: B captures every block; every flag comes back."""
    import threading

    model = TIMM["vit_tiny"]()
    x = _images(2)
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    got: list[object] = []

    def first() -> None:
        with AttentionCapture(model):
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def second() -> None:
        a_in.wait(10)
        try:
            with AttentionCapture(model) as capture:
                b_in.set()
                a_out.wait(10)
                logits = model(x)
                got.append(len(capture.attentions))
                got.append(capture.maps(logits, torch.tensor([0, 1])).shape)
        except Exception as err:
            got.append(err)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [2, torch.Size([2, 2, 2])], got
    assert all(blk.attn.fused_attn for blk in model.blocks)


def test_rrr_trains_a_timm_vit_in_training_mode() -> None:
    """An input-gradient penalty's double backward through timm's fused attention."""
    from xai_feedback.objectives import rrr_objective
    from xai_feedback.training import Batch

    model = TIMM["vit_tiny"]().train()
    assert all(blk.attn.fused_attn for blk in model.blocks)  # F.scaled_dot_product_attention
    masks = torch.zeros(2, 32, 32)
    masks[:, :, :8] = 1
    batch = Batch(_images(2), torch.tensor([0, 3]), masks, epoch=0, total_epochs=1, step=0)
    rrr_objective(None, 10.0)(model, batch)[0].backward()
    with_penalty = model.blocks[0].attn.qkv.weight.grad.clone()
    model.zero_grad()
    rrr_objective(None, 0.0)(model, batch)[0].backward()
    assert bool(torch.isfinite(with_penalty).all())
    assert not torch.allclose(with_penalty, model.blocks[0].attn.qkv.weight.grad)


class _Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 0.2) / 0.7


WRAPPED: dict[str, Callable[[], nn.Module]] = {
    **MODELS,
    "vit_avg": lambda: timm_vit(
        "vit_tiny_patch16_224", depth=2, class_token=False, global_pool="avg"
    ),
}
LAYOUT = {  # (prefix_tokens, query, grid), written by hand for 32-pixel inputs
    "torchvision": (1, 0, (4, 4)),  # class token, patch 8
    "vit_tiny": (1, 0, (2, 2)),  # patch 16
    "deit_tiny_distilled": (2, 0, (2, 2)),
    "vit_registers": (5, 0, (2, 2)),
    "vit_avg": (0, None, (2, 2)),  # no class token, mean of the patch rows
}


@pytest.mark.parametrize("name", list(WRAPPED))
def test_wrapped_model_reads_the_bare_models_layout_and_maps(name: str) -> None:
    """``Sequential(normalize, vit)``: the bare model's prefix, row, grid and maps."""
    model, x, target = WRAPPED[name](), _images(), torch.tensor([1, 3, 0])
    wrapped = nn.Sequential(_Normalize(), model).eval()
    with AttentionCapture(model) as capture:
        expected = capture.maps(model(_Normalize()(x)), target)
        assert capture.tokens() == LAYOUT[name]
    with AttentionCapture(wrapped) as capture:
        got = capture.maps(wrapped(x), target)
        assert capture.tokens() == LAYOUT[name]
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
