"""Token maps of vision transformers (torch only): a hand-built tiny ViT and a Swin-like model.

References are independent of the fold: positions encoded in the token values, Grad-CAM by
``einsum`` over the *unfolded* tokens with gradients from ``torch.autograd.grad``, and finite
differences (``torch.autograd.gradcheck``) for the differentiable maps.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xai_feedback import DTypeError, LayerError, ShapeError
from xai_feedback.attribution import attribute
from xai_feedback.hooks import CAMHook
from xai_feedback.layers import TokenLayout, find_feature_layer, find_token_layer, token_layout
from xai_feedback.targets import logits_of
from xai_feedback.tokens import TokenReshape, default_reshape

C, PATCH = 8, 4


class Attention(nn.Module):
    """Multi-head self-attention through the fused ``scaled_dot_product_attention`` (timm)."""

    def __init__(self, dim: int, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, dim: int = C) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """Patch embedding, class (+ register) tokens, two pre-norm blocks, class-token head."""

    def __init__(self, registers: int = 0, classes: int = 3, depth: int = 2) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, C, PATCH, stride=PATCH)
        self.cls_token = nn.Parameter(0.1 * torch.randn(1, 1, C))
        if registers:
            self.reg_token = nn.Parameter(0.1 * torch.randn(1, registers, C))
        self.registers = registers
        self.blocks = nn.Sequential(*[Block() for _ in range(depth)])
        self.norm = nn.LayerNorm(C)
        self.head = nn.Linear(C, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        prefix = [self.cls_token.expand(len(x), -1, -1)]
        if self.registers:
            prefix.append(self.reg_token.expand(len(x), -1, -1))
        tokens = self.blocks(torch.cat([*prefix, tokens], dim=1))
        return self.head(self.norm(tokens)[:, 0])


class SwinLike(nn.Module):
    """Channels-last stages (B, H, W, C), a final norm, global average pooling, a linear head."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, C, PATCH, stride=PATCH)
        self.stages = nn.Sequential(nn.Sequential(Block()), nn.Sequential(Block()))
        self.norm = nn.LayerNorm(C)
        self.head = nn.Linear(C, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.patch_embed(x).permute(0, 2, 3, 1)  # (B, H, W, C)
        b, h, w, c = grid.shape
        for stage in self.stages:
            grid = stage(grid.reshape(b, h * w, c)).view(b, h, w, c)
        return self.head(self.norm(grid).mean(dim=(1, 2)))


def _vit(registers: int = 0, dtype: torch.dtype = torch.float32) -> TinyViT:
    torch.manual_seed(0)
    return TinyViT(registers).to(dtype).eval()


def _images(b: int = 2, side: int = 12, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(b, 3, side, side, generator=torch.Generator().manual_seed(1), dtype=dtype)


# ----- the fold ------------------------------------------------------------------------------


@pytest.mark.parametrize(("prefix", "grid"), [(0, (3, 3)), (1, (3, 3)), (5, (2, 3)), (2, (4, 1))])
def test_fold_puts_each_patch_token_at_its_grid_cell(prefix: int, grid: tuple[int, int]) -> None:
    b, (h, w) = 2, grid
    n = prefix + h * w
    # token value encodes (image, token, channel): 1000 b + 10 n + c
    tokens = (
        1000 * torch.arange(b)[:, None, None]
        + 10 * torch.arange(n)[None, :, None]
        + torch.arange(C)[None, None, :]
    ).double()
    square = h == w
    folded = TokenReshape(prefix, None if square else grid)(tokens)
    assert folded.shape == (b, C, h, w)
    for bi in range(b):
        for i in range(h):
            for j in range(w):
                for c in range(C):
                    want = 1000 * bi + 10 * (prefix + i * w + j) + c
                    assert folded[bi, c, i, j] == want


def test_channels_last_grid_is_permuted_and_channels_first_passes() -> None:
    x = torch.randn(2, 3, 4, C)  # (B, H, W, C)
    folded = TokenReshape(channels_last=True)(x)
    assert folded.shape == (2, C, 3, 4)
    assert torch.equal(folded, torch.einsum("bhwc->bchw", x))
    nchw = torch.randn(2, C, 3, 4)
    assert TokenReshape(prefix_tokens=1)(nchw) is nchw  # a grid already: unchanged


def test_wrong_token_counts_are_shape_errors() -> None:
    with pytest.raises(ShapeError, match="not a square"):
        TokenReshape(prefix_tokens=2)(torch.zeros(1, 1 + 9, C))  # 8 patches
    with pytest.raises(ShapeError, match="grid"):
        TokenReshape(prefix_tokens=1, grid=(2, 3))(torch.zeros(1, 1 + 9, C))
    with pytest.raises(ShapeError, match="fewer"):
        TokenReshape(prefix_tokens=5)(torch.zeros(1, 3, C))
    with pytest.raises(ShapeError, match="grid"):
        TokenReshape(grid=(2, 2), channels_last=True)(torch.zeros(1, 3, 3, C))
    with pytest.raises(ShapeError):
        TokenReshape()(torch.zeros(2, C))
    with pytest.raises(ShapeError, match="not a square"):
        TokenReshape(prefix_tokens=1)(torch.zeros(1, 1, C))  # no patch tokens at all


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        TokenReshape(prefix_tokens=-1)
    with pytest.raises(DTypeError):
        TokenReshape(grid=[2, 2])  # type: ignore[arg-type]
    with pytest.raises(DTypeError):
        TokenReshape(channels_last=1)  # type: ignore[arg-type]
    with pytest.raises(DTypeError):
        CAMHook(_vit(), reshape="tokens")  # type: ignore[arg-type]


# ----- structure: default layer, prefix tokens, channels-last ------------------------------


def test_default_layer_of_a_vit_is_the_last_blocks_first_norm() -> None:
    model = _vit()
    assert find_token_layer(model) == find_feature_layer(model) == "blocks.1.norm1"
    with CAMHook(model) as hook:
        assert hook.layer_name == "blocks.1.norm1"
        # a last-dimension LayerNorm: channels-last if 4-D (tokens are folded either way)
        assert hook.reshape == TokenReshape(prefix_tokens=1, channels_last=True)
    assert find_token_layer(nn.Sequential(nn.Conv2d(3, 4, 3))) is None


def test_prefix_tokens_from_parameters_and_from_timm_attribute() -> None:
    assert token_layout(_vit()).prefix_tokens == 1
    assert token_layout(_vit(registers=4)).prefix_tokens == 5
    model = _vit()
    model.num_prefix_tokens = 2  # timm's attribute wins over the parameters
    assert token_layout(model).prefix_tokens == 2
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3))
    assert token_layout(cnn) == TokenLayout()  # nothing declared
    assert default_reshape(cnn, "0") is None


