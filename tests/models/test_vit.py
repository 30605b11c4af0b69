"""TinyViT: shapes, reproducible init, exact CAM on the token grid, attention in the graph."""

import pytest
import torch
from torch import nn

from xai_feedback import DTypeError, LayerError, RangeError, ShapeError
from xai_feedback.hooks import ActivationHook, CAMHook
from xai_feedback.layers import resolve_layer
from xai_feedback.models import TinyViT
from xai_feedback.models.vit import TokenGrid


def _small(**kw: object) -> TinyViT:
    return TinyViT(dim=16, depth=2, heads=2, generator=torch.Generator().manual_seed(0), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("pool", ["avg", "cls"])
def test_shapes(pool: str) -> None:
    model = TinyViT(
        in_channels=3,
        num_classes=5,
        image_size=32,
        patch_size=8,
        dim=16,
        depth=2,
        heads=4,
        pool=pool,
    )
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 5)
    assert model.grid_size == (4, 4) and model.num_features == 16
    assert model.pos_embed.shape == (1, 16 + (pool == "cls"), 16)
    assert (model.cls_token is not None) == (pool == "cls")
    with ActivationHook(model) as hook:
        model(torch.rand(2, 3, 32, 32))
        assert hook.activations.shape == (2, 16, 4, 4)


