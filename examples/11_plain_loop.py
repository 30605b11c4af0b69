"""The CAM penalty in a plain PyTorch loop: the twin of examples/09_lightning.py.

Same data, model, optimizer and batch order as the Lightning version, and the same three
added lines in the step, so both take the same steps in the first epoch
(tests/integration/test_lightning.py checks it). Run: python examples/11_plain_loop.py
"""

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from xai_feedback.data import ImageDataset, confounded_digits, load_digits
from xai_feedback.hooks import CAMHook
from xai_feedback.losses import CenterPenalty
from xai_feedback.models import GAPNet
from xai_feedback.training import accuracy


def train(data: ImageDataset, epochs: int = 3, lam: float = 10.0, seed: int = 0) -> GAPNet:
    model = GAPNet(width=8, generator=torch.Generator().manual_seed(seed))
    penalty = CenterPenalty(sigma=0.7)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    order = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        TensorDataset(data.images, data.labels), batch_size=64, shuffle=True, generator=order
    )
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            with CAMHook(model) as hook:  # 1. capture the CAM layer
                logits = model(x)
                maps = hook.maps(logits, all_classes=True)  # 2. (B, K, 14, 14), in the graph
            loss = F.cross_entropy(logits, y) + lam * penalty(maps)  # 3. penalize the periphery
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


if __name__ == "__main__":
    torch.set_num_threads(2)
    model = train(confounded_digits("train", "frame", size=2, seed=0))
    print(
        f"plain loop: clean test {accuracy(model, load_digits('test')):.3f}, confound test "
        f"{accuracy(model, confounded_digits('test', 'frame', seed=0)):.3f}"
    )
