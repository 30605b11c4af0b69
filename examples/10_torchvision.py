"""Bring your own model: CAMs and the CAM penalty on torchvision and timm CNNs.

Needs torchvision (and optionally timm): the integration environment has both
(``nox -s integration``). Random-init models: no weights are downloaded.
"""

import sys

import torch
import torch.nn.functional as F

try:
    import torchvision
except ImportError:
    print("torchvision is not installed: run this example in the integration environment")
    sys.exit(0)

from xai_feedback.attribution import attribute
from xai_feedback.hooks import CAMHook
from xai_feedback.losses import CenterPenalty

torch.manual_seed(0)
images, labels = torch.rand(4, 3, 96, 96), torch.randint(0, 10, (4,))

# 1. a training step with the CAM penalty: three lines around the forward
model = torchvision.models.resnet18(num_classes=10)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
with CAMHook(model) as hook:  # the layer feeding avgpool: "layer4"
    logits = model(images)
    maps = hook.maps(logits, all_classes=True)  # (4, 10, 3, 3), in the graph
loss = F.cross_entropy(logits, labels) + 10.0 * CenterPenalty()(maps)
optimizer.zero_grad()
loss.backward()
optimizer.step()
value = float(loss.detach())
print(f"resnet18: layer {hook.layer_name!r}, maps {tuple(maps.shape)}, loss {value:.3f}")

# 2. explanation only, on models whose head is not GAP + linear: Grad-CAM
for name in ("vgg11_bn", "convnext_tiny", "densenet121", "efficientnet_b0"):
    net = getattr(torchvision.models, name)(num_classes=10).eval()
    heat = attribute(net, images, labels, method="grad_cam", size=None, reduce="sum")
    with CAMHook(net) as hook:
        pass
    print(f"{name}: layer {hook.layer_name!r}, Grad-CAM maps {tuple(heat.shape)}")

# 3. wrappers: the same layer and the same maps
wrapped = torch.nn.DataParallel(model.eval())
same = torch.allclose(
    attribute(wrapped, images, labels, method="cam"), attribute(model, images, labels, method="cam")
)
print(f"DataParallel: same maps as the bare model: {same}")

try:
    import timm
except ImportError:
    print("timm is not installed: skipping the timm part")
else:
    net = timm.create_model("efficientnet_b0", num_classes=10, pretrained=False).eval()
    with CAMHook(net) as hook:
        maps = hook.maps(net(images), labels, method="grad_cam")
    print(f"timm efficientnet_b0: layer {hook.layer_name!r}, maps {tuple(maps.shape)}")
