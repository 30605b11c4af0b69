"""Layer resolution, wrappers, in-place safety, threads and the CAM scale (issue 13).

The models here copy the *structure* of torchvision's families (the integration tier runs the
real ones): what matters for resolution is the order of children and where the pooling and
the classifier sit.
"""

import logging
import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xai_feedback import DTypeError, HookError, LayerError, RangeError
from xai_feedback.attribution import attribute
from xai_feedback.functional import grad_cam_pp
from xai_feedback.hooks import CAMHook
from xai_feedback.layers import find_feature_layer, find_head, resolve_layer, unwrap_model
from xai_feedback.losses import CenterPenalty
from xai_feedback.methods import get_method, method_names
from xai_feedback.models import GAPNet
from xai_feedback.objectives import cam_penalty_objective


class Block(nn.Module):
    """A residual block with torchvision's in-place habits (``out += identity``, inplace ReLU)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.relu(out)


class ResNetLike(nn.Module):
    """conv1, bn1, relu, layer1, layer2, avgpool, fc: the last Conv2d is layer2.1.conv2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(Block(8))
        self.layer2 = nn.Sequential(Block(8), Block(8))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class DenseNetLike(nn.Module):
    """features (ending in a norm), then a *functional* in-place ReLU, pooling, classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.classifier = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.features(x), inplace=True)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(out, (1, 1)), 1))


def vgg_like() -> nn.Sequential:
    """features, a 2x2 adaptive pool, an MLP classifier: not a GAP head."""
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True)),
        nn.AdaptiveAvgPool2d((2, 2)),
        nn.Flatten(),
        nn.Sequential(nn.Linear(32, 16), nn.ReLU(inplace=True), nn.Dropout(), nn.Linear(16, 5)),
    )


def _eval(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for m in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _x(n: int = 3) -> torch.Tensor:
    return torch.rand(n, 3, 12, 12, generator=torch.Generator().manual_seed(1))


def _pool_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Hand reference: the tensor that enters the global pooling, caught by a pre-hook."""
    seen: list[torch.Tensor] = []
    pool = model.avgpool
    handle = pool.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    try:
        model(x)
    finally:
        handle.remove()
    return seen[0]


def test_default_layer_is_the_pooled_feature_map_not_the_last_conv() -> None:
    model = _eval(ResNetLike())
    last_conv = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)][-1]
    assert last_conv == "layer2.1.conv2"
    assert find_feature_layer(model) == "layer2"
    x = _x()
    with CAMHook(model) as hook:
        logits = model(x)
        acts = hook.activations.detach().clone()
        cam = hook.maps(logits, all_classes=True)
    assert hook.layer_name == "layer2"
    assert torch.equal(acts, _pool_input(model, x))
    # CAM by hand from the pooled map and the fc weights; it reproduces the logits
    expected = torch.einsum("kc,bchw->bkhw", model.fc.weight, acts)
    assert torch.allclose(cam, expected, atol=1e-6)
    assert torch.allclose(cam.mean(dim=(2, 3)) + model.fc.bias, logits, atol=1e-5)


def test_structures_resolve_like_their_torchvision_families() -> None:
    assert find_feature_layer(DenseNetLike()) == "features"
    assert find_feature_layer(vgg_like()) == "0"
    assert find_feature_layer(GAPNet(width=4)) == "features"  # its cam_layer
    wrapped = nn.Sequential(nn.Identity(), ResNetLike())  # e.g. Sequential(normalize, net)
    assert find_feature_layer(wrapped) == "1.layer2"
    assert find_head(ResNetLike()).name == "fc"
    with pytest.raises(LayerError, match=r"cannot tell which layer.*Candidates: \['0'\]"):
        find_feature_layer(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))  # no head at all


def test_cam_is_checked_and_refused_where_it_is_not_defined() -> None:
    model = _eval(vgg_like())
    x = _x()
    with CAMHook(model) as hook:
        logits = model(x)
        with pytest.raises(LayerError, match="needs the layer that feeds the head"):
            hook.maps(logits, method="cam")
        assert hook.maps(logits, method="grad_cam").shape == (3, 12, 12)
    # a head with the right width whose maps do not produce the logits: the check catches it
    net = _eval(ResNetLike())
    with CAMHook(net, "layer1") as hook:  # same channel count as layer2, wrong layer
        logits = net(x)
        with pytest.raises(LayerError, match="does not: its class maps' means plus the bias"):
            hook.maps(logits, method="cam")
        assert hook.maps(logits, method="cam", check=False).shape == (3, 12, 12)


