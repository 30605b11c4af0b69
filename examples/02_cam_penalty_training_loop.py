"""Your own training loop with a differentiable CAM penalty: three added lines.

The Gaussian center penalty ("lint") on the signed CAMs of all classes, computed inside the
training step and kept in the autograd graph, removes a label-tied frame shortcut without any
annotation. Run: python examples/02_cam_penalty_training_loop.py
"""

import torch
import torch.nn.functional as F

from xai_feedback.data import confounded_digits, load_digits
from xai_feedback.hooks import CAMHook
from xai_feedback.losses import CenterPenalty
from xai_feedback.models import GAPNet
from xai_feedback.training import accuracy

torch.set_num_threads(2)
train = confounded_digits("train", "frame", size=2, seed=0)
tests = {"clean": load_digits("test"), "confound": confounded_digits("test", "frame", seed=0)}

g = torch.Generator().manual_seed(0)
model = GAPNet(width=16, generator=g)  # GAP + linear head, 14x14 CAMs
penalty = CenterPenalty(sigma=0.7)  # signed CAMs of all classes by default
lam = 10.0
epochs, batch_size = 12, 64
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
steps = epochs * -(-len(train) // batch_size)
schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)

for epoch in range(epochs):
    model.train()
    order = torch.randperm(len(train), generator=g)
    for i in range(0, len(train), batch_size):
        idx = order[i : i + batch_size]
        x, y = train.images[idx], train.labels[idx]
        with CAMHook(model) as hook:  # 1. capture the CAM layer
            logits = model(x)
            maps = hook.maps(logits, all_classes=True)  # 2. (B, K, 14, 14), in the graph
        loss = F.cross_entropy(logits, y) + lam * penalty(maps)  # 3. penalize the periphery
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    print(
        f"epoch {epoch + 1:2d}  loss {loss.item():.3f}  clean test "
        f"{accuracy(model, tests['clean']):.3f}  "
        f"confound test {accuracy(model, tests['confound']):.3f}"
    )