def test_token_grid_folds_row_major() -> None:
    # token n = i * w + j goes to cell (i, j); channel c of the token to channel c of the grid
    grid = TokenGrid(2, 3)
    tokens = torch.randn(2, 6, 4)
    out = grid(tokens)
    for n in range(6):
        assert torch.equal(out[:, :, n // 3, n % 3], tokens[:, n])
    assert torch.equal(grid.unfold(out), tokens)
    with pytest.raises(ShapeError, match="tokens"):
        grid(torch.randn(2, 5, 4))
    # the patch embedding numbers patches row-major too: a patch's token lands on its cell
    model = _small().eval()
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 4:8, 20:24] = 1.0  # patch row 1, column 5
    tokens = model.patch_embed(x)
    bias = model.patch_embed.proj.bias
    changed = (tokens[0] - bias).abs().sum(1).nonzero().flatten().tolist()
    assert changed == [1 * 7 + 5]


def test_generator_makes_init_reproducible() -> None:
    a, b = _small(), _small()
    c = TinyViT(dim=16, depth=2, heads=2, generator=torch.Generator().manual_seed(1))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    for key in ("classifier.weight", "pos_embed", "blocks.0.attn.qkv.weight"):
        assert not torch.equal(sa[key], sc[key])


def test_cam_on_the_token_grid_is_exact() -> None:
    # GAP + linear head on the folded tokens: logit = mean of the class map + bias
    model = _small().double().eval()
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    with CAMHook(model) as hook:
        logits = model(x)
        cam = hook.maps(logits, all_classes=True)
        grad = hook.maps(logits, all_classes=True, method="grad_cam")
    assert hook.layer_name == "token_grid" and cam.shape == (3, 10, 7, 7)
    assert torch.allclose(cam.mean((2, 3)) + model.classifier.bias, logits, atol=1e-12)
    # an independent reference: the head's weights on the normed tokens by hand
    tokens = model.patch_embed(x) + model.pos_embed
    for block in model.blocks:
        tokens = block(tokens)
    tokens = model.norm(tokens)  # (B, 49, D)
    ref = torch.einsum("kc,bnc->bkn", model.classifier.weight, tokens).view(3, 10, 7, 7)
    assert torch.allclose(cam, ref, atol=1e-12)
    # Grad-CAM on the CAM scale equals CAM for this head
    assert torch.allclose(grad, cam, atol=1e-10)


def test_cls_pool_grid_feeds_the_last_block() -> None:
    model = _small(pool="cls").double().eval()
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    with CAMHook(model) as hook:
        logits = model(x)
        maps = hook.maps(logits, torch.tensor([1, 2]), method="grad_cam")
        with pytest.raises(LayerError, match="global-average-pool"):
            hook.maps(logits, all_classes=True)
    assert maps.shape == (2, 7, 7) and bool(maps.abs().sum() > 0)
    # the grid is a relabeling: replacing it by an identity fold/unfold changes nothing
    tokens = model.patch_embed(x)
    tokens = torch.cat([model.cls_token.expand(2, -1, -1), tokens], 1) + model.pos_embed
    for block in model.blocks:
        tokens = block(tokens)
    assert torch.allclose(model.classifier(model.norm(tokens)[:, 0]), logits, atol=1e-12)


def test_attention_probabilities_are_hookable_and_in_the_graph() -> None:
    model = _small(pool="cls").eval()
    x = torch.rand(2, 1, 28, 28)
    names = model.attention_layers
    assert names == ["blocks.0.attn.attn_drop", "blocks.1.attn.attn_drop"]
    layer = resolve_layer(model, names[-1])
    assert isinstance(layer.module, nn.Dropout)
    with ActivationHook(model, names[-1]) as hook:
        logits = model(x)
        attn = hook.activations
    assert attn.shape == (2, 2, 50, 50)  # (B, heads, T, T), the class token first
    assert bool((attn >= 0).all())
    assert torch.allclose(attn.sum(-1), torch.ones(2, 2, 50), atol=1e-5)
    # a reference computed from the block's own weights
    block = model.blocks[-1]
    with ActivationHook(model, "blocks.1.norm1") as hook:
        model(x)
        normed = hook.activations
    q, k, _ = block.attn.qkv(normed).view(2, 50, 3, 2, 8).permute(2, 0, 3, 1, 4)
    ref = torch.softmax(q @ k.transpose(-2, -1) / 8**0.5, dim=-1)
    assert torch.allclose(attn, ref, atol=1e-6)
    (grad,) = torch.autograd.grad(logits[:, 3].sum(), attn)
    assert grad.shape == attn.shape and bool(grad.abs().sum() > 0)


def test_gradients_flow_to_every_parameter() -> None:
    for pool in ("avg", "cls"):
        model = _small(pool=pool)
        model(torch.rand(4, 1, 28, 28)).sum().backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and bool(p.grad.abs().sum() > 0), name


def test_device(device: torch.device) -> None:
    model = _small().to(device)
    assert model(torch.rand(2, 1, 28, 28, device=device)).device.type == device.type


def test_bad_arguments_and_inputs() -> None:
    with pytest.raises(RangeError, match="multiple of `patch_size`"):
        TinyViT(image_size=30, patch_size=4)
    with pytest.raises(RangeError, match="multiple of `heads`"):
        TinyViT(dim=30, heads=4)
    with pytest.raises(RangeError, match="pool"):
        TinyViT(pool="max")
    model = _small()
    with pytest.raises(ShapeError, match=r"`images` must have shape \(B, C, H, W\)"):
        model(torch.rand(1, 28, 28))
    with pytest.raises(ShapeError, match="must be 28, got 32"):
        model(torch.rand(2, 1, 32, 32))
    with pytest.raises(DTypeError, match="floating-point"):
        model(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))


@pytest.mark.parametrize("pool", ["avg", "cls"])
def test_relevance_capture_reads_tinyvit(pool: str) -> None:
    """AttentionCapture finds every block's probabilities, the prefix and the classified token."""
    from xai_feedback.relevance import AttentionCapture

    model = TinyViT(pool=pool, depth=2, generator=torch.Generator().manual_seed(0))
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with AttentionCapture(model) as capture:
        logits = model(x)
        maps = capture.maps(logits, torch.tensor([1, 2]))
    assert capture.tokens() == (int(pool == "cls"), None if pool == "avg" else 0, (7, 7))
    assert len(capture.attentions) == 2 and maps.shape == (2, 7, 7)
    torch.testing.assert_close(
        capture.attentions[0].sum(-1), torch.ones(2, 4, 49 + (pool == "cls"))
    )
    assert torch.autograd.grad(maps.sum(), model.blocks[0].attn.qkv.weight)[0].abs().sum() > 0