def test_densenet_functional_inplace_relu_is_followed_by_default() -> None:
    model = _eval(DenseNetLike())
    x = _x()
    with CAMHook(model) as hook:
        logits = model(x)
        cam = hook.maps(logits, all_classes=True)  # check passes: maps are of relu(features)
        grad = hook.maps(logits, method="grad_cam", relu=False, all_classes=True)
    relu_features = F.relu(model.features(x))
    expected = torch.einsum("kc,bchw->bkhw", model.classifier.weight, relu_features)
    assert torch.allclose(cam, expected, atol=1e-5)
    assert torch.allclose(grad, expected, atol=1e-5)  # Grad-CAM on the CAM scale equals CAM
    # naming the pooled layer gives the same maps (its name round-trips)
    with CAMHook(model, "features") as hook:
        logits = model(x)
        assert torch.allclose(hook.maps(logits, all_classes=True), cam, atol=1e-6)
    # any other layer modified in place afterwards raises: `features.1`'s output is ReLU'd
    with CAMHook(model, "features.1") as hook:
        logits = model(x)
        with pytest.raises(HookError, match="modified in place after it was captured"):
            hook.maps(logits, method="grad_cam")


@pytest.mark.parametrize("leaf", [False, True])
def test_inplace_modifications_never_corrupt_maps(leaf: bool) -> None:
    model = _eval(ResNetLike())
    x = _x()
    # reference: layer2.1.bn2's own output and the gradient of the logit with respect to it
    with CAMHook(model, "layer2.1.bn2", inplace="copy", leaf=leaf) as hook:
        logits = model(x)
        copy = hook.maps(
            logits, torch.tensor([0, 1, 2]), method="grad_cam", scale="paper", relu=True
        )
        acts = hook.activations.detach().clone()
    seen: list[torch.Tensor] = []
    handle = model.layer2[1].bn2.register_forward_hook(lambda m, i, o: seen.append(o.clone()))
    model(x)
    handle.remove()
    assert torch.equal(acts, seen[0])  # the layer's own output, before `out += identity`
    x2 = x.clone().requires_grad_()
    with CAMHook(model, "layer2.1.bn2", inplace="raise", leaf=leaf) as hook:
        logits = model(x2)
        with pytest.raises(HookError, match="inplace='copy'"):
            hook.maps(logits, torch.tensor([0, 1, 2]), method="grad_cam")
    # the reference Grad-CAM from autograd on a model whose block does not modify in place
    out = torch.zeros(0)

    def grab(m: nn.Module, i: object, o: torch.Tensor) -> torch.Tensor:
        nonlocal out
        out = o
        return o.clone()

    handle = model.layer2[1].bn2.register_forward_hook(grab)
    logits = model(x)
    handle.remove()
    (g,) = torch.autograd.grad(logits[torch.arange(3), torch.tensor([0, 1, 2])].sum(), out)
    expected = torch.relu((g.mean(dim=(2, 3), keepdim=True) * out).sum(1))
    assert torch.allclose(copy, expected.detach(), atol=1e-6)


def test_x_relu_inplace_after_hooked_layer_is_detected() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            y.relu_()
            return self.fc(y.mean(dim=(2, 3)))

    net = Net()
    with CAMHook(net, "conv", inplace="raise") as hook:
        logits = net(_x())
        with pytest.raises(HookError, match="modified in place"):
            hook.maps(logits, method="hires_cam")
    # "conv" feeds the pooling (the mean), so its default policy follows the in-place ReLU
    assert CAMHook(net, "conv").inplace == CAMHook(net).inplace == "follow"
    with CAMHook(net, "conv") as hook:
        logits = net(_x())
        hires = hook.maps(logits, all_classes=True, method="hires_cam", relu=False)
        cam = hook.maps(logits, all_classes=True, method="cam")
    assert torch.allclose(hires, cam, atol=1e-5)  # the ReLU'd map feeds the mean: CAM is exact


def test_wrappers_give_the_same_names_and_maps() -> None:
    model = _eval(ResNetLike())
    x = _x()
    with CAMHook(model) as hook:
        bare = hook.maps(model(x), method="grad_cam")
    for wrapped in (nn.DataParallel(model),):  # DataParallel on CPU runs the module itself
        assert unwrap_model(wrapped) is model
        with CAMHook(wrapped, "module.layer2") as hook:
            maps = hook.maps(wrapped(x), method="grad_cam")
        assert hook.layer_name == "layer2"
        assert torch.allclose(maps, bare)
    assert resolve_layer(nn.DataParallel(model), "_orig_mod.module.layer2").name == "layer2"
    with pytest.raises(LayerError, match=r"'module\.layer9' is not a module"):
        resolve_layer(nn.DataParallel(model), "module.layer9")
    with pytest.raises(DTypeError, match=r"`layer` must be an nn\.Module, a dotted name or None"):
        resolve_layer(model, 3)  # type: ignore[arg-type]