def test_layout_is_read_from_the_whole_model() -> None:
    """Wrapped in a container (``Sequential(normalize, vit)``) the layout is the bare model's."""
    bare = token_layout(_vit(registers=2))
    assert bare == TokenLayout(prefix_tokens=3, patch_size=None, class_token=True)
    wrapped = nn.Sequential(nn.Identity(), _vit(registers=2))
    assert token_layout(wrapped) == bare

    class Embeddings(nn.Module):  # Hugging Face's layout: the tokens in a submodule
        def __init__(self) -> None:
            super().__init__()
            self.patch_size = (4, 2)
            self.cls_token = nn.Parameter(torch.zeros(1, 1, C))

    nested = nn.Sequential(nn.Sequential(Embeddings()), nn.Linear(C, 2))
    nested.global_pool = "avg"  # not the module that holds the tokens: ignored
    assert token_layout(nested) == TokenLayout(1, patch_size=(4, 2), class_token=True)
    holder = nn.Module()
    holder.num_prefix_tokens, holder.global_pool, holder.patch_size = 0, "avg", 16
    holder.grid_size = (3, 5)  # a non-square grid is declared
    layout = token_layout(nn.Sequential(nn.Identity(), holder))
    assert layout == TokenLayout(0, (3, 5), (16, 16), class_token=False, pool="avg")


def test_swin_like_default_is_the_final_norm_channels_last() -> None:
    model = SwinLike()
    assert find_feature_layer(model) == "norm"
    assert default_reshape(model) == TokenReshape(channels_last=True)
    assert default_reshape(model, "patch_embed").channels_last is False  # a Conv2d is NCHW


def test_patch_embedding_is_never_the_default() -> None:
    class PoolFirst(SwinLike):
        # a global pool registered before the stages: the structural search would stop at
        # the patch embedding, which must be refused rather than explained
        def __init__(self) -> None:
            super().__init__()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.stages = self._modules.pop("stages")
            self.norm = self._modules.pop("norm")
            self.head = self._modules.pop("head")

    model = PoolFirst()
    assert list(dict(model.named_children())) == ["patch_embed", "pool", "stages", "norm", "head"]
    with pytest.raises(LayerError, match="patch embedding") as info:
        find_feature_layer(model)
    assert "stages.1.0.norm1" in str(info.value)  # candidates listed


def test_class_token_model_with_two_stacks_is_undecidable() -> None:
    class TwoStacks(TinyViT):  # CaiT-like: a second stack of class-attention blocks
        def __init__(self) -> None:
            super().__init__()
            self.blocks_token_only = nn.Sequential(Block())

    with pytest.raises(LayerError, match="Candidates"):
        CAMHook(TwoStacks())


# ----- maps ------------------------------------------------------------------------------------


