"""Vision transformers through the CAM hooks: torchvision ViT-B/16 and Swin-T, timm ViT,
DeiT (distilled), a ViT with register tokens, Swin, and Hugging Face's ViT, random init.

References: the layer's raw tokens and their gradient from a plain forward hook and
``torch.autograd.grad``, folded by hand with each family's known prefix count (Grad-CAM by
``einsum``); pytorch-grad-cam with its documented ``reshape_transform`` recipe on the same
layer; the bare model's maps for the wrapped ones (DDP, ``torch.compile``).

The classifier heads are re-initialized with standard deviation 1: torchvision's ViT
initializes its head to zero (every gradient, hence every map, would be zero), and with
timm's 0.02 the gradients at the last block are ~1e-3, where pytorch-grad-cam's Grad-CAM++
denominator ``2 g^2 + sum(A) g^3 + 1e-6`` is dominated by its ``1e-6`` and differs from the
published formula (the correlation then falls to 0.7-0.95; ours has no epsilon).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import timm
import torch
import torch.distributed as dist
import torch.nn.functional as F
import torchvision
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from tests.integration._zoo import corr
from xai_feedback.errors import LayerError, XAIFeedbackError
from xai_feedback.hooks import CAMHook
from xai_feedback.losses import CenterPenalty

TARGET = torch.tensor([3, 7, 1, 5])


@dataclass(frozen=True)
class ViTArch:
    """A transformer of the tier.

    Attributes:
        name: Test id.
        build: Random-init model, 10 classes.
        size: Input side (px).
        layer: The default layer's dotted name (asserted).
        prefix: Prefix tokens of the family, written by hand (0 for Swin).
        grid: Side of the layer's patch grid at ``size``.
        channels_last: The layer's output is ``(B, H, W, C)`` (Swin), else ``(B, N, C)``.
        head: The final linear layer (re-initialized with std 1).
        gap: The layer feeds a global-average-pool + linear head (``"cam"`` is exact).
    """

    name: str
    build: Callable[[], nn.Module]
    size: int
    layer: str
    prefix: int
    grid: int
    channels_last: bool
    head: str
    gap: bool


def _timm(name: str, **kwargs: object) -> Callable[[], nn.Module]:
    return lambda: timm.create_model(name, pretrained=False, num_classes=10, **kwargs)


ARCHS = [
    ViTArch(
        "tv_vit_b_16",
        lambda: torchvision.models.vit_b_16(weights=None, image_size=64, num_classes=10),
        64,
        "encoder.layers.encoder_layer_11.ln_1",
        1,
        4,
        False,
        "heads.head",
        False,
    ),
    ViTArch(
        "tv_swin_t",
        lambda: torchvision.models.swin_t(weights=None, num_classes=10),
        128,
        "norm",
        0,
        4,
        True,
        "head",
        True,
    ),
    ViTArch(
        "timm_vit_tiny",
        _timm("vit_tiny_patch16_224", img_size=64),
        64,
        "blocks.11.norm1",
        1,
        4,
        False,
        "head",
        False,
    ),
    ViTArch(
        "timm_deit_tiny_distilled",
        _timm("deit_tiny_distilled_patch16_224", img_size=64),
        64,
        "blocks.11.norm1",
        2,
        4,
        False,
        "head",
        False,
    ),
    ViTArch(
        "timm_vit_tiny_reg4",
        _timm("vit_tiny_patch16_224", img_size=64, reg_tokens=4),
        64,
        "blocks.11.norm1",
        5,
        4,
        False,
        "head",
        False,
    ),
    ViTArch(
        "timm_swin_tiny",
        _timm("swin_tiny_patch4_window7_224", img_size=128, window_size=4),
        128,
        "norm",
        0,
        4,
        True,
        "head.fc",
        True,
    ),
]
IDS = [a.name for a in ARCHS]
BY_NAME = {a.name: a for a in ARCHS}


@functools.cache
def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    arch = BY_NAME[name]
    model = arch.build().eval()
    head = dict(model.named_modules())[arch.head]
    with torch.no_grad():
        head.weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(1))
    return model


def _images(arch: ViTArch) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(len(TARGET), 3, arch.size, arch.size, generator=g)


def _fold(arch: ViTArch, tensor: torch.Tensor) -> torch.Tensor:
    """The family's fold written by hand (pytorch-grad-cam's recipe with its prefix count)."""
    if arch.channels_last:
        return tensor.permute(0, 3, 1, 2)
    b, _, c = tensor.shape
    grid = tensor[:, arch.prefix :, :].reshape(b, arch.grid, arch.grid, c)
    return grid.transpose(2, 3).transpose(1, 2)


def _reference(
    arch: ViTArch, model: nn.Module, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raw layer output, its gradient for TARGET, and the logits: plain hook + autograd."""
    module = dict(model.named_modules())[arch.layer]
    captured: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        logits = model(x)
    finally:
        handle.remove()
    (grads,) = torch.autograd.grad(logits.gather(1, TARGET[:, None]).sum(), captured[0])
    return captured[0].detach(), grads, logits.detach()


