"""Vision transformers: token Grad-CAM and a CAM-penalty training step.

A ViT's layers output tokens ``(B, N, C)``: the hook drops the class (and distillation,
register) tokens, folds the patch tokens to their grid and explains the first norm of the
last block, read from the model's structure. Swin's channels-last grids are folded too.

Needs timm (and optionally torchvision): the integration environment has both
(``nox -s integration``). Random-init models: no weights are downloaded.
"""

import sys

import torch
import torch.nn.functional as F

try:
    import timm
except ImportError:
    print("timm is not installed: run this example in the integration environment")
    sys.exit(0)

from xai_feedback.attribution import attribute
from xai_feedback.hooks import CAMHook
from xai_feedback.losses import CenterPenalty
from xai_feedback.tokens import TokenReshape

torch.manual_seed(0)
images, labels = torch.rand(4, 3, 64, 64), torch.randint(0, 10, (4,))

# 1. a training step with the CAM penalty on a ViT: three lines around the forward
model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=64)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
with CAMHook(model) as hook:  # "blocks.11.norm1", class token dropped, 4 x 4 patches
    logits = model(images)
    maps = hook.maps(logits, all_classes=True, method="grad_cam")  # (4, 10, 4, 4), in the graph
loss = F.cross_entropy(logits, labels) + 10.0 * CenterPenalty()(maps)
optimizer.zero_grad()
loss.backward()  # through the double backward of the last block's attention
optimizer.step()
print(
    f"vit_tiny: layer {hook.layer_name!r}, {hook.reshape}, maps {tuple(maps.shape)}, "
    f"loss {float(loss.detach()):.3f}"
)

# 2. explanation only: DeiT's class and distillation tokens, a ViT with 4 register tokens
for name, kwargs in (
    ("deit_tiny_distilled_patch16_224", {}),
    ("vit_tiny_patch16_224", {"reg_tokens": 4}),
):
    net = timm.create_model(name, pretrained=False, num_classes=10, img_size=64, **kwargs)
    # (4, 4, 4) at the patch grid (size=None), detached
    heat = attribute(net.eval(), images, labels, method="grad_cam", size=None, reduce="sum")
    with CAMHook(net) as hook:
        pass
    prefix = hook.reshape.prefix_tokens if isinstance(hook.reshape, TokenReshape) else 0
    print(f"{name}: {prefix} prefix tokens dropped, Grad-CAM maps {tuple(heat.shape)}")

# 3. Swin: channels-last (B, H, W, C) stages; its final norm feeds the pooling, so CAM is exact
swin = timm.create_model(
    "swin_tiny_patch4_window7_224", pretrained=False, num_classes=10, img_size=64, window_size=2
).eval()
with torch.no_grad(), CAMHook(swin) as hook:
    cams = hook.maps(swin(images), labels, method="cam", create_graph=False)
print(f"swin_tiny: layer {hook.layer_name!r}, CAM maps {tuple(cams.shape)}")

try:
    import torchvision
except ImportError:
    print("torchvision is not installed: skipping the torchvision part")
else:
    vit = torchvision.models.vit_b_16(weights=None, image_size=64, num_classes=10).eval()
    with CAMHook(vit) as hook:
        maps = hook.maps(vit(images), labels, method="grad_cam")
    print(f"torchvision vit_b_16: layer {hook.layer_name!r}, maps {tuple(maps.shape)}")