def _reference_grad_cam(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, prefix: int
) -> torch.Tensor:
    """Grad-CAM from the unfolded tokens: weights are the patch tokens' mean gradient."""
    captured: list[torch.Tensor] = []
    handle = model.blocks[-1].norm1.register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        logits = model(x)
    finally:
        handle.remove()
    (tokens,) = captured
    (grads,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), tokens)
    patches, patch_grads = tokens[:, prefix:], grads[:, prefix:]  # (B, hw, C)
    weights = patch_grads.mean(dim=1)  # (B, C)
    side = int(patches.shape[1] ** 0.5)
    return torch.einsum("bc,bnc->bn", weights, patches).view(len(x), side, side).detach()


@pytest.mark.parametrize("registers", [0, 4])
def test_grad_cam_equals_the_reference_on_the_unfolded_tokens(registers: int) -> None:
    model, x = _vit(registers, torch.float64), _images(dtype=torch.float64)
    target = torch.tensor([0, 2])
    want = _reference_grad_cam(model, x, target, 1 + registers)
    with CAMHook(model) as hook:
        got = hook.maps(model(x), target, method="grad_cam", scale="paper")
        cam_scale = hook.maps(model(x), target, method="grad_cam")
    assert got.shape == (2, 3, 3)
    assert torch.allclose(got, want, atol=1e-12)
    assert torch.allclose(cam_scale, 9 * want, atol=1e-12)  # CAM scale: times h w


def test_hires_and_grad_cam_pp_on_the_fold_equal_the_kernels_on_the_unfolded_tokens() -> None:
    model, x = _vit(dtype=torch.float64), _images(dtype=torch.float64)
    target = torch.tensor([1, 0])
    captured: list[torch.Tensor] = []
    handle = model.blocks[-1].norm1.register_forward_hook(lambda m, i, o: captured.append(o))
    logits = model(x)
    handle.remove()
    (grads,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), captured[0])
    a, g = captured[0][:, 1:].detach(), grads[:, 1:]  # (B, 9, C)
    hires = (a * g).sum(-1).view(2, 3, 3)
    alpha = g.pow(2) / (2 * g.pow(2) + a.sum(1, keepdim=True) * g.pow(3)).where(
        g != 0, torch.ones_like(g)
    )
    pp = ((alpha * F.relu(g)).sum(1)[:, None, :] * a).sum(-1).view(2, 3, 3)
    with CAMHook(model) as hook:
        logits = model(x)
        got_hires = hook.maps(logits, target, method="hires_cam", scale="paper")
        got_pp = hook.maps(logits, target, method="grad_cam_pp", scale="paper")
    assert torch.allclose(got_hires, hires, atol=1e-12)
    assert torch.allclose(got_pp, pp, atol=1e-10)


def test_maps_are_batched_per_image() -> None:
    model, x = _vit(2), _images(3)
    target = torch.tensor([0, 1, 2])
    with CAMHook(model) as hook:
        batch = hook.maps(model(x), target, method="grad_cam")
    for i in range(3):
        with CAMHook(model) as hook:
            one = hook.maps(model(x[i : i + 1]), target[i : i + 1], method="grad_cam")
        assert torch.allclose(batch[i], one[0], atol=1e-5)


def test_cam_is_refused_on_a_class_token_head() -> None:
    model, x = _vit(), _images()
    with pytest.raises(LayerError, match="global-average-pool"), CAMHook(model) as hook:
        hook.maps(model(x), method="cam")


def test_swin_like_cam_is_exact_and_grad_cam_equals_it() -> None:
    torch.manual_seed(0)
    model, x = SwinLike().double().eval(), _images(dtype=torch.float64)
    with CAMHook(model) as hook:
        logits = model(x)
        cam = hook.maps(logits, all_classes=True)  # verified: means + bias are the logits
        grad = hook.maps(logits, all_classes=True, method="grad_cam")
        grid = hook.activations  # (B, H, W, C), channels-last
    assert grid.shape == (2, 3, 3, C)
    want = torch.einsum("kc,bhwc->bkhw", model.head.weight, grid)
    assert torch.allclose(cam, want, atol=1e-12)
    assert torch.allclose(cam.mean(dim=(2, 3)) + model.head.bias, logits, atol=1e-12)
    assert torch.allclose(grad, cam, atol=1e-10)