@pytest.mark.parametrize("arch", ARCHS, ids=IDS)
def test_default_layer_and_fold(arch: ViTArch) -> None:
    model, x = _model(arch.name), _images(arch)
    with torch.no_grad(), CAMHook(model) as hook:
        model(x)
        raw = hook.activations
    assert hook.layer_name == arch.layer
    assert hook.reshape is not None and hook.reshape.prefix_tokens == arch.prefix
    want = (
        (len(x), arch.grid, arch.grid, raw.shape[-1])
        if arch.channels_last
        else (len(x), arch.prefix + arch.grid**2, raw.shape[-1])
    )
    assert tuple(raw.shape) == want


@pytest.mark.parametrize("arch", ARCHS, ids=IDS)
def test_grad_cam_equals_the_hand_fold(arch: ViTArch) -> None:
    model, x = _model(arch.name), _images(arch)
    raw, grads, logits = _reference(arch, model, x)
    acts, g = _fold(arch, raw), _fold(arch, grads)
    want = torch.einsum("bc,bchw->bhw", g.mean(dim=(2, 3)), acts)
    with CAMHook(model) as hook:
        out = model(x)
        got = hook.maps(out, TARGET, method="grad_cam", scale="paper", create_graph=False)
    # the hook runs attention with the math kernel, the reference with the fused one: equal to
    # float32 rounding of logits up to ~40 (vit_b_16's std-1 head, 768-wide sums): 1e-4 relative
    assert torch.allclose(out, logits, rtol=1e-4, atol=1e-4)
    scale = float(want.abs().max())
    assert scale > 0
    assert torch.allclose(got, want, rtol=0, atol=1e-4 * scale)


PEERS = [(GradCAM, "grad_cam"), (HiResCAM, "hires_cam"), (GradCAMPlusPlus, "grad_cam_pp")]


@pytest.mark.parametrize(("peer", "method"), PEERS, ids=[m for _, m in PEERS])
@pytest.mark.parametrize("arch", ARCHS, ids=IDS)
def test_pytorch_grad_cam_recipe_agrees(arch: ViTArch, peer: type, method: str) -> None:
    # pytorch-grad-cam: ReLU'd, min-max normalized maps resized to the input (OpenCV):
    # compared at the input size by correlation, per image.
    model, x = _model(arch.name), _images(arch)
    module = dict(model.named_modules())[arch.layer]
    with peer(
        model=model, target_layers=[module], reshape_transform=lambda t: _fold(arch, t)
    ) as extractor:
        theirs = torch.as_tensor(
            extractor(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in TARGET])
        )
    ours = grid_maps_of(model, x, method)
    ours_up = F.interpolate(ours[:, None], size=x.shape[-2:], mode="bilinear")[:, 0]
    compared = 0
    for i in range(len(x)):
        if float(ours_up[i].max()) == 0:  # all evidence negative: both are the zero map
            assert float(theirs[i].abs().max()) < 1e-6, (arch.name, method, i)
            continue
        assert corr(ours_up[i], theirs[i]) >= 0.99, (arch.name, method, i)
        compared += 1
    assert compared >= 1


def grid_maps_of(model: nn.Module, x: torch.Tensor, method: str) -> torch.Tensor:
    from xai_feedback.attribution import attribute

    return attribute(
        model,
        x,
        TARGET,
        method=method,
        size=None,
        reduce="sum",
        options={"scale": "paper"},
    )