def test_default_layer_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    model = ResNetLike()
    with caplog.at_level(logging.INFO, logger="xai_feedback"):
        for _ in range(3):
            CAMHook(model)
    assert [r.getMessage() for r in caplog.records].count(
        "xai_feedback: explaining layer 'layer2' of ResNetLike"
    ) == 1


def test_two_threads_on_one_model_never_mix_activations() -> None:
    model = _eval(ResNetLike())
    inputs = [torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    refs = []
    for x in inputs:
        with CAMHook(model) as hook:
            refs.append(hook.maps(model(x), method="grad_cam").detach())
    barrier = threading.Barrier(2)
    errors: list[str] = []

    def worker(i: int) -> None:
        for _ in range(30):
            with CAMHook(model) as hook:
                barrier.wait()
                logits = model(inputs[i])
                barrier.wait()  # both forwards done before either reads its activations
                maps = hook.maps(logits, method="grad_cam").detach()
            if not torch.allclose(maps, refs[i], atol=1e-6):
                errors.append(f"thread {i} got a mixed map")

    threads = [threading.Thread(target=worker, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_nested_hooks_on_one_layer_both_work_also_as_leaves() -> None:
    model = _eval(ResNetLike())
    x = _x()
    with CAMHook(model) as hook:
        ref = hook.maps(model(x), method="grad_cam").detach()
    with CAMHook(model, leaf=True) as outer, CAMHook(model, leaf=True) as inner:
        logits = model(x)
        a = outer.maps(logits, method="grad_cam", create_graph=False)
        b = inner.maps(logits, method="grad_cam", create_graph=False)
    assert torch.allclose(a, ref, atol=1e-6) and torch.allclose(b, ref, atol=1e-6)


def test_gradient_maps_on_the_cam_scale() -> None:
    # Grad-CAM++'s weights tend to half the positive head weights as activations tend to 0;
    # the CAM scale (x2) makes them the positive head weights
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(3, 6, generator=g)
    acts = 1e-6 * torch.rand(2, 6, 4, 4, generator=g)
    grads = (weight[1] / 16).view(1, 6, 1, 1).expand(2, 6, 4, 4)
    pp = grad_cam_pp(acts, grads, relu=False) * get_method("grad_cam_pp").cam_scale(4, 4)
    expected = torch.einsum("c,bchw->bhw", weight[1].clamp(min=0), acts)
    assert torch.allclose(pp, expected, rtol=1e-4, atol=0)
    with CAMHook(GAPNet(width=4)) as hook, pytest.raises(RangeError, match="`scale`"):
        hook.maps(hook.model(torch.rand(1, 1, 28, 28)), method="grad_cam", scale="unit")


def test_one_registry_one_definition_on_every_path() -> None:
    model = _eval(ResNetLike())
    x = _x()
    y = torch.tensor([0, 3, 4])
    assert method_names("cam") == ("cam", "grad_cam", "hires_cam", "grad_cam_pp")
    for method in method_names("cam"):
        with CAMHook(model, eval_mode=True) as hook:
            # the explanation calls give the published definition (ReLU for gradient methods)
            relu = get_method(method).default_relu  # type: ignore[attr-defined]
            direct = hook.maps(model(x), y, method=method, relu=relu).detach()
        grid = attribute(model, x, y, method=method, size=None, reduce="sum")
        assert torch.allclose(grid, direct, atol=1e-6)
        reduced = attribute(model, x, y, method=method, reduce="abs_sum")
        assert torch.allclose(reduced, direct.abs(), atol=1e-6)
        pixel = attribute(model, x, y, method=method)
        assert pixel.shape == (3, 1, 12, 12)
        assert torch.allclose(pixel[:, 0], direct, atol=1e-6)  # 12x12 maps: no resizing
    with pytest.raises(RangeError, match=r"`method` must be one of \['cam', 'grad_cam'"):
        get_method("saliency", "cam")
    with pytest.raises(RangeError, match="`method` must be one of"):
        cam_penalty_objective(CenterPenalty(), 1.0, method="saliency")


def test_a_module_list_resolves_to_its_last_called_element() -> None:
    # torchvision's MaxViT iterates over an nn.ModuleList of stages before its pooled head: a
    # hook on the list itself would never fire, so the default is the list's last element.
    class Stages(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList([nn.Conv2d(3, 4, 3), nn.Conv2d(4, 5, 3)])
            self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for block in self.blocks:
                x = block(x)
            return self.classifier(x)

    model = Stages()
    assert find_feature_layer(model) == "blocks.1"
    x = torch.rand(2, 3, 9, 9)
    with CAMHook(model) as hook:
        logits = model(x)
        cam = hook.maps(logits, all_classes=True)  # exact: the pooled map, verified
    assert cam.shape == (2, 2, 5, 5)
    assert torch.allclose(cam.mean(dim=(2, 3)) + model.classifier[2].bias, logits, atol=1e-6)