def test_output_object_with_logits_is_accepted() -> None:
    class HFLike(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vit = _vit()

        def forward(self, x: torch.Tensor) -> SimpleNamespace:
            return SimpleNamespace(logits=self.vit(x))

    model, x = HFLike().eval(), _images()
    target = torch.tensor([2, 1])
    with CAMHook(model) as hook:
        assert hook.layer_name == "vit.blocks.1.norm1"
        got = hook.maps(model(x), target, method="grad_cam")
    with CAMHook(model.vit) as hook:
        want = hook.maps(model.vit(x), target, method="grad_cam")
    assert torch.allclose(got, want)
    maps = attribute(model, x, target, method="grad_cam")
    assert maps.shape == (2, 1, 12, 12)
    with pytest.raises(DTypeError, match="logits"):
        logits_of(SimpleNamespace(scores=torch.zeros(1, 2)))


def test_attribute_at_the_grid_and_at_the_input_on_a_vit() -> None:
    model, x = _vit(4), _images()
    target = torch.tensor([0, 1])
    with CAMHook(model) as hook:
        want = torch.relu(hook.maps(model(x), target, method="grad_cam_pp")).detach()
    got = attribute(model, x, target, method="grad_cam_pp", size=None, reduce="sum")
    assert torch.allclose(got, want, atol=1e-6)
    explicit = attribute(
        model,
        x,
        target,
        method="grad_cam_pp",
        layer="blocks.0.norm1",
        reshape=TokenReshape(5),
        size=None,
        reduce="sum",
    )
    assert explicit.shape == (2, 3, 3) and not torch.allclose(explicit, got)
    up = attribute(model, x, target, method="grad_cam_pp", reduce="sum")
    assert up.shape == (2, 12, 12)
    with pytest.raises(ShapeError, match="not a square"):
        attribute(
            model, x, target, method="grad_cam", layer="blocks.0.norm1", reshape=TokenReshape(1)
        )


def test_a_token_layer_without_reshape_is_a_layer_error() -> None:
    model, x = _vit(), _images()
    with pytest.raises(LayerError, match="reshape"), CAMHook(model, reshape=lambda t: t) as hook:
        hook.maps(model(x), method="grad_cam")


# ----- differentiable maps -----------------------------------------------------------------


def test_token_maps_are_differentiable_gradcheck() -> None:
    # d(maps)/d(parameters) through the hook's create_graph gradient, against finite
    # differences: the second derivative through the last block's (fused) attention.
    model, x = _vit(dtype=torch.float64), _images(1, 8, torch.float64)
    target = torch.tensor([1])
    names = ("blocks.1.attn.qkv.weight", "head.weight")
    params = dict(model.named_parameters())

    def maps_of(qkv: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        values = {**params, names[0]: qkv, names[1]: head}
        with CAMHook(model) as hook:
            logits = torch.func.functional_call(model, values, (x,))
            return hook.maps(logits, target, method="grad_cam")

    inputs = tuple(params[n].detach().clone().requires_grad_() for n in names)
    assert torch.autograd.gradcheck(maps_of, inputs, eps=1e-6, atol=1e-5, fast_mode=True)


def test_a_loss_on_the_maps_trains_the_parameters_with_fused_attention() -> None:
    model, x = _vit(), _images()
    model.train()
    target = torch.tensor([0, 1])
    with CAMHook(model) as hook:
        logits = model(x)
        maps = hook.maps(logits, target, method="grad_cam")
    maps.pow(2).mean().backward()  # only the map's loss: no cross-entropy term
    qkv = model.blocks[1].attn.qkv.weight.grad
    assert qkv is not None and float(qkv.abs().sum()) > 0  # through the double backward
    assert model.patch_embed.weight.grad is not None
    # the fused kernel itself has no double backward: the hook's math switch is what works
    model.zero_grad()
    with CAMHook(model, sdpa_math=False) as hook:
        maps = hook.maps(model(x), target, method="grad_cam")
    with pytest.raises(RuntimeError, match="derivative"):
        maps.pow(2).mean().backward()


def test_sdpa_switch_is_scoped_to_the_block() -> None:
    before = torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled()
    with CAMHook(_vit()):
        assert not torch.backends.cuda.flash_sdp_enabled()
        assert torch.backends.cuda.math_sdp_enabled()
    assert (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled()) == (
        before
    )
    with CAMHook(_vit(), leaf=True):  # explanation only: the fused kernels stay
        assert torch.backends.cuda.flash_sdp_enabled() == before[0]
    with pytest.raises(RuntimeError), CAMHook(_vit()):
        raise RuntimeError("boom")
    assert torch.backends.cuda.flash_sdp_enabled() == before[0]


def test_sdpa_switch_survives_interleaved_threads() -> None:
    """Two threads' blocks overlapping in any order leave the kernel choice as it was."""
    import threading

    before = torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled()
    model = _vit()
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    inside: list[bool] = []

    def first() -> None:  # enters first, leaves first (the order that leaked)
        with CAMHook(model):
            first_in.set()
            second_in.wait(5)
        first_out.set()

    def second() -> None:
        first_in.wait(5)
        with CAMHook(model):
            second_in.set()
            first_out.wait(5)
            inside.append(torch.backends.cuda.flash_sdp_enabled())  # still inside a block

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled()
    assert inside == [False]  # the math kernel for as long as one block is open
    assert after == before