@pytest.mark.parametrize("arch", ARCHS, ids=IDS)
def test_cam_is_exact_on_swin_and_refused_on_class_token_heads(arch: ViTArch) -> None:
    model, x = _model(arch.name), _images(arch)
    if not arch.gap:
        with pytest.raises(LayerError, match="global-average-pool"), CAMHook(model) as hook:
            hook.maps(model(x), TARGET, method="cam")
        return
    head = dict(model.named_modules())[arch.head]
    with torch.no_grad(), CAMHook(model) as hook:
        logits = model(x)
        cam = hook.maps(logits, all_classes=True, create_graph=False)
    assert torch.allclose(cam.mean(dim=(2, 3)) + head.bias, logits, atol=1e-4)


@pytest.mark.parametrize("arch", ARCHS, ids=IDS)
def test_penalty_on_the_maps_trains_through_the_last_block(arch: ViTArch) -> None:
    # The map's loss alone (no cross-entropy) reaches the parameters that act *after* the
    # hooked layer only through the double backward of the last block's fused attention.
    model, x = copy.deepcopy(_model(arch.name)).train(), _images(arch)
    with CAMHook(model) as hook:
        logits = model(x)
        maps = hook.maps(logits, all_classes=True, method="grad_cam")
    assert maps.shape == (len(x), 10, arch.grid, arch.grid)
    CenterPenalty()(maps).backward()
    block = arch.layer.rsplit(".", 1)[0] + "."  # the last block (ViT)
    after = [
        p
        for n, p in model.named_parameters()
        if n.startswith(block) and ("attn" in n or "attention" in n)
    ]
    if not arch.gap:  # Swin's norm feeds the pooled head: no attention after the layer
        assert after and all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in after)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)


def test_fused_attention_needs_the_math_kernel_for_the_double_backward() -> None:
    arch = BY_NAME["timm_vit_tiny"]
    model, x = copy.deepcopy(_model(arch.name)).train(), _images(arch)
    assert model.blocks[-1].attn.fused_attn  # timm's default: F.scaled_dot_product_attention
    with CAMHook(model, sdpa_math=False) as hook:
        maps = hook.maps(model(x), TARGET, method="grad_cam")
    with pytest.raises(RuntimeError, match="derivative"):
        maps.pow(2).mean().backward()


# ----- wrapped models ----------------------------------------------------------------------

WRAPPED = ["timm_vit_tiny", "tv_vit_b_16"]


def _maps(wrapped: nn.Module, x: torch.Tensor, layer: str | None) -> tuple[str, torch.Tensor]:
    with CAMHook(wrapped, layer) as hook:
        logits = wrapped(x)
        return hook.layer_name, hook.maps(logits, TARGET, method="grad_cam").detach()


def _bare(name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    arch = BY_NAME[name]
    model, x = copy.deepcopy(_model(name)), _images(arch)
    return model, x, _maps(model, x, None)[1]


def _same(got: torch.Tensor, want: torch.Tensor) -> None:
    scale = float(want.abs().max().clamp_min(1e-12))
    assert torch.allclose(got, want, rtol=0, atol=1e-4 * scale)


@pytest.fixture
def process_group(tmp_path: Path) -> Iterator[None]:
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.usefixtures("process_group")
@pytest.mark.parametrize("name", WRAPPED)
def test_distributed_data_parallel_gives_the_bare_maps(name: str) -> None:
    model, x, want = _bare(name)
    layer, got = _maps(nn.parallel.DistributedDataParallel(model), x, None)
    assert layer == BY_NAME[name].layer
    _same(got, want)


@pytest.mark.usefixtures("process_group")
def test_distributed_data_parallel_training_step_equals_the_bare_one() -> None:
    model, x, _ = _bare("timm_vit_tiny")
    model.train()
    twin = copy.deepcopy(model)
    ddp = nn.parallel.DistributedDataParallel(model)

    def step(net: nn.Module) -> None:
        with CAMHook(net) as hook:
            logits = net(x)
            maps = hook.maps(logits, TARGET, method="grad_cam")
        (F.cross_entropy(logits, TARGET) + maps.pow(2).mean()).backward()

    step(ddp)
    step(twin)
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None, name
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
@pytest.mark.parametrize("name", WRAPPED)
def test_torch_compile_gives_the_bare_maps_or_a_clear_error(name: str, backend: str) -> None:
    model, x, want = _bare(name)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend)
    try:
        layer, got = _maps(compiled, x, None)
    except XAIFeedbackError as error:
        assert "compile" in str(error).lower(), str(error)
        return
    assert layer == BY_NAME[name].layer
    _same(got, want)


