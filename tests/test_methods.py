"""The explanation-method registry: one call per method, checked against hand references.

Every CAM-kind method computes its maps through ``CAMMethod.maps(inputs, target, relu=)``;
CAM reads the head's rows instead of autograd. References here are written from the papers'
formulas on a two-layer model whose gradients are known in closed form.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xai_feedback.errors import HookError, RangeError
from xai_feedback.hooks import CAMHook
from xai_feedback.methods import CAMMethod, MapInputs, get_method, method_names, register_method

C, K, H, W = 5, 3, 4, 4


class Head(nn.Module):
    """features (a tensor we control) -> GAP -> linear: dy_k/dA_c = W_kc / (h w)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Conv2d(2, C, 1)
        self.fc = nn.Linear(C, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def _inputs(model: Head, x: torch.Tensor) -> MapInputs:
    acts = model.features(x)
    logits = model.fc(acts.mean(dim=(2, 3)))
    return MapInputs(acts=acts, logits=logits, head=lambda: model.fc, owner=model)


def test_the_registry_lists_every_method_once_by_kind() -> None:
    cams = method_names("cam")
    assert cams == ("cam", "grad_cam", "hires_cam", "grad_cam_pp")
    attributions = method_names("attribution")
    assert set(cams).isdisjoint(attributions) and len(attributions) >= 6
    relevance = method_names("relevance")  # vision transformers (tests/test_relevance.py)
    assert set(method_names()) == {*cams, *attributions, *relevance}
    for name in cams:
        method = get_method(name, "cam")
        assert isinstance(method, CAMMethod) and method.name == name and method.citation
    with pytest.raises(RangeError, match="grad_cam"):
        get_method("gradcam")
    with pytest.raises(RangeError, match="saliency"):
        get_method("saliency", "cam")  # right name, wrong kind


def test_gradients_are_autograd_of_the_target_logit() -> None:
    model, x = Head(), torch.rand(2, 2, H, W)
    inputs, target = _inputs(model, x), torch.tensor([2, 0])
    grads = get_method("grad_cam").gradients(inputs, target)  # type: ignore[attr-defined]
    # closed form: GAP then linear, so dy_t / dA_{c,i,j} = W_{t,c} / (H W) at every position
    expected = (model.fc.weight[target] / (H * W))[:, :, None, None].expand(2, C, H, W)
    torch.testing.assert_close(grads, expected)


def test_cam_through_maps_equals_the_head_rows_times_activations() -> None:
    model, x = Head(), torch.rand(3, 2, H, W)
    inputs, target = _inputs(model, x), torch.tensor([0, 1, 2])
    maps = get_method("cam").maps(inputs, target, relu=False)  # type: ignore[attr-defined]
    expected = torch.einsum("bc,bchw->bhw", model.fc.weight[target], inputs.acts)
    torch.testing.assert_close(maps, expected)
    # and it sums (with the bias) to the logit: CAM's defining property for GAP + linear
    logit = maps.mean(dim=(1, 2)) + model.fc.bias[target]
    torch.testing.assert_close(logit, inputs.logits[torch.arange(3), target])


@pytest.mark.parametrize("name", ["grad_cam", "hires_cam", "grad_cam_pp"])
def test_gradient_methods_from_their_formulas(name: str) -> None:
    g = torch.Generator().manual_seed(1)
    acts = torch.rand(2, C, H, W, generator=g)
    grads = torch.randn(2, C, H, W, generator=g)
    method = get_method(name)
    assert isinstance(method, CAMMethod)
    got = method.from_gradients(acts, grads, relu=False)
    if name == "grad_cam":  # Selvaraju et al., eq. 1-2
        want = (grads.mean(dim=(2, 3), keepdim=True) * acts).sum(1)
    elif name == "hires_cam":  # Draelos & Carin: element-wise product, summed over channels
        want = (grads * acts).sum(1)
    else:  # Chattopadhay et al., eq. 19 with exp(S) derivatives (the usual implementation)
        g2, g3 = grads**2, grads**3
        denom = 2 * g2 + acts.sum(dim=(2, 3), keepdim=True) * g3
        alpha = g2 / torch.where(denom != 0, denom, torch.ones_like(denom))
        weights = (alpha * torch.relu(grads)).sum(dim=(2, 3), keepdim=True)
        want = (weights * acts).sum(1)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(method.from_gradients(acts, grads, relu=True), torch.relu(want))


@pytest.mark.parametrize("name", ["cam", "grad_cam", "hires_cam", "grad_cam_pp"])
def test_the_hook_computes_every_method_through_maps(name: str) -> None:
    # one call per registry: the hook's maps are the method's maps (times the CAM scale)
    model, x = Head(), torch.rand(2, 2, H, W)
    target = torch.tensor([1, 2])
    method = get_method(name)
    assert isinstance(method, CAMMethod)
    with CAMHook(model) as hook:
        logits = model(x)
        got = hook.maps(logits, target, method=name)
        every = hook.maps(logits, method=name, all_classes=True)
    want = method.maps(_inputs(model, x), target, relu=False) * method.cam_scale(H, W)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(every[torch.arange(2), target], got)
    if name != "grad_cam_pp":  # on a GAP + linear head the CAM scale makes them CAM itself
        cam = get_method("cam").maps(_inputs(model, x), target, relu=False)  # type: ignore[attr-defined]
        torch.testing.assert_close(got, cam)


def test_gradients_refuse_activations_outside_the_graph() -> None:
    model, x = Head(), torch.rand(2, 2, H, W)
    with torch.no_grad():
        acts = model.features(x)
    logits = model.fc(model.features(x).mean(dim=(2, 3)))
    inputs = MapInputs(acts=acts, logits=logits)
    with pytest.raises(HookError, match="no_grad"):
        get_method("grad_cam").gradients(inputs, torch.tensor([0, 1]))  # type: ignore[attr-defined]
    detached = MapInputs(acts=acts.clone().requires_grad_(), logits=logits)
    with pytest.raises(HookError, match="do not depend"):
        get_method("grad_cam").gradients(detached, torch.tensor([0, 1]))  # type: ignore[attr-defined]


def test_options_are_checked_per_method() -> None:
    get_method("grad_cam").check_options({"relu": True, "scale": "paper"})
    with pytest.raises(RangeError, match="n_steps"):
        get_method("grad_cam").check_options({"n_steps": 8})
    get_method("integrated_gradients").check_options({"n_steps": 8})


def test_all_class_maps_are_bounded_before_the_first_backward() -> None:
    """Both gradient families share one all-class loop with one memory check."""
    model, x = Head(), torch.rand(2, 2, H, W)
    inputs = _inputs(model, x)
    per_class = inputs.acts.numel() * inputs.acts.element_size()
    grad_cam = get_method("grad_cam")
    tight = MapInputs(inputs.acts, inputs.logits, max_bytes=K * per_class - 1)
    with pytest.raises(RangeError, match="max_bytes"):
        grad_cam.maps(tight, None, relu=False)  # type: ignore[attr-defined]
    fits = MapInputs(inputs.acts, inputs.logits, max_bytes=K * per_class)
    every = grad_cam.maps(fits, None, relu=False)  # type: ignore[attr-defined]
    for k in range(K):
        one = grad_cam.maps(inputs, torch.full((2,), k), relu=False)  # type: ignore[attr-defined]
        torch.testing.assert_close(every[:, k], one)
    with CAMHook(model, "features") as hook:  # the hook passes the bound through
        logits = model(x)
        with pytest.raises(RangeError, match="max_bytes"):
            hook.maps(logits, method="grad_cam", all_classes=True, max_bytes=1)
        # CAM reads the head: no gradient kept, nothing to bound
        assert hook.maps(logits, all_classes=True, max_bytes=0).shape == (2, K, H, W)


def test_one_gradient_helper_serves_both_families() -> None:
    """``score_gradients``: autograd of the summed target scores; unused tensors refused."""
    from xai_feedback.methods._gradients import score_gradients

    x = torch.rand(2, 3, requires_grad=True)
    w = torch.randn(3, 4)
    logits = x @ w
    (got,) = score_gradients(logits, torch.tensor([1, 3]), [x], create_graph=False, what="x")
    torch.testing.assert_close(got, torch.stack([w[:, 1], w[:, 3]]))
    unused = torch.rand(2, 3, requires_grad=True)
    with pytest.raises(HookError, match="do not depend on u"):
        score_gradients(logits, torch.tensor([0, 0]), [unused], create_graph=False, what="u")


def test_method_names_see_a_method_registered_later() -> None:
    """The registry is read at each call: no import-time snapshot misses a user's method."""
    from xai_feedback.methods import _registry

    @register_method
    class Doubled(CAMMethod):
        name = "test_doubled_grad_cam"

        def from_gradients(
            self, acts: torch.Tensor, grads: torch.Tensor, *, relu: bool
        ) -> torch.Tensor:
            return 2 * (acts * grads).sum(1)

    try:
        assert "test_doubled_grad_cam" in method_names("cam")
        assert "test_doubled_grad_cam" in method_names()
        model, x = Head(), torch.rand(2, 2, H, W)
        with CAMHook(model, "features") as hook:
            logits = model(x)
            got = hook.maps(logits, torch.tensor([0, 1]), method="test_doubled_grad_cam")
            want = 2 * hook.maps(logits, torch.tensor([0, 1]), method="hires_cam", scale="paper")
        torch.testing.assert_close(got, want)
    finally:
        del _registry._REGISTRY["test_doubled_grad_cam"]
    import xai_feedback.attribution as attribution
    import xai_feedback.hooks as hooks
    import xai_feedback.relevance as relevance

    for module, snapshot in ((hooks, "CAM_METHODS"), (relevance, "RELEVANCE_METHODS")):
        assert not hasattr(module, snapshot)
    assert not hasattr(attribution, "METHODS")


@pytest.mark.parametrize("method", ["grad_cam", "hires_cam", "grad_cam_pp"])
def test_all_class_maps_in_batched_backwards_equal_one_class_at_a_time(method: str) -> None:
    """``class_chunk`` classes per batched backward (``is_grads_batched``) give each class's
    own maps and the same second-order gradients, on a head whose ``dy/dA`` depends on the
    image (a nonlinear head: a chunk that mixed classes or images would differ)."""
    torch.manual_seed(0)
    layer = nn.Conv2d(2, 3, 3, padding=1)
    head = nn.Sequential(nn.Tanh(), nn.Flatten(), nn.Linear(3 * H * W, 5))
    x = torch.rand(4, 2, H, W)
    spec = get_method(method, "cam")
    weights = torch.linspace(-1.0, 1.0, 5).view(1, -1, 1, 1)
    params = list(layer.parameters()) + list(head.parameters())
    results = []
    for chunk in (1, 2, 16):
        acts = layer(x)
        inputs = MapInputs(acts, head(acts), class_chunk=chunk)
        every = spec.maps(inputs, None, relu=False)  # type: ignore[attr-defined]
        loss = (every * weights).pow(2).sum()
        got = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, got, strict=True)]
        results.append((every, grads))
    one = torch.stack(
        [
            spec.maps(inputs, torch.full((4,), k), relu=False)  # type: ignore[attr-defined]
            for k in range(5)
        ],
        dim=1,
    )
    torch.testing.assert_close(results[0][0], one)
    for every, grads in results[1:]:
        torch.testing.assert_close(every, results[0][0])
        for a, b in zip(grads, results[0][1], strict=True):
            torch.testing.assert_close(a, b)
    with pytest.raises(RangeError, match="class_chunk"):
        spec.maps(MapInputs(acts, head(acts), class_chunk=0), None, relu=False)  # type: ignore[attr-defined]


def test_the_captures_pass_class_chunk_through() -> None:
    """``CAMHook.maps`` and ``AttentionCapture.maps`` take ``class_chunk``: the same maps in
    fewer, batched backwards (a tensor hook on the captured output counts the backwards)."""
    from xai_feedback.models import TinyViT
    from xai_feedback.relevance import AttentionCapture

    model = TinyViT(depth=2, generator=torch.Generator().manual_seed(0)).eval()
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with CAMHook(model) as hook:
        logits = model(x)
        calls: list[int] = []
        handle = hook.activations.register_hook(lambda g: calls.append(1))
        one = hook.maps(logits, method="grad_cam", all_classes=True)
        assert len(calls) == int(logits.shape[1])
        calls.clear()
        four = hook.maps(logits, method="grad_cam", all_classes=True, class_chunk=4)
        assert len(calls) == -(-int(logits.shape[1]) // 4)
        handle.remove()
    torch.testing.assert_close(four, one)
    with AttentionCapture(model) as capture:
        logits = model(x)
        one = capture.maps(logits, all_classes=True)
        every = capture.maps(logits, all_classes=True, class_chunk=16)
    torch.testing.assert_close(every, one)
