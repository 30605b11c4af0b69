"""The default CAM layer of a ViT built from ``nn.TransformerEncoderLayer``, pre- and post-norm.

In a post-norm block (``norm_first=False``, torch's default) ``norm1`` runs *after* the
attention: its patch tokens never reach the class token again, so Grad-CAM on it is zero
everywhere. The tokens that reach the class-token head are those entering the last block,
i.e. the previous block's output. The reference is Grad-CAM computed here by hand from a
forward hook on the chosen module (Selvaraju et al. 2017 on the patch-token grid; the
library's ``scale="cam"`` multiplies by the ``h w`` cells).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xai_feedback.attribution import attribute
from xai_feedback.errors import LayerError
from xai_feedback.functional.cam import resize_maps
from xai_feedback.hooks import CAMHook
from xai_feedback.layers import find_feature_layer


class TorchViT(nn.Module):
    """A tiny ViT: 4x4 patches of a 16x16 image, a class token, a class-token head."""

    def __init__(self, norm_first: bool, depth: int = 2, dim: int = 16) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, 4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        self.pos_embed = nn.Parameter(torch.randn(1, 17, dim) * 0.5)
        layer = {"nhead": 2, "dim_feedforward": 32, "dropout": 0.0, "batch_first": True}
        self.blocks = nn.Sequential(
            *[nn.TransformerEncoderLayer(dim, norm_first=norm_first, **layer) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], 1)
        tokens = self.blocks(tokens + self.pos_embed)
        return self.head(self.norm(tokens)[:, 0])


def _grad_cam_by_hand(
    model: nn.Module, module: nn.Module, x: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """sum_c mean_hw(dy/dA_c) A_c over the 4x4 patch grid, times h w = 16."""
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        logits = model(x)
    finally:
        handle.remove()
    (tokens,) = seen
    (grads,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), tokens)
    acts, grads = tokens[:, 1:], grads[:, 1:]  # (B, 16, C): the patch tokens
    alpha = grads.mean(dim=1, keepdim=True)
    return (alpha * acts).sum(-1).reshape(-1, 4, 4) * 16


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
@pytest.mark.parametrize("depth", [2, 3])
def test_default_layer_gives_nonzero_grad_cam_equal_to_the_hand_computation(
    norm_first: bool, depth: int
) -> None:
    torch.manual_seed(0)
    model = TorchViT(norm_first, depth).eval()
    x = torch.rand(2, 3, 16, 16)
    target = torch.tensor([0, 2])
    with CAMHook(model) as hook:
        maps = hook.maps(model(x), target, method="grad_cam").detach()
        chosen = hook.layer_name
    assert maps.shape == (2, 4, 4)
    assert all(float(m.abs().max()) > 1e-3 for m in maps)  # every image: a non-zero map
    name = find_feature_layer(model)
    # pre-norm: the last block's norm1 feeds its attention; post-norm: the last block's input
    assert chosen == name == (f"blocks.{depth - 1}.norm1" if norm_first else f"blocks.{depth - 2}")
    expected = _grad_cam_by_hand(model, model.get_submodule(name), x, target)
    torch.testing.assert_close(maps, expected, rtol=1e-4, atol=1e-6)
    via_attribute = attribute(model, x, target, method="grad_cam")  # ReLU, the input's size
    resized = resize_maps(expected.relu(), (16, 16))
    torch.testing.assert_close(via_attribute[:, 0], resized, rtol=1e-4, atol=1e-6)


def test_post_norm_norm1_is_indeed_blind() -> None:
    """Why not ``norm1`` for post-norm: Grad-CAM on it is exactly zero (the issue's symptom)."""
    torch.manual_seed(0)
    model = TorchViT(norm_first=False).eval()
    x = torch.rand(2, 3, 16, 16)
    zero = _grad_cam_by_hand(model, model.blocks[1].norm1, x, torch.tensor([0, 1]))
    assert float(zero.detach().abs().max()) == 0.0


def test_single_post_norm_block_asks_for_a_layer() -> None:
    """The tokens entering the only block come from the patch embedding: not decidable."""
    model = TorchViT(norm_first=False, depth=1)
    with pytest.raises(LayerError, match=r"blocks\.0 is post-norm.*layer="):
        find_feature_layer(model)
    with pytest.raises(LayerError, match=r"post-norm"):
        CAMHook(model)
    assert find_feature_layer(TorchViT(norm_first=True, depth=1)) == "blocks.0.norm1"