# ----- Hugging Face -------------------------------------------------------------------------


def _hf_vit() -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=5,
    )
    return ViTForImageClassification(config)


def test_hugging_face_vit_output_object_and_a_center_penalty_step() -> None:
    model = _hf_vit().train()
    x, labels = torch.rand(2, 3, 32, 32), torch.tensor([1, 4])
    with CAMHook(model) as hook:
        out = model(x)  # an ImageClassifierOutput, not a tensor
        assert not isinstance(out, torch.Tensor)
        maps = hook.maps(out, all_classes=True, method="grad_cam")
        one = hook.maps(out, labels, method="grad_cam", scale="paper")
    assert hook.layer_name == "vit.layers.1.layernorm_before"
    assert hook.reshape is not None and hook.reshape.prefix_tokens == 1
    assert maps.shape == (2, 5, 4, 4)
    # the hand fold of the same layer: class token dropped, 4 x 4 patches
    module = dict(model.named_modules())[hook.layer_name]
    captured: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        logits = model(x).logits
    finally:
        handle.remove()
    (grads,) = torch.autograd.grad(logits.gather(1, labels[:, None]).sum(), captured[0])
    a, g = captured[0][:, 1:].detach(), grads[:, 1:]
    want = torch.einsum("bc,bnc->bn", g.mean(dim=1), a).view(2, 4, 4)
    assert torch.allclose(one, want, atol=1e-5 * float(want.abs().max()))
    loss = F.cross_entropy(out.logits, labels) + CenterPenalty()(maps)
    loss.backward()
    attention = model.vit.layers[1].attention
    grads_after = [p.grad for p in attention.parameters()]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads_after)


# ----- the prediction difference on real architectures ---------------------------------------


@pytest.mark.parametrize("wrap", ["bare", "data_parallel", "compile"])
@pytest.mark.parametrize("name", ["timm_vit_tiny", "tv_resnet18_frozen_bn"])
def test_prediction_difference_step_on_real_architectures(name: str, wrap: str) -> None:
    # one training step of prediction_difference_objective: the wrapped or compiled model gives
    # the bare model's loss and parameter gradients, and frozen BatchNorms stay frozen
    from xai_feedback.counterexamples import Counterexamples
    from xai_feedback.objectives import prediction_difference_objective
    from xai_feedback.training import Batch

    if name == "timm_vit_tiny":
        model, x, _ = _bare(name)
        model.train()
    else:
        torch.manual_seed(0)
        model = torchvision.models.resnet18(num_classes=10).train()
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(x.shape[0], *x.shape[-2:], dtype=torch.bool)
    masks[:, : x.shape[-2] // 4] = True
    batch = Batch(x, TARGET, masks, 0, 0, 1)
    stats = [b.clone() for b in model.buffers()]

    def step(net: nn.Module) -> tuple[torch.Tensor, list[torch.Tensor]]:
        g = torch.Generator().manual_seed(1)
        objective = prediction_difference_objective(
            3.0, augment=Counterexamples(fill="swap", generator=g)
        )
        loss, _ = objective(net, batch)
        params = [p for p in model.parameters() if p.requires_grad]
        return loss.detach(), list(torch.autograd.grad(loss, params))

    want_loss, want_grads = step(model)
    torch._dynamo.reset()
    wrapped = {
        "bare": lambda: model,
        "data_parallel": lambda: nn.DataParallel(model),
        "compile": lambda: torch.compile(model, backend="aot_eager"),
    }[wrap]()
    loss, grads = step(wrapped)
    assert float(want_loss) > 0
    torch.testing.assert_close(loss, want_loss, rtol=1e-4, atol=1e-6)
    for got, want in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-6)
    flags = [m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert not any(flags)  # frozen BatchNorms (none in the ViT) stay frozen
    for before, now in zip(stats, model.buffers(), strict=True):
        assert torch.equal(before, now)
