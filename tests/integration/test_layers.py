"""The default layer of CAMHook on real torchvision and timm models is the spatial map that
feeds the global pooling: checked against a hand-written split of each model's forward."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import timm
import torch
import torchvision
from torch import nn

from tests.integration._zoo import ZOO, ZOO_IDS, Arch, images, model_of
from xai_feedback.errors import LayerError, XAIFeedbackError
from xai_feedback.hooks import CAMHook


@pytest.mark.parametrize("arch", ZOO, ids=ZOO_IDS)
def test_reference_split_reproduces_the_model(arch: Arch) -> None:
    # The hand split is the reference for every test of the tier: it must be the real model.
    model, x = model_of(arch), images(arch)
    with torch.no_grad():
        assert torch.equal(arch.head(model, arch.features(model, x)), model(x))


@pytest.mark.parametrize("arch", ZOO, ids=ZOO_IDS)
def test_default_layer_is_the_pooled_feature_map(arch: Arch) -> None:
    model, x = model_of(arch), images(arch)
    with torch.no_grad():
        expected = arch.features(model, x)
    with CAMHook(model) as hook:
        logits = model(x)
        acts = hook.activations
        name = hook.layer_name
    assert torch.allclose(logits, arch.head(model, expected), atol=1e-5)
    modules = dict(model.named_modules())
    assert name in modules and name != ""
    if arch.layer is not None:
        assert name == arch.layer
    if arch.name == "densenet121":
        # `features` ends with norm5; DenseNet applies a functional relu before pooling.
        # Either the hook exposes the relu output or the norm5 output it came from.
        assert acts.shape == expected.shape
        assert torch.allclose(torch.relu(acts), expected, atol=1e-6)
    else:
        assert torch.allclose(acts, expected, atol=1e-6), (arch.name, name)


# Naming the default layer back (CAMHook(model, hook.layer_name)) keeps its in-place policy
# "follow": on DenseNet it explains the output of F.relu(inplace=True) as the default does.
EXPLICIT = [pytest.param(a, id=a.name) for a in ZOO]


@pytest.mark.parametrize("arch", EXPLICIT)
def test_explicit_name_gives_the_same_layer_as_default(arch: Arch) -> None:
    model, x = model_of(arch), images(arch)
    with torch.no_grad(), CAMHook(model) as hook:
        model(x)
        name, default_acts = hook.layer_name, hook.activations
    module = dict(model.named_modules())[name]
    for spec in (name, module):
        with torch.no_grad(), CAMHook(model, spec) as hook:
            model(x)
            assert hook.layer_name == name
            assert torch.equal(hook.activations, default_acts)


def test_unknown_layer_name_is_a_layer_error_with_candidates() -> None:
    model = model_of(ZOO[0])
    with pytest.raises(LayerError, match="layer4"):
        CAMHook(model, "layer5")


# Vision transformers: the default layer is read from the structure (never the patch
# embedding): the last block's first norm for a single stack of blocks, the final norm
# that feeds the pooling for Swin (channels-last), the last called block for MaxViT.
TRANSFORMERS = [
    pytest.param(
        lambda: torchvision.models.vit_b_16(weights=None, image_size=32, num_classes=10),
        32,
        "encoder.layers.encoder_layer_11.ln_1",
        (2, 1 + 2 * 2, 768),
        id="tv_vit_b_16",
    ),
    pytest.param(
        lambda: torchvision.models.swin_t(weights=None, num_classes=10),
        64,
        "norm",
        (2, 2, 2, 768),
        id="tv_swin_t",
    ),
    pytest.param(
        lambda: torchvision.models.maxvit_t(weights=None, num_classes=10),
        224,
        "blocks.3",
        (2, 512, 7, 7),
        id="tv_maxvit_t",
    ),
    pytest.param(
        lambda: timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32),
        32,
        "blocks.11.norm1",
        (2, 1 + 2 * 2, 192),
        id="timm_vit_tiny",
    ),
    pytest.param(
        lambda: timm.create_model("deit_tiny_distilled_patch16_224", num_classes=10, img_size=32),
        32,
        "blocks.11.norm1",
        (2, 2 + 2 * 2, 192),
        id="timm_deit_tiny_distilled",
    ),
    pytest.param(
        lambda: timm.create_model(
            "vit_tiny_patch16_224", num_classes=10, img_size=32, reg_tokens=4
        ),
        32,
        "blocks.11.norm1",
        (2, 5 + 2 * 2, 192),
        id="timm_vit_tiny_reg4",
    ),
    pytest.param(
        lambda: timm.create_model("eva02_tiny_patch14_224", num_classes=10, img_size=28),
        28,
        "blocks.11.norm1",
        (2, 1 + 2 * 2, 192),
        id="timm_eva02_tiny",
    ),
    pytest.param(
        lambda: timm.create_model(
            "swin_tiny_patch4_window7_224", num_classes=10, img_size=64, window_size=2
        ),
        64,
        "norm",
        (2, 2, 2, 768),
        id="timm_swin_tiny",
    ),
    pytest.param(
        lambda: timm.create_model("maxvit_tiny_tf_224", num_classes=10, img_size=64),
        64,
        "stages",
        (2, 512, 2, 2),
        id="timm_maxvit_tiny",
    ),
]


@pytest.mark.parametrize(("build", "size", "layer", "shape"), TRANSFORMERS)
def test_transformer_default_layers(
    build: Callable[[], nn.Module], size: int, layer: str, shape: tuple[int, ...]
) -> None:
    torch.manual_seed(0)
    model = build().eval()
    x = torch.rand(2, 3, size, size)
    with CAMHook(model) as hook:
        logits = model(x)
        assert hook.layer_name == layer
        assert tuple(hook.activations.shape) == shape  # the hook fired on that layer
        maps = hook.maps(logits, method="grad_cam")
    side = shape[1] if len(shape) == 4 and shape[1] == shape[2] else shape[-1]
    if len(shape) == 3:  # tokens: the grid of the patch tokens
        side = 2
    assert maps.shape == (2, side, side)
    # the patch embedding is never the default
    assert not any(key in layer for key in ("patch_embed", "conv_proj", "features.0", "stem"))


def test_vit_without_a_stack_of_blocks_is_a_clear_layer_error() -> None:
    # A class-token ViT whose blocks the structure cannot find (a second stack of
    # class-attention blocks, CaiT): undecidable, with candidates, never the patch embedding.
    torch.manual_seed(0)
    cait = timm.create_model("cait_xxs24_224", pretrained=False, num_classes=10, img_size=32)
    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(LayerError, match="Candidates") as info, CAMHook(cait) as hook:
        logits = cait(x)
        hook.maps(logits, method="grad_cam")
    assert isinstance(info.value, XAIFeedbackError)
    assert isinstance(info.value, ValueError | TypeError | LookupError | RuntimeError)


def test_two_parallel_pooled_branches_is_undecidable() -> None:
    class TwoBranch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, padding=1)
            self.b = nn.Conv2d(3, 4, 3, padding=1)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(8, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a, b = self.pool(self.a(x)), self.pool(self.b(x))
            return self.fc(torch.cat([a, b], 1).flatten(1))

    model = TwoBranch().eval()
    x = torch.rand(2, 3, 16, 16)
    # Either the default is refused up front with the candidates listed, or a chosen branch
    # fails the CAM check (its class-map means do not reproduce the logits).
    with pytest.raises(LayerError), CAMHook(model) as hook:
        logits = model(x)
        hook.maps(logits, method="cam")


def test_densenet_explicit_features_with_follow_is_the_pooled_relu_map() -> None:
    # The documented way to name DenseNet's layer explicitly: follow the in-place relu.
    arch = next(a for a in ZOO if a.name == "densenet121")
    model, x = model_of(arch), images(arch)
    with torch.no_grad():
        expected = arch.features(model, x)
    with torch.no_grad(), CAMHook(model, "features", inplace="follow") as hook:
        model(x)
        assert torch.allclose(hook.activations, expected, atol=1e-6)
